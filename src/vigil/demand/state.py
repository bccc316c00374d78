"""The demand job's state: the census (from ``adt``) and each patient's latest score (from ``scores``).

Scores are decoded here (the worker validated their inputs; a malformed score is counted and skipped, never
fatal). Only the calibrated model's scores count: the same name and version as the calibration file. A
patient's latest score is the one of the latest row; a completed row's score replaces a partial score of
the same row. A score's event time is the end of its row (the row is known then), or the row start for a
partial score. Scores of patients with no ADT admit yet are kept (the feeds are independent topics) and
used once the admit arrives.

>>> st = DemandState(model=("m", "1"))
>>> raw = b'{"patient": "p1", "time": "2026-01-01T00:00:00Z", "model": {"name": "m", "version": "1"},'
>>> raw += b' "risk": 0.4, "news2": {"total": 5}, "partial": false}'
>>> ev = decode_score(raw)
>>> ev.event_time - ev.time, st.on_score(ev)
(3600.0, 'applied')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from vigil.demand.aggregate import WardSnapshot
from vigil.demand.census import Census
from vigil.records import AdtEvent

__all__ = ["ScoreEvent", "decode_score", "parse_time", "DemandState", "ROW_S"]

ROW_S = 3600.0  # the worker scores hourly rows


@dataclass(frozen=True, slots=True)
class ScoreEvent:
    """The fields of a ``scores`` value the demand job uses."""

    patient: str
    time: float  # row start, POSIX seconds
    partial: bool
    model: str
    version: str
    risk: float
    news2_total: int  # -1 when absent

    @property
    def event_time(self) -> float:
        return self.time if self.partial else self.time + ROW_S


def parse_time(value: Any, name: str = "time") -> float:
    """POSIX seconds of an ISO 8601 time with a UTC offset; ``ValueError`` naming the field otherwise."""
    if not isinstance(value, str):
        msg = f"field {name!r} must be an ISO 8601 string, got {type(value).__name__}"
        raise ValueError(msg)
    t = datetime.fromisoformat(value)
    if t.tzinfo is None or t.utcoffset() is None:
        msg = f"field {name!r} has no UTC offset: {value!r}"
        raise ValueError(msg)
    return t.timestamp()


def decode_score(raw: bytes | None) -> ScoreEvent | str:
    """A :class:`ScoreEvent`, or the reason it could not be read (a short string, used as a metric label)."""
    if raw is None:
        return "empty"
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "malformed_json"
    if not isinstance(d, dict):
        return "not_an_object"
    try:
        patient, model = d["patient"], d["model"]
        risk = d["risk"]
        if not isinstance(patient, str) or not patient or not isinstance(model, dict):
            return "bad_type"
        if isinstance(risk, bool) or not isinstance(risk, int | float) or not 0.0 <= float(risk) <= 1.0:
            return "bad_type"
        news2 = d.get("news2") or {}
        total = news2.get("total") if isinstance(news2, dict) else None
        n2 = int(total) if isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= 20 else -1
        return ScoreEvent(
            patient=patient, time=parse_time(d["time"]), partial=bool(d.get("partial", False)),
            model=str(model["name"]), version=str(model["version"]), risk=float(risk), news2_total=n2,
        )  # fmt: skip
    except KeyError:
        return "missing_field"
    except (ValueError, TypeError, OverflowError):
        return "bad_timestamp"


class DemandState:
    """Census + latest scores of the calibrated model; :meth:`snapshots` per ward for :mod:`.aggregate`."""

    def __init__(
        self, model: tuple[str, str], *, beds: dict[str, int] | None = None, ttl_s: float = 48 * 3600.0,
        closed_keep_s: float = 24 * 3600.0,
    ) -> None:  # fmt: skip
        self.model = model
        self.beds = dict(beds or {})
        self.census = Census(closed_keep_s=closed_keep_s, ttl_s=ttl_s)
        self._scores: dict[str, ScoreEvent] = {}
        self._keep_s = max(ttl_s, closed_keep_s)

    def on_adt(self, ev: AdtEvent) -> str:
        """Apply an ADT event to the census (``applied``, ``stale`` or ``duplicate``)."""
        return self.census.apply(ev)

    def on_score(self, ev: ScoreEvent) -> str:
        """Keep the score if it is the patient's latest: ``applied``, ``older`` or ``other_model``."""
        if (ev.model, ev.version) != self.model:
            return "other_model"
        cur = self._scores.get(ev.patient)
        if cur is not None and (ev.time, not ev.partial) < (cur.time, not cur.partial):
            return "older"
        self._scores[ev.patient] = ev
        self.census.touch(ev.patient, ev.event_time)
        return "applied"

    def held_scores(self) -> int:
        return len(self._scores)

    def evict(self, now: float) -> dict[str, int]:
        """Evict census entries (see :meth:`Census.evict`) and scores of patients not present, older than the
        TTL; returns the counts by reason."""
        out = self.census.evict(now)
        stale = [p for p, s in self._scores.items()
                 if not self.census.is_present(p) and now - s.event_time > self._keep_s]  # fmt: skip
        for p in stale:
            del self._scores[p]
        if stale:
            out["scores"] = len(stale)
        return out

    def snapshots(self) -> list[WardSnapshot]:
        """One snapshot per ward with patients present or beds configured, sorted by ward."""
        wards = self.census.by_ward()
        out = []
        for ward in sorted(set(wards) | set(self.beds)):
            patients = wards.get(ward, [])
            risk = np.full(len(patients), math.nan)
            news2 = np.full(len(patients), -1, dtype=np.int64)
            for i, p in enumerate(patients):
                s = self._scores.get(p)
                if s is not None:
                    risk[i], news2[i] = s.risk, s.news2_total
            out.append(WardSnapshot(ward, risk, news2, self.beds.get(ward)))
        return out
