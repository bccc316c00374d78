"""Typed event records and the edge decoder: every input event is validated once, here.

Wire format (JSON objects, ``"v": 1``; unknown extra fields are ignored). Vital signs and lab results::

    {"v": 1, "source": "monitor-7", "seq": 42, "patient": "pt-...", "time": "2026-01-01T05:00:00+00:00",
     "system": "LOINC", "code": "8867-4", "value": 88, "unit": "/min"}

ADT (admit / transfer / discharge); ``ward``, ``bed``, ``unit``, ``admit_time``, ``age``, ``sex`` and
``hosp_adm_time_h`` are optional::

    {"v": 1, "source": "adt", "seq": 7, "patient": "pt-...", "time": "...", "kind": "admit",
     "ward": "ICU-MED", "bed": "4", "unit": "MICU", "admit_time": "...", "age": 71, "sex": "F",
     "hosp_adm_time_h": -12.5}

Rules: times are ISO 8601 with an explicit offset (``Z`` or ``+hh:mm``; a naive time is rejected, never
guessed); numbers are JSON numbers (``true`` is not a number; NaN / Infinity are rejected); strings are
non-empty and at most :data:`MAX_STR` characters; ``seq`` is an integer >= 0. Codes, units and plausible
ranges come from the data tables (:mod:`vigil.codes`); values are converted to the canonical unit.

:func:`decode` never raises: it returns an :class:`Observation`, an :class:`AdtEvent` or an
:class:`Invalid` (errors are values on the hot path); :func:`dead_letter_record` turns an
:class:`Invalid` into the dead-letter topic's value (bounded, allow-listed: :mod:`vigil.deadletters`).

>>> raw = encode_observation(patient="pt-1", source="m", seq=1, time=datetime(2026, 1, 1, tzinfo=UTC),
...                          system="LOINC", code="8310-5", value=100.4, unit="[degF]")
>>> ev = decode(raw, "vitals", b"pt-1")
>>> ev.var, ev.value, ev.kind
(2, 38.0, 'vital')
>>> bad = decode(b'{"v":1}', "vitals")
>>> bad.reason, bad.field, bad.detail
('missing_field', 'patient', "required field 'patient' is missing")
>>> decode(raw, "vitals", b"pt-2").reason
'key_mismatch'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime  # noqa: F401 - UTC: used by the module doctest
from typing import Annotated, Any

import msgspec
import orjson

from vigil.codes import normaliser as _normaliser
from vigil.errors import InvalidEvent
from vigil.timeparse import parse_time as _parse_time

__all__ = [
    "Observation", "AdtEvent", "AckEvent", "ACK_ACTIONS", "Invalid", "decode", "encode_observation", "encode_adt",
    "dead_letter_record", "Watermark", "encode_watermark",
    "ADT_KINDS", "SEXES", "MAX_STR", "STREAMS",
]  # fmt: skip

STREAMS = ("vitals", "labs", "adt")
ADT_KINDS = ("admit", "transfer", "discharge")
SEXES = ("M", "F", "U")
MAX_STR = 128
_MAX_TIME_STR = 64
_AGE_RANGE = (0.0, 130.0)


class Observation(msgspec.Struct, frozen=True, gc=False):
    """A vital sign or a lab result, already normalised. A frozen msgspec struct (issue 15): built in C by the
    decoder, one per event, ~0.1 us instead of ~0.6 us for a frozen dataclass; not tracked by the cycle
    collector (its fields are strings and numbers). Equality, hashing, ``repr`` and pickling as a dataclass's."""

    patient: str  # pseudonymised patient id (== Kafka key)
    source: str  # feed / system id
    seq: int  # sequence id within source; (source, seq) identifies the event for de-duplication
    time: float  # event (observation) time, POSIX seconds UTC
    var: int  # index into vigil.variables.VARIABLES
    value: float  # in vigil.variables.CANONICAL_UNITS
    kind: str  # "vital" | "lab"


@dataclass(frozen=True, slots=True)
class AdtEvent:
    """Admit, transfer or discharge, with the ICU context the featurizer needs."""

    patient: str
    source: str
    seq: int
    time: float
    kind: str  # "admit" | "transfer" | "discharge"
    ward: str | None
    bed: str | None
    unit: str | None  # ICU unit, e.g. "MICU", "SICU"; other strings allowed
    admit_time: float | None  # ICU admission time (POSIX s); for an admit defaults to `time`
    age: float | None  # years
    sex: str | None  # "M" | "F" | "U"
    hosp_adm_time_h: float | None  # hours from hospital admission to ICU admission (<= 0 typically)


