"""What every ingest path shares: patient pseudonyms, event times, and one validated event per measurement.

Each measurement is encoded in the wire format (:func:`vigil.records.encode_observation`, as the replay does)
and validated by the same decoder the worker runs (:func:`vigil.records.decode`: code table, unit conversion,
plausible range). So the edge and the worker can never disagree about what is valid, and an ingest path
rejects at the edge exactly what the worker would have dead-lettered.

>>> ok = observation("pt-1", "hl7/MON", 7, datetime(2026, 1, 1, tzinfo=UTC), "MDC", "150456", "262688", 97.0)
>>> ok.stream, ok.key
('vitals', b'pt-1')
>>> bad = observation("pt-1", "hl7/MON", 8, datetime(2026, 1, 1, tzinfo=UTC), "MDC", "150456", "262688", 140.0)
>>> bad.reason
'implausible_value'
>>> patient_identity("MRN-1", None), patient_identity("MRN-1", "V9")
('MRN-1', 'MRN-1^V9')
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vigil import records
from vigil.errors import ConfigError, InvalidEvent
from vigil.privacy import pseudonymise

__all__ = [
    "Event", "observation", "patient_identity", "patient_key", "aware", "site_zone", "stable_seq",
    "SEQ_SLOTS",
]  # fmt: skip

SEQ_SLOTS = 1024  # measurements per message / resource: seq = hash(message id) * SEQ_SLOTS + position


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event, ready to produce: ``stream`` is the catalogue topic name (vitals | labs)."""

    stream: str
    key: bytes
    value: bytes


def patient_identity(mrn: str, visit: str | None) -> str:
    """The identifier string that is pseudonymised: the MRN, or ``MRN^visit`` when the visit is known
    (one key per stay, as the worker keeps state per stay)."""
    return f"{mrn}^{visit}" if visit else mrn


def patient_key(mrn: str, visit: str | None, secret: str) -> str:
    """``pt-...``: HMAC-SHA256 of :func:`patient_identity` under the configured pseudonym key."""
    return pseudonymise(patient_identity(mrn, visit), secret)


def stable_seq(*parts: str, position: int) -> int:
    """A deterministic event sequence number: 40 bits of SHA-256 over ``parts`` (the message's identity,
    e.g. sending facility + control id) times :data:`SEQ_SLOTS`, plus ``position`` (< SEQ_SLOTS). A resent
    message gets the same numbers, so the worker's (source, seq) de-duplication drops the repeat.

    >>> stable_seq("FAC", "CNTRL-1", position=3) == stable_seq("FAC", "CNTRL-1", position=3)
    True
    >>> stable_seq("FAC", "CNTRL-1", position=3) < 2**53
    True
    """
    if not 0 <= position < SEQ_SLOTS:
        msg = f"position {position} outside [0, {SEQ_SLOTS})"
        raise ValueError(msg)
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:5], "big") * SEQ_SLOTS + position


def site_zone(name: str | None) -> tzinfo | None:
    """The configured site time zone (IANA name), or None; :class:`ConfigError` for an unknown name."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        msg = f"ingest.site_timezone {name!r} is not an IANA time zone"
        raise ConfigError(msg) from exc


def aware(value: datetime | date, zone: tzinfo | None, what: str) -> datetime:
    """A timezone-aware event time. A time without an offset (or a bare date: midnight) is placed in the
    site zone when one is configured; otherwise it is rejected as ``naive_timestamp`` — never guessed."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
        if zone is None:
            msg = f"{what} is a date without a time or UTC offset ({value.date().isoformat()})"
            raise InvalidEvent("naive_timestamp", msg, what)
    if value.tzinfo is None or value.utcoffset() is None:
        if zone is None:
            msg = (f"{what} has no UTC offset ({value.isoformat()}); send one, or configure "
                   "ingest.site_timezone")  # fmt: skip
            raise InvalidEvent("naive_timestamp", msg, what)
        value = value.replace(tzinfo=zone)
    return value


def observation(
    patient: str, source: str, seq: int, when: datetime, system: str, code: str, unit: str, value: float
) -> Event | records.Invalid:
    """Encode one measurement and validate it with the worker's decoder; an :class:`Event` or the
    :class:`vigil.records.Invalid` saying why not (unknown code/unit, implausible, bad time, ...)."""
    if not math.isfinite(value):
        return records.Invalid("bad_type", "InvalidEvent", f"value must be a finite number, got {value!r}", "value")
    try:
        raw = records.encode_observation(patient=patient, source=source, seq=seq, time=when.astimezone(UTC),
                                         system=system, code=code, value=value, unit=unit)  # fmt: skip
    except (ValueError, OverflowError) as exc:
        return records.Invalid("bad_timestamp", type(exc).__name__, f"cannot encode the event: {exc}", "time")
    ev = records.decode(raw, "vitals", patient.encode())
    if isinstance(ev, records.Invalid):
        return ev
    assert isinstance(ev, records.Observation)
    return Event("vitals" if ev.kind == "vital" else "labs", patient.encode(), raw)
