"""HL7 v2.x ORU^R01 (IHE PCD-01 monitors, LIS results) -> validated vitals/labs events, parsed with python-hl7.

One OBX = one measurement. An OBX is

* **published** when its code maps (``codes.csv`` or the site's ``ingest.code_map``: OBX-3.1 — an MDC code
  also in the hex ``partition-code`` form of Philips MDIL — or the MDC reference id in OBX-3.2, in the coding
  system of OBX-3.3), its value (OBX-5, type NM or SN, :mod:`vigil.ingest.values`; a censored ``<``/``>``
  value is published at its limit and counted in ``censored``) is a number, its unit (OBX-6.1, else OBX-6.2;
  UCUM, an MDC unit, or the code map's default when OBX-6 is empty) converts to the variable's canonical unit,
  the value is plausible and its time has an offset (or a site zone is configured). The event carries the
  packaged standard code (numeric MDC, or the variable's LOINC code for a site-local code);
* **ignored** (not an error, counted) when it is something vigil does not use: an unmapped code (perfusion
  index, vendor-private ``99MNDRY`` codes, ...), a non-numeric type (CNE, ST, NA waveforms), OBX-8 ``DEMO``
  (monitor demo mode: simulated values), or OBX-11 ``X``/``D``/``W`` (not obtained, deleted, wrong);
* **invalid** (dead-lettered, the message gets ``AE`` with one ERR per OBX) otherwise.

A message is **rejected** (``AR``, dead-lettered whole, nothing published) when it cannot be parsed, is not
ORU^R01, has no MSH-10 control id, no patient (PID-3, or a bed in PV1-3 when bed association is on), or more
than ``max_obx`` OBX segments.

Event time: OBX-14, else OBR-7, else MSH-7; outside the plausible window (:mod:`vigil.timewindow`) the OBX is
dead-lettered (``time_out_of_range``). Patient: PID-3.1 (+ PV1-19.1 visit) -> HMAC pseudonym; without PID-3,
the occupant of the PV1-3 bed (ward 3.1, room 3.2, bed 3.3) at the message's observation time (the first
OBX-14, else OBR-7, else MSH-7) in the listener's ADT census (:mod:`vigil.ingest.census`), given as
``locate``; an unknown or empty bed is answered ``AE`` and dead-lettered whole (``unknown_bed``). Event id:
source ``hl7/<MSH-3.1>``, seq from (MSH-4, MSH-3, MSH-10) and the OBX position (:func:`stable_seq`).

Dead letters keep an allow-list projection of the message (:mod:`vigil.ingest.hl7_deadletter`), never the
message itself.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING

import hl7

from vigil import records
from vigil.codes import Normaliser, normaliser
from vigil.errors import InvalidEvent
from vigil.ingest.events import Event, aware, observation, patient_key, stable_seq
from vigil.ingest.hl7_deadletter import project
from vigil.ingest.values import hl7_value
from vigil.timewindow import REASON as TIME_REASON
from vigil.timewindow import check_time

if TYPE_CHECKING:
    from vigil.config import TimeWindowSettings

# (ward, room, bed, observation time) -> the bed's occupant (pseudonym), or None: unknown or empty bed
Locate = Callable[[str, str, str, float], str | None]

__all__ = ["ObxError", "ParsedOru", "parse_oru", "redact", "decode_text", "SUPPORTED"]

SUPPORTED = ("ORU", "R01")
_IGNORED_STATUS = frozenset("XDW")
_NUMERIC = ("NM", "SN")
_SOURCE_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, slots=True)
class ObxError:
    """One OBX that was dead-lettered: its position (1-based among OBX), the field at fault and why."""

    position: int
    field: str  # e.g. "OBX-5"
    invalid: records.Invalid
    segment: str  # the OBX segment text (no patient identifiers)


@dataclass(slots=True)
class ParsedOru:
    """The outcome of one message: the ACK code, what to publish and what to dead-letter."""

    control_id: str = ""
    message: hl7.Message | None = None
    patient: str | None = None  # pseudonym
    events: list[Event] = field(default_factory=list)
    errors: list[ObxError] = field(default_factory=list)
    reject: records.Invalid | None = None  # the whole message (AR)
    reject_code: str = "207"  # HL7 table 0357 error code of the rejection
    reject_ack: str = "AR"  # AR (unusable message) or AE (a usable message refused: unknown bed, bad time)
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> OBX count
    censored: int = 0  # published OBX whose value was a bound (<, >, <=, >=), see vigil.ingest.values

    @property
    def ack_code(self) -> str:
        """``AR`` rejected, ``AE`` some OBX dead-lettered, ``AA`` all usable OBX published."""
        return self.reject_ack if self.reject is not None else "AE" if self.errors else "AA"


def decode_text(raw: bytes) -> str:
    """Message bytes as text (UTF-8, else Latin-1) with ``\\r`` segment separators (``\\n`` / ``\\r\\n``
    accepted, as many gateways send them)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00")