@dataclass(frozen=True, slots=True)
class AckEvent:
    """A clinician's response to an alert (``alert-acks``): recorded with the alert, and it silences new
    alerts of the same type for a while (:mod:`vigil.alerting`)."""

    patient: str
    time: float  # when it was acknowledged
    alert_id: str
    by: str  # a role or pseudonymised staff id, never a name
    action: str  # acknowledged | escalated | dismissed | treated
    source: str = "alert-acks"
    seq: int = 0
    kind: str = "ack"


ACK_ACTIONS = ("acknowledged", "escalated", "dismissed", "treated")


@dataclass(frozen=True, slots=True)
class Watermark:
    """A producer's event-time watermark (punctuation) on one input topic-partition: every record that
    ``source`` writes to this topic-partition after this one has an event time >= ``time`` (``final``: it
    writes nothing more). Written by the edge (``vigil replay``, ...) to every partition, keyless; the worker
    orders on it instead of a wall-clock hold (:mod:`vigil.worker.punctuation`). Never applied to a patient."""

    source: str  # the producer (one id per producer process), not a record's feed id
    time: float  # POSIX seconds
    final: bool = False
    kind: str = "watermark"


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why an event was rejected: a stable ``reason`` (:data:`vigil.errors.REASONS`), the exception type,
    a message naming the field and the value, and the field."""

    reason: str
    error_type: str
    detail: str
    field: str | None = None


# ------------------------------------------------------------------------------------------- field checks
# Each check returns the value or raises InvalidEvent naming the field; the opt_ variants return None for an
# absent or null field. Exact type() checks: a JSON true/false is never a number, 1.0 is never a seq.
def _missing(name: str) -> InvalidEvent:
    return InvalidEvent("missing_field", f"required field {name!r} is missing", name)


def _opt_str(d: dict[str, Any], name: str, empty_ok: bool = False) -> str | None:
    v = d.get(name)
    if v is None or (type(v) is str and (v or empty_ok) and len(v) <= MAX_STR):
        return v
    what = type(v).__name__ if type(v) is not str else (f"{len(v)} characters" if v else "an empty string")
    msg = f"field {name!r} must be a non-empty string of at most {MAX_STR} characters, got {what}"
    raise InvalidEvent("bad_type", msg, name)


def _str(d: dict[str, Any], name: str, empty_ok: bool = False) -> str:
    v = _opt_str(d, name, empty_ok)
    if v is None:
        raise _missing(name)
    return v


def _opt_num(d: dict[str, Any], name: str) -> float | None:
    v = d.get(name)
    t = type(v)
    if t is float or t is int:
        f = float(v)  # type: ignore[arg-type]
        if math.isfinite(f):
            return f
        raise InvalidEvent("bad_type", f"field {name!r} must be a finite number, got {_short(v)}", name)
    if v is None:
        return None
    raise InvalidEvent("bad_type", f"field {name!r} must be a number, got {t.__name__} {_short(v)}", name)


def _num(d: dict[str, Any], name: str) -> float:
    v = _opt_num(d, name)
    if v is None:
        raise _missing(name)
    return v


def _seq(d: dict[str, Any]) -> int:
    v = d.get("seq")
    if type(v) is int and v >= 0:
        return v
    if v is None:
        raise _missing("seq")
    raise InvalidEvent("bad_type", f"field 'seq' must be an integer >= 0, got {_short(v)}", "seq")


def _opt_time(d: dict[str, Any], name: str) -> float | None:
    v = d.get(name)
    if v is None:
        return None
    if type(v) is not str or len(v) > _MAX_TIME_STR:
        msg = f"field {name!r} must be an ISO 8601 string with a UTC offset, got {type(v).__name__}"
        raise InvalidEvent("bad_type", msg, name)
    t = _parse_time(v)
    if type(t) is float:
        return t
    if t == "naive_timestamp":
        msg = f"field {name!r} has no UTC offset: {v!r} (send 'Z' or +hh:mm; local times are never guessed)"
        raise InvalidEvent("naive_timestamp", msg, name)
    if t == "out_of_range":
        raise InvalidEvent("bad_timestamp", f"field {name!r} is out of range: {v!r}", name)
    raise InvalidEvent("bad_timestamp", f"field {name!r} is not ISO 8601: {v!r}", name)


def _time(d: dict[str, Any], name: str) -> float:
    v = _opt_time(d, name)
    if v is None:
        raise _missing(name)
    return v


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


# ---------------------------------------------------------------------------------------------- decoding
_make_observation = Observation  # positional: patient, source, seq, time, var, value, kind


def _observation(d: dict[str, Any]) -> Observation:
    """The fast path: every field present with the right type and size (what a well-formed event has) is
    checked inline, in one expression; anything else goes through the field checks of
    :func:`_observation_checked`, which name the first field at fault. Both accept exactly the same events."""
    g = d.get
    patient, source, seq, tv, system, code, value, unit = (
        g("patient"), g("source"), g("seq"), g("time"), g("system"), g("code"), g("value"), g("unit"))  # fmt: skip
    if (
        type(patient) is str and 0 < len(patient) <= MAX_STR and type(source) is str and 0 < len(source) <= MAX_STR
        and type(seq) is int and seq >= 0 and type(tv) is str and len(tv) <= _MAX_TIME_STR
        and type(system) is str and 0 < len(system) <= MAX_STR and type(code) is str and 0 < len(code) <= MAX_STR
        and (type(value) is float or type(value) is int) and type(unit) is str and len(unit) <= MAX_STR
    ):  # fmt: skip
        t = _parse_time(tv)
        if type(t) is float:
            f = float(value)
            if math.isfinite(f):
                var, canonical, kind = _normaliser().normalise(system, code, unit, f)
                return _make_observation(patient, source, seq, t, var, canonical, kind)
    return _observation_checked(d)


_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STR)]
_UNSET = msgspec.UNSET


class _Wire(msgspec.Struct):
    """A well-formed observation as msgspec decodes it in C: JSON parsing, field presence, types and sizes in one
    call (issue 15: ~1.5 us of the ~3.4 us per event of orjson + the Python checks). A ``seq`` over 2**63 - 1 (msgspec's
    bound) takes the checked path, which reads up to 2**64 - 1 as orjson does (a larger one as a float: refused)."""

    patient: _Name
    source: _Name
    seq: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    time: Annotated[str, msgspec.Meta(max_length=_MAX_TIME_STR)]
    system: _Name
    code: _Name
    value: float  # an int is read as a float; true/false and NaN/Infinity are refused
    unit: Annotated[str, msgspec.Meta(max_length=MAX_STR)]
    v: int = 1
    watermark: Any = _UNSET  # present (even null): a producer's watermark, not an observation


_wire = msgspec.json.Decoder(_Wire).decode


def _fast_observation(raw: bytes) -> Observation | None:
    """The observation of ``raw`` when it is well-formed, else None: :func:`decode`'s checked path then reads the
    record (and names what is wrong). Accepts exactly what that path accepts (``tests/test_records.py`` compares
    both on valid and broken records)."""
    try:
        w = _wire(raw)
    except Exception:  # noqa: BLE001 - malformed, mistyped, too deep: the checked path says which
        return None
    if w.v != 1 or w.watermark is not _UNSET:
        return None
    t = _parse_time(w.time)
    f = w.value
    if type(t) is not float or not math.isfinite(f):
        return None
    var, canonical, kind = _normaliser().normalise(w.system, w.code, w.unit, f)
    return _make_observation(w.patient, w.source, w.seq, t, var, canonical, kind)


def _observation_checked(d: dict[str, Any]) -> Observation:
    patient, source, seq, t = _str(d, "patient"), _str(d, "source"), _seq(d), _time(d, "time")
    system, code, value, unit = _str(d, "system"), _str(d, "code"), _num(d, "value"), _str(d, "unit", True)
    var, canonical, kind = _normaliser().normalise(system, code, unit, value)
    return _make_observation(patient, source, seq, t, var, canonical, kind)


def _adt(d: dict[str, Any]) -> AdtEvent:
    patient, source, seq, t = _str(d, "patient"), _str(d, "source"), _seq(d), _time(d, "time")
    kind = d.get("kind")
    if type(kind) is not str or kind not in ADT_KINDS:
        if kind is None:
            raise _missing("kind")
        msg = f"ADT kind {_short(kind)} is not one of {', '.join(ADT_KINDS)}"
        raise InvalidEvent("unknown_adt_kind", msg, "kind")
    sex = _opt_str(d, "sex")
    if sex is not None and sex not in SEXES:
        raise InvalidEvent("bad_type", f"field 'sex' must be one of {', '.join(SEXES)}, got {sex!r}", "sex")
    age = _opt_num(d, "age")
    if age is not None and not _AGE_RANGE[0] <= age <= _AGE_RANGE[1]:
        msg = f"age {age:g} outside the plausible range [{_AGE_RANGE[0]:g}, {_AGE_RANGE[1]:g}] years"
        raise InvalidEvent("implausible_value", msg, "age")
    admit_time = _opt_time(d, "admit_time")
    if admit_time is None and kind == "admit":
        admit_time = t
    ward, bed, unit = _opt_str(d, "ward"), _opt_str(d, "bed"), _opt_str(d, "unit")
    hosp_adm_time_h = _opt_num(d, "hosp_adm_time_h")
    return AdtEvent(patient, source, seq, t, kind, ward, bed, unit, admit_time, age, sex, hosp_adm_time_h)


def _ack(d: dict[str, Any]) -> AckEvent:
    patient, alert_id, by, t = _str(d, "patient"), _str(d, "alert_id"), _str(d, "by"), _time(d, "at")
    action = d.get("action")
    if type(action) is not str or action not in ACK_ACTIONS:
        if action is None:
            raise _missing("action")
        raise InvalidEvent("bad_type", f"ack action {_short(action)} is not one of {', '.join(ACK_ACTIONS)}", "action")
    return AckEvent(patient, t, alert_id, by, action)


def _watermark(d: dict[str, Any]) -> Watermark:
    final = d.get("final", False)
    if type(final) is not bool:
        raise InvalidEvent("bad_type", f"final must be true or false, not {_short(final)}", "final")
    return Watermark(_str(d, "source"), _time(d, "watermark"), final)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN / Infinity literals and overflowing numbers (1e400) outright; parse those records
        # (only those) with the standard library so that they are reported as what they are — a non-finite
        # number, bad_type — rather than as garbage. Strict UTF-8, as orjson.
        if b"NaN" not in raw and b"Infinity" not in raw and "infinity" not in str(exc):
            raise
        return json.loads(raw.decode("utf-8"))


def decode(
    raw: bytes | None, stream: str, key: bytes | None = None
) -> Observation | AdtEvent | AckEvent | Watermark | Invalid:
    """Validate one raw event from ``stream`` (``"adt"``, ``"alert-acks"``; anything else is decoded as an
    observation — the ``kind`` comes from the code table, not from the topic). Never raises.

    When ``key`` (the Kafka key) is given it must equal the event's patient (UTF-8), else ``key_mismatch``.
    A record with a ``watermark`` field is a producer's :class:`Watermark` on any input topic (its key is
    not checked: it belongs to no patient).

    >>> decode(encode_watermark("replay-1", datetime(2026, 1, 1, tzinfo=UTC)), "labs")
    Watermark(source='replay-1', time=1767225600.0, final=False, kind='watermark')
    """
    try:
        if raw is None:
            return Invalid("malformed_json", "EmptyValue", "the record has no value (null)")
        if stream != "adt" and stream != "alert-acks":
            fast = _fast_observation(raw)
            if fast is not None:
                if key is not None and key != fast.patient.encode():
                    msg = f"the Kafka key {_short(key)} differs from the event's patient {fast.patient!r}"
                    return Invalid("key_mismatch", "InvalidEvent", msg, "patient")
                return fast
        try:
            d = _loads(raw)
        except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ...
            return Invalid("malformed_json", type(exc).__name__, f"not valid JSON: {_short(str(exc))}")
        if type(d) is not dict:
            return Invalid("not_an_object", "InvalidEvent", f"expected a JSON object, got {type(d).__name__}")
        v = d.get("v", 1)
        if type(v) is not int or v != 1:
            return Invalid(
                "unsupported_version", "InvalidEvent", f"unsupported event version {_short(v)}", "v"
            )
        if "watermark" in d:
            return _watermark(d)
        ev: Observation | AdtEvent | AckEvent = (
            _adt(d) if stream == "adt" else _ack(d) if stream == "alert-acks" else _observation(d)
        )
        if key is not None and key != ev.patient.encode():
            msg = f"the Kafka key {_short(key)} differs from the event's patient {ev.patient!r}"
            return Invalid("key_mismatch", "InvalidEvent", msg, "patient")
        return ev
    except InvalidEvent as exc:
        return Invalid(exc.reason, type(exc).__name__, str(exc), exc.field)
    except Exception as exc:  # noqa: BLE001 - one bad event must never stop a batch
        return Invalid("bad_type", type(exc).__name__, f"unexpected error: {_short(str(exc))}")


# ---------------------------------------------------------------------------------------------- encoding
def _iso(t: datetime, name: str = "time") -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        msg = f"{name} must be timezone-aware, got naive {t.isoformat()}"
        raise ValueError(msg)
    return t.isoformat()


def encode_observation(
    *, patient: str, source: str, seq: int, time: datetime, system: str, code: str, value: float, unit: str
) -> bytes:
    """One vitals/labs event in the wire format (``time`` must be timezone-aware, ``value`` finite)."""
    if not math.isfinite(value):
        msg = f"value must be finite, got {value!r}"
        raise ValueError(msg)
    return orjson.dumps({"v": 1, "source": source, "seq": seq, "patient": patient, "time": _iso(time),
                         "system": system, "code": code, "value": value, "unit": unit})  # fmt: skip


def encode_adt(
    *, patient: str, source: str, seq: int, time: datetime, kind: str, ward: str | None = None,
    bed: str | None = None, unit: str | None = None, admit_time: datetime | None = None,
    age: float | None = None, sex: str | None = None, hosp_adm_time_h: float | None = None,
) -> bytes:  # fmt: skip
    """One ADT event in the wire format; ``None`` fields are left out."""
    d: dict[str, Any] = {
        "v": 1,
        "source": source,
        "seq": seq,
        "patient": patient,
        "time": _iso(time),
        "kind": kind,
    }
    optional = {"ward": ward, "bed": bed, "unit": unit, "age": age, "sex": sex, "hosp_adm_time_h": hosp_adm_time_h}
    d.update({k: v for k, v in optional.items() if v is not None})
    if admit_time is not None:
        d["admit_time"] = _iso(admit_time, "admit_time")
    return orjson.dumps(d)


def encode_watermark(source: str, time: datetime, *, final: bool = False) -> bytes:
    """A :class:`Watermark` record's value (send it keyless to an explicit partition)."""
    d: dict[str, Any] = {"v": 1, "source": source, "watermark": _iso(time, "watermark")}
    if final:
        d["final"] = True
    return orjson.dumps(d)


