"""Who is in which ward: a census from ADT events, applied per patient in event-time order.

ADT feeds deliver out of order (independent partitions, retries, a transfer sent before its admit). Each
patient keeps the ordering key of the last ADT event applied — ``(time, kind rank, seq)`` with admit <
transfer < discharge at equal times — and an event that is not newer is ignored (``stale``; an identical
key is a ``duplicate``). So a transfer that arrives before its admit places the patient in the transfer's
ward and the late admit changes nothing; a stale transfer after a discharge does not bring the patient back.

A discharged patient is remembered (a tombstone) for ``closed_keep_s`` seconds of event time so that such
late events are recognised; a present patient with no ADT event and no score for ``ttl_s`` seconds of event
time (a lost discharge) is dropped. State is therefore bounded by the patients seen in the last day or two.

>>> from vigil.records import AdtEvent
>>> def adt(kind, t, ward=None, seq=0):
...     return AdtEvent("p1", "adt", seq, t, kind, ward, None, None, None, None, None, None)
>>> c = Census()
>>> c.apply(adt("transfer", 200.0, "W2")), c.apply(adt("admit", 100.0, "W1"))
('applied', 'stale')
>>> c.occupancy()
{'W2': 1}
>>> c.apply(adt("discharge", 300.0)), c.apply(adt("transfer", 250.0, "W3")), c.occupancy()
('applied', 'stale', {})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from vigil.records import AdtEvent

__all__ = ["Census", "free_beds", "OUTCOMES"]

OUTCOMES = ("applied", "stale", "duplicate")
_KIND_RANK = {"admit": 0, "transfer": 1, "discharge": 2}


@dataclass(slots=True)
class _Patient:
    ward: str | None
    unit: str | None
    present: bool
    key: tuple[float, int, int]  # ordering key of the last ADT event applied
    last_seen: float  # event time of the newest ADT event or score (for the TTL)


def free_beds(beds: Mapping[str, int], ward: str, occupied: int) -> int | None:
    """Free beds of ``ward`` (never below 0), or ``None`` when its bed count is not configured.

    >>> free_beds({"W1": 10}, "W1", 12), free_beds({"W1": 10}, "W2", 1)
    (0, None)
    """
    total = beds.get(ward)
    return None if total is None else max(0, int(total) - occupied)


class Census:
    """Per-patient ward membership from ADT events (see the module docstring)."""

    def __init__(self, *, closed_keep_s: float = 24 * 3600.0, ttl_s: float = 48 * 3600.0) -> None:
        self.closed_keep_s = float(closed_keep_s)
        self.ttl_s = float(ttl_s)
        self._patients: dict[str, _Patient] = {}

    def __len__(self) -> int:
        return len(self._patients)

    def apply(self, ev: AdtEvent) -> str:
        """Apply one ADT event unless an event at least as new was applied; returns one of :data:`OUTCOMES`."""
        key = (ev.time, _KIND_RANK[ev.kind], ev.seq)
        cur = self._patients.get(ev.patient)
        if cur is not None:
            if key == cur.key:
                return "duplicate"
            if key < cur.key:
                cur.last_seen = max(cur.last_seen, ev.time)
                return "stale"
        if cur is None:
            cur = self._patients[ev.patient] = _Patient(None, None, False, key, ev.time)
        cur.key = key
        cur.last_seen = max(cur.last_seen, ev.time)
        if ev.kind == "discharge":
            cur.present = False
        else:
            cur.present = True
            if ev.ward is not None:
                cur.ward = ev.ward
            elif ev.kind == "admit":
                cur.ward = None  # a new stay without a ward: the old one no longer applies
            if ev.unit is not None:
                cur.unit = ev.unit
        return "applied"

    def touch(self, patient: str, time: float) -> None:
        """Record activity (a score) of a known patient, for the TTL."""
        cur = self._patients.get(patient)
        if cur is not None and time > cur.last_seen:
            cur.last_seen = time

    def ward_of(self, patient: str) -> str | None:
        """The ward of a present patient (``None`` when absent or of unknown ward)."""
        cur = self._patients.get(patient)
        return cur.ward if cur is not None and cur.present else None

    def is_present(self, patient: str) -> bool:
        cur = self._patients.get(patient)
        return cur is not None and cur.present

    def by_ward(self) -> dict[str, list[str]]:
        """Present patients per ward (patients of unknown ward are left out), wards and patients sorted."""
        out: dict[str, list[str]] = {}
        for pid, cur in self._patients.items():
            if cur.present and cur.ward is not None:
                out.setdefault(cur.ward, []).append(pid)
        return {w: sorted(ps) for w, ps in sorted(out.items())}

    def occupancy(self) -> dict[str, int]:
        """Present patients per ward."""
        counts = Counter(c.ward for c in self._patients.values() if c.present and c.ward is not None)
        return dict(sorted(counts.items()))

    def by_unit(self) -> dict[str, int]:
        """Present patients per care unit (the ADT ``unit``, e.g. MICU / SICU; ``unknown`` when none was sent).

        >>> from vigil.records import AdtEvent
        >>> c = Census()
        >>> _ = c.apply(AdtEvent("p1", "adt", 0, 1.0, "admit", "W1", None, "MICU", None, None, None, None))
        >>> _ = c.apply(AdtEvent("p2", "adt", 0, 1.0, "admit", "W1", None, None, None, None, None, None))
        >>> c.by_unit()
        {'MICU': 1, 'unknown': 1}
        """
        counts = Counter(c.unit or "unknown" for c in self._patients.values() if c.present)
        return dict(sorted(counts.items()))

    def unassigned(self) -> int:
        """Present patients whose ward is unknown (not in any ward's forecast)."""
        return sum(1 for c in self._patients.values() if c.present and c.ward is None)

    def evict(self, now: float) -> dict[str, int]:
        """Drop tombstones older than ``closed_keep_s`` and present patients silent for ``ttl_s`` (event time
        ``now``); returns the counts by reason (``closed``, ``ttl``)."""
        drop: dict[str, str] = {}
        for pid, cur in self._patients.items():
            if not cur.present and now - cur.last_seen > self.closed_keep_s:
                drop[pid] = "closed"
            elif cur.present and now - cur.last_seen > self.ttl_s:
                drop[pid] = "ttl"
        for pid in drop:
            del self._patients[pid]
        return dict(Counter(drop.values()))