def redact(raw: bytes) -> bytes:
    """What a dead letter may keep of a message: the allow-list projection
    (:func:`vigil.ingest.hl7_deadletter.project`, JSON), never the message. Works on unparseable input too.

    >>> b"MRN-1" in redact(b"MSH|^~\\\\&|A\\rPID|||MRN-1||DOE^JOHN\\rOBX|1|NM|x||1")
    False
    """
    return project(raw)


def _f(msg: hl7.Message, seg: str, n: int, fld: int, comp: int = 1, rep: int = 1) -> str:
    """One component as a string ('' when absent)."""
    try:
        return str(msg.extract_field(seg, n, fld, rep, comp)).strip()
    except (KeyError, IndexError, ValueError, TypeError):
        return ""


def _sf(segment: hl7.Segment, fld: int, comp: int = 1) -> str:
    """One component of one segment (first repetition) as a string ('' when absent)."""
    try:
        return str(segment.extract_field(1, fld, 1, comp)).strip()
    except (KeyError, IndexError, ValueError, TypeError):
        return ""


def _count(msg: hl7.Message, seg: str) -> int:
    try:
        return len(msg.segments(seg))
    except KeyError:
        return 0


def _reject(out: ParsedOru, reason: str, error_type: str, detail: str, fld: str | None, code: str,
            ack: str = "AR") -> ParsedOru:  # fmt: skip
    out.reject, out.reject_code = records.Invalid(reason, error_type, detail, fld), code
    out.reject_ack = ack
    return out


def parse_oru(raw: bytes, *, secret: str, zone: tzinfo | None = None, max_obx: int = 1000,
              codes: Normaliser | None = None, window: TimeWindowSettings | None = None,
              locate: Locate | None = None, now: float | None = None) -> ParsedOru:  # fmt: skip
    """Parse and validate one ORU^R01 message (never raises); see the module docstring for the rules.
    ``window``: the plausible-time window (None: not checked); ``locate``: bed association (None: off)."""
    out = ParsedOru()
    text = decode_text(raw)
    if not text.startswith("MSH") or len(text) < 8:
        return _reject(out, "bad_type", "HL7ParseError", "not an HL7 v2 message: it does not start with MSH",
                       None, "100")  # fmt: skip
    try:
        msg = hl7.parse(text)
        msg.segment("MSH")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a rejection, never a crash
        # the exception's text can quote the message (identifiers): only its type is reported
        return _reject(out, "bad_type", "HL7ParseError", f"HL7 parse error ({type(exc).__name__})", None, "102")
    out.message = msg
    out.control_id = _f(msg, "MSH", 1, 10)[:199]
    mtype, event = _f(msg, "MSH", 1, 9, 1), _f(msg, "MSH", 1, 9, 2)
    if (mtype, event) != SUPPORTED:
        return _reject(out, "bad_type", "UnsupportedMessage",
                       f"unsupported message type {mtype}^{event} (MSH-9): only ORU^R01 and ADT are accepted",
                       "MSH-9", "200")  # fmt: skip
    if not out.control_id:
        return _reject(out, "missing_field", "InvalidEvent", "MSH-10 (message control id) is empty", "MSH-10", "101")
    n_pid, n_obx = _count(msg, "PID"), _count(msg, "OBX")
    if n_obx > max_obx:
        return _reject(out, "bad_type", "InvalidEvent", f"{n_obx} OBX segments: at most {max_obx} per message",
                       "OBX", "104")  # fmt: skip
    fallback = _f(msg, "OBR", 1, 7) or _f(msg, "MSH", 1, 7)
    obx_segments = msg.segments("OBX") if n_obx else []
    table = codes if codes is not None else normaliser()
    clock = _time.time() if now is None else now
    if n_pid and _f(msg, "PID", 1, 3):
        visit = _f(msg, "PV1", 1, 19) or None
        out.patient = patient_key(_f(msg, "PID", 1, 3), visit, secret)
    elif _by_bed(out, msg, locate, zone, window, clock, obx_segments, fallback) is not None:
        return out
    app, facility = _f(msg, "MSH", 1, 3), _f(msg, "MSH", 1, 4)
    source = "hl7/" + (_SOURCE_SAFE.sub("_", app)[:100] or "unknown")
    for pos, segment in enumerate(obx_segments, start=1):
        _obx(out, segment, pos, source=source, seq=stable_seq(facility, app, out.control_id, position=pos),
             fallback=fallback, zone=zone, codes=table, window=window, now=clock)  # fmt: skip
    return out


