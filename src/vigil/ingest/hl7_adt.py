"""HL7 v2.x ADT (admit, transfer, discharge, update, cancels) -> one validated ``adt`` event, with python-hl7.

Trigger events and what they become on the ``adt`` topic (``kind``; ``trigger`` keeps the HL7 event, and a
cancel names what it cancels in ``cancels`` — streams/schemas/adt.schema.json):

======  ==========================  ==========  ===========  ======================================================
event   meaning                     kind        cancels      location (PV1-3)
======  ==========================  ==========  ===========  ======================================================
A01     admit / visit notification  admit                    the bed the patient is admitted to
A04     register a patient          admit                    (outpatient / emergency registration)
A02     transfer                    transfer                 the new bed (PV1-6 holds the one left)
A03     discharge / end visit       discharge                the bed left
A08     update patient information  transfer                 the current bed (moves the patient only if it changed)
A11     cancel admit / visit        discharge   admit        the stay ends: nobody is scored for it any more
A12     cancel transfer             transfer    transfer     the bed the patient returns to (PV1-3 of the A12)
A13     cancel discharge            admit       discharge    the bed the patient stays in; PV1-44 = original admit
======  ==========================  ==========  ===========  ======================================================

Any other ADT event (A05 pre-admit, A28/A31 person updates, ...) is answered ``AA`` and ignored (counted):
interface engines send whole ADT feeds and stop a queue on ``AR``.

Fields: patient PID-3.1 (+ PV1-19.1 visit) -> HMAC pseudonym (the same key the ORU path computes); event time
EVN-6, else EVN-2, else MSH-7 (a time without an offset is placed in ``ingest.site_timezone`` or refused);
PV1-2 patient class; PV1-3 ward (point of care, 3.1), room (3.2), bed (3.3); PV1-44 admission time; PID-7 birth
date -> age in whole years at the event time (the birth date itself never leaves the listener); PID-8 sex
(M / F, anything else U); the ICU unit from ``ingest.ward_units`` (ward -> MICU / SICU / ...).

Outcome: ``AR`` (rejected whole, dead-lettered: no control id, no PID-3), ``AE`` (the event is refused and
dead-lettered: its time is out of the plausible window, has no offset, or it does not validate), ``AA``
(published, or ignored).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

import hl7
import orjson

from vigil import records
from vigil.errors import InvalidEvent
from vigil.ingest.events import Event, aware, patient_key, stable_seq
from vigil.timewindow import REASON as TIME_REASON
from vigil.timewindow import check_time

if TYPE_CHECKING:
    from vigil.config import TimeWindowSettings

__all__ = ["ParsedAdt", "parse_adt", "TRIGGERS", "message_type"]

# trigger event -> (adt kind, what it cancels)
TRIGGERS: dict[str, tuple[str, str | None]] = {
    "A01": ("admit", None), "A04": ("admit", None), "A02": ("transfer", None), "A03": ("discharge", None),
    "A08": ("transfer", None), "A11": ("discharge", "admit"), "A12": ("transfer", "transfer"),
    "A13": ("admit", "discharge"),
}  # fmt: skip
_MAX = records.MAX_STR


@dataclass(slots=True)
class ParsedAdt:
    """The outcome of one ADT message."""

    control_id: str = ""
    message: hl7.Message | None = None
    trigger: str = ""
    patient: str | None = None  # pseudonym
    event: Event | None = None  # the adt record to publish
    adt: records.AdtEvent | None = None  # the same, decoded (for the bed census)
    room: str | None = None
    reject: records.Invalid | None = None
    reject_code: str = "207"
    reject_ack: str = "AR"  # AR (message unusable) or AE (the event refused)
    ignored: str | None = None  # why the message was ignored (unsupported trigger)

    @property
    def ack_code(self) -> str:
        return self.reject_ack if self.reject is not None else "AA"


def message_type(text: str) -> tuple[str, str]:
    """(MSH-9.1, MSH-9.2) read from the text of a message ('' when absent), without parsing it whole."""
    if not text.startswith("MSH") or len(text) < 5:
        return "", ""
    fs = text[3]
    cs = text[4] if text[4] != fs else "^"
    fields = text.split("\r", 1)[0].split(fs)
    if len(fields) <= 8:
        return "", ""
    parts = fields[8].split(cs)
    return parts[0].strip(), (parts[1].strip() if len(parts) > 1 else "")


def _f(msg: hl7.Message, seg: str, fld: int, comp: int = 1) -> str:
    try:
        return str(msg.extract_field(seg, 1, fld, 1, comp)).strip()
    except (KeyError, IndexError, ValueError, TypeError):
        return ""


def _bounded(value: str) -> str | None:
    return value[:_MAX] if value else None


def _reject(out: ParsedAdt, reason: str, detail: str, fld: str | None, code: str, ack: str = "AR") -> ParsedAdt:
    out.reject = records.Invalid(reason, "InvalidEvent", detail, fld)
    out.reject_code, out.reject_ack = code, ack
    return out


def _when(stamp: str, zone: tzinfo | None, what: str) -> datetime:
    try:
        return aware(hl7.parse_datetime(stamp), zone, what)
    except InvalidEvent:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        msg = f"{what} is not an HL7 DTM ({len(stamp)} characters)"
        raise InvalidEvent("bad_timestamp", msg, what) from exc


def _age(msg: hl7.Message, at: datetime) -> float | None:
    """Whole years from PID-7 to ``at``; None when absent, unparseable or implausible."""
    stamp = _f(msg, "PID", 7)
    if not stamp:
        return None
    try:
        born = hl7.parse_datetime(stamp)
    except (ValueError, TypeError, OverflowError):
        return None
    if born is None:
        return None
    when = at.date()
    years = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
    return float(years) if 0 <= years <= 130 else None


def parse_adt(raw_text: str, *, secret: str, zone: tzinfo | None, window: TimeWindowSettings,
              ward_units: dict[str, str] | None = None, now: float | None = None) -> ParsedAdt:  # fmt: skip
    """Parse and validate one ADT message (text with ``\\r`` separators); never raises."""
    out = ParsedAdt()
    try:
        msg = hl7.parse(raw_text)
        msg.segment("MSH")
    except Exception:  # noqa: BLE001 - any parse failure is a rejection, never a crash
        return _reject(out, "bad_type", "HL7 parse error: the ADT message could not be parsed", None, "102")
    out.message = msg
    out.control_id = _f(msg, "MSH", 10)[:199]
    trigger = _f(msg, "MSH", 9, 2) or _f(msg, "EVN", 1)
    out.trigger = trigger
    if not out.control_id:
        return _reject(out, "missing_field", "MSH-10 (message control id) is empty", "MSH-10", "101")
    if trigger not in TRIGGERS:
        out.ignored = "adt_event"
        return out
    kind, cancels = TRIGGERS[trigger]
    mrn = _f(msg, "PID", 3)
    if not mrn:
        return _reject(out, "missing_field", f"ADT^{trigger} without a patient identifier: PID-3 is missing or empty",
                       "PID-3", "101")  # fmt: skip
    visit = _f(msg, "PV1", 19) or None
    out.patient = patient_key(mrn, visit, secret)
    stamp, what = next(((s, w) for s, w in ((_f(msg, "EVN", 6), "EVN-6"), (_f(msg, "EVN", 2), "EVN-2"),
                                           (_f(msg, "MSH", 7), "MSH-7")) if s), ("", "EVN-2"))  # fmt: skip
    if not stamp:
        return _reject(out, "missing_field", "no event time (EVN-6, EVN-2 and MSH-7 are empty)", "EVN-2", "101", "AE")
    try:
        when = _when(stamp, zone, what)
        admit_stamp = _f(msg, "PV1", 44)
        admit_time = _when(admit_stamp, zone, "PV1-44") if admit_stamp and kind == "admit" else None
    except InvalidEvent as exc:
        return _reject(out, exc.reason, str(exc), exc.field, "102", "AE")
    t = when.timestamp()
    why = check_time(t, now=_time.time() if now is None else now, window=window)
    if why is not None:
        return _reject(out, TIME_REASON, f"{what}: {why}", what, "102", "AE")
    ward, room, bed = (_bounded(_f(msg, "PV1", 3, c)) for c in (1, 2, 3))
    out.room = room
    sex = _f(msg, "PID", 8).upper()
    app, facility = _f(msg, "MSH", 3), _f(msg, "MSH", 4)
    source = "hl7/" + ("".join(c if c.isalnum() or c in "_.-" else "_" for c in app)[:100] or "unknown")
    seq = stable_seq(facility, app, out.control_id, position=0)
    try:
        raw = records.encode_adt(
            patient=out.patient, source=source, seq=seq, time=when.astimezone(UTC), kind=kind, ward=ward, bed=bed,
            unit=(ward_units or {}).get(ward or "") or None, admit_time=admit_time,
            age=_age(msg, when) if kind == "admit" else None,
            sex=({"M": "M", "F": "F"}.get(sex, "U") if sex and kind == "admit" else None),
        )  # fmt: skip
    except (ValueError, OverflowError) as exc:
        return _reject(out, "bad_timestamp", f"cannot encode the event: {type(exc).__name__}", what, "102", "AE")
    extra = {"trigger": trigger, "cancels": cancels, "room": room,
             "patient_class": _bounded(_f(msg, "PV1", 2))}  # fmt: skip
    d = orjson.loads(raw)
    d.update({k: v for k, v in extra.items() if v is not None})
    raw = orjson.dumps(d)
    ev = records.decode(raw, "adt", out.patient.encode())
    if isinstance(ev, records.Invalid):
        out.reject, out.reject_code, out.reject_ack = ev, "102", "AE"
        return out
    assert isinstance(ev, records.AdtEvent)
    out.adt = ev
    out.event = Event("adt", out.patient.encode(), raw)
    return out