def dead_letter_record(
    inv: Invalid, *, topic: str, partition: int, offset: int, raw: bytes | None, key: bytes | None,
    received_at: float, keep_raw: bool = False,
) -> bytes:  # fmt: skip
    """The dead-letter value: the reason, the original's coordinates, size and SHA-256, and only an
    allow-listed projection of its content (:mod:`vigil.deadletters`; never patient data, never more than
    :data:`vigil.deadletters.MAX_RECORD_BYTES`). The original stays findable on ``topic`` at
    ``partition``/``offset`` and is identified by the hash. ``keep_raw``: the caller already reduced
    ``raw`` to an allow-list (the edge listeners); a bounded prefix of it is kept as ``raw_b64``.

    >>> inv = decode(b"{oops", "vitals")
    >>> rec = orjson.loads(dead_letter_record(inv, topic="vitals", partition=3, offset=17, raw=b"{oops",
    ...                                       key=b"pt-1", received_at=0.0))
    >>> rec["reason"], rec["size"], rec["sha256"][:12], rec["raw_b64"], rec["received_at"]
    ('malformed_json', 5, '935aaf3a54c0', None, '1970-01-01T00:00:00+00:00')
    """
    from vigil import deadletters

    return deadletters.build(
        reason=inv.reason, error_type=inv.error_type, detail=inv.detail, field=inv.field, topic=topic,
        partition=partition, offset=offset, received_at=received_at, raw=raw, key=key, keep_raw=keep_raw,
    )  # fmt: skip