def _by_bed(out: ParsedOru, msg: hl7.Message, locate: Locate | None, zone: tzinfo | None,
            window: TimeWindowSettings | None, now: float, obx_segments: list[hl7.Segment],
            fallback: str) -> ParsedOru | None:  # fmt: skip
    """Bed association: set ``out.patient`` to the occupant of the PV1-3 bed, or reject (returns ``out``)."""
    ward, room, bed = (_f(msg, "PV1", 1, 3, c)[:128] for c in (1, 2, 3))
    if locate is None or not (ward and bed):
        why = ("bed association is off (ingest.bed_association)" if locate is None
               else "PV1-3 names no bed (ward^room^bed)")  # fmt: skip
        return _reject(out, "missing_field", "InvalidEvent",
                       f"no patient identifier: PID-3 is missing or empty and {why}", "PID-3", "101")  # fmt: skip
    where = f"bed {ward}^{room}^{bed} (PV1-3)"
    first = next((s for s in (_sf(o, 14) for o in obx_segments) if s), "") or fallback
    if not first:
        return _reject(out, "missing_field", "InvalidEvent",
                       f"{where}: no observation time to look the bed up at (OBX-14, OBR-7, MSH-7)", "OBX-14",
                       "101", "AE")  # fmt: skip
    try:
        t = aware(hl7.parse_datetime(first), zone, "OBX-14").timestamp()
    except InvalidEvent as exc:
        return _reject(out, exc.reason, "InvalidEvent", f"{where}: {exc}", "OBX-14", "102", "AE")
    except (ValueError, TypeError, OverflowError):
        return _reject(out, "bad_timestamp", "InvalidEvent", f"{where}: the observation time is not an HL7 DTM",
                       "OBX-14", "102", "AE")  # fmt: skip
    why_time = check_time(t, now=now, window=window) if window is not None else None
    if why_time is not None:
        return _reject(out, TIME_REASON, "InvalidEvent", f"{where}: {why_time}", "OBX-14", "102", "AE")
    occupant = locate(ward, room, bed, t)
    if occupant is None:
        return _reject(out, "unknown_bed", "InvalidEvent",
                       f"no patient identifier (PID-3 empty) and no patient in {where} at the observation time "
                       "by the ADT census (unknown or empty bed): send the ADT first, or PID-3", "PV1-3", "103",
                       "AE")  # fmt: skip
    out.patient = occupant
    return None


def _ignore(out: ParsedOru, why: str) -> None:
    out.ignored[why] = out.ignored.get(why, 0) + 1


def _obx(out: ParsedOru, obx: hl7.Segment, pos: int, *, source: str, seq: int, fallback: str,
         zone: tzinfo | None, codes: Normaliser, window: TimeWindowSettings | None = None,
         now: float = 0.0) -> None:  # fmt: skip
    """Classify one OBX: publish, ignore or dead-letter."""
    g = lambda fld, comp=1: _sf(obx, fld, comp)  # noqa: E731
    vtype, code, name, system = g(2), g(3, 1), g(3, 2), g(3, 3)
    if "DEMO" in g(8).upper():
        return _ignore(out, "demo_mode")
    if g(11).upper() in _IGNORED_STATUS:
        return _ignore(out, "result_status")
    coded = codes.resolve(system, code, name)
    if coded is None:
        return _ignore(out, "unmapped_code")
    code = code or name
    if vtype not in _NUMERIC:
        return _ignore(out, "non_numeric")
    segment = str(obx)

    def bad(fld: str, reason: str, detail: str) -> None:
        inv = records.Invalid(reason, "InvalidEvent", f"OBX {pos} ({code}): {detail}", fld)
        out.errors.append(ObxError(pos, fld, inv, segment))

    try:
        value, comparator = hl7_value(vtype, [g(5, c) for c in range(1, 5)])
    except InvalidEvent as exc:
        return bad("OBX-5", exc.reason, str(exc))
    stamp = g(14) or fallback
    if not stamp:
        return bad("OBX-14", "missing_field", "no observation time (OBX-14, OBR-7 and MSH-7 are empty)")
    try:
        when = aware(hl7.parse_datetime(stamp), zone, "OBX-14")
    except InvalidEvent as exc:
        return bad("OBX-14", exc.reason, str(exc))
    except (ValueError, TypeError, OverflowError):
        return bad("OBX-14", "bad_timestamp", f"time {stamp[:40]!r} is not an HL7 DTM")
    if window is not None and (why := check_time(when.timestamp(), now=now, window=window)) is not None:
        return bad("OBX-14", TIME_REASON, why)
    unit1, unit2 = g(6, 1), g(6, 2)
    unit = unit1 or unit2 or coded.default_unit
    if unit1 and unit2 and codes.unit_conversion(coded.var, unit1) is None \
            and codes.unit_conversion(coded.var, unit2) is not None:
        unit = unit2  # OBX-6.1 unknown (a local code): the text, often the UCUM or printed unit
    ev = observation(out.patient or "", source, seq, when, coded.system, coded.code, unit, value)
    wire_unit, wire_value = codes.wire_unit(coded.var, unit, value)
    if wire_unit != unit and not isinstance(ev, records.Invalid):  # validated as sent, published canonical
        ev = observation(out.patient or "", source, seq, when, coded.system, coded.code, wire_unit, wire_value)
    if isinstance(ev, records.Invalid):
        fld = {"unit": "OBX-6", "value": "OBX-5", "time": "OBX-14", "code": "OBX-3"}.get(ev.field or "", "OBX")
        return bad(fld, ev.reason, ev.detail)
    out.events.append(ev)
    if comparator:
        out.censored += 1
    return None
