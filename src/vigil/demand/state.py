"""The demand job's state: the census (from ``adt``), each patient's latest score and recent NEWS2 totals
(from ``scores``), and who is already being treated for sepsis (from ``alerts`` and ``alert-acks``).

Scores are decoded here (the worker validated their inputs; a malformed score is counted and skipped, never
fatal). Only the calibrated model's scores count: the model's name, and a version that has a calibration
file (after a promotion the old and the new version's scores both count, each through its own calibration). A
patient's latest score is the one of the latest row; a completed row's score replaces a partial score of
the same row. A score's event time is the end of its row (the row is known then), or the row start for a
partial score. Scores of patients with no ADT admit yet are kept (the feeds are independent topics) and
used once the admit arrives. The NEWS2 totals of each patient's completed rows of the last 24 h are kept
(:class:`vigil.demand.news2_model.History`) for the calibration's NEWS2-course model and history tables.

A patient leaves the ``sepsis_onset`` risk set when one of the patient's ``model_risk`` alerts (from
``alerts``) is acknowledged with action ``treated`` (from ``alert-acks``; in either order): the patient already
has the sepsis bundle, so it is no future demand. A new admit of the patient ends that.

>>> st = DemandState(model=("m", "1"))
>>> raw = b'{"patient": "p1", "time": "2026-01-01T00:00:00Z", "model": {"name": "m", "version": "1"},'
>>> raw += b' "risk": 0.4, "news2": {"total": 5}, "partial": false}'
>>> ev = decode_score(raw)
>>> ev.event_time - ev.time, st.on_score(ev)
(3600.0, 'applied')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import orjson

from vigil.demand.aggregate import WardSnapshot
from vigil.demand.census import Census
from vigil.demand.news2_model import FEATURES, History
from vigil.records import AckEvent, AdtEvent

__all__ = ["ScoreEvent", "AlertEvent", "decode_score", "decode_alert", "parse_time", "DemandState", "ROW_S"]

ROW_S = 3600.0  # the worker scores hourly rows
T = TypeVar("T")


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
    row: int = -1  # hours since admission (-1 when absent)

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


def _decode_object(raw: bytes | None, build: Callable[[dict[str, Any]], T | str]) -> T | str:
    """``build`` applied to the JSON object in ``raw``, or the reason it could not be read (a short string, used
    as a metric label): ``empty``, ``malformed_json``, ``not_an_object``, ``missing_field``, ``bad_timestamp``,
    or what ``build`` returns."""
    if raw is None:
        return "empty"
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "malformed_json"
    if not isinstance(d, dict):
        return "not_an_object"
    try:
        return build(d)
    except KeyError:
        return "missing_field"
    except (ValueError, TypeError, OverflowError):
        return "bad_timestamp"


def _score(d: dict[str, Any]) -> ScoreEvent | str:
    patient, model = d["patient"], d["model"]
    risk = d["risk"]
    if not isinstance(patient, str) or not patient or not isinstance(model, dict):
        return "bad_type"
    if isinstance(risk, bool) or not isinstance(risk, int | float) or not 0.0 <= float(risk) <= 1.0:
        return "bad_type"
    news2 = d.get("news2") or {}
    total = news2.get("total") if isinstance(news2, dict) else None
    n2 = int(total) if isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= 20 else -1
    row = d.get("row")
    return ScoreEvent(
        patient=patient, time=parse_time(d["time"]), partial=bool(d.get("partial", False)),
        model=str(model["name"]), version=str(model["version"]), risk=float(risk), news2_total=n2,
        row=int(row) if isinstance(row, int) and not isinstance(row, bool) and row >= 0 else -1,
    )  # fmt: skip


def decode_score(raw: bytes | None) -> ScoreEvent | str:
    """A :class:`ScoreEvent`, or the reason it could not be read (a short string, used as a metric label)."""
    return _decode_object(raw, _score)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """The fields of an ``alerts`` value the demand job uses."""

    patient: str
    time: float
    alert_id: str
    type: str


def _alert(d: dict[str, Any]) -> AlertEvent | str:
    patient, alert_id, kind = d["patient"], d["alert_id"], d["type"]
    if not all(isinstance(x, str) and x for x in (patient, alert_id, kind)):
        return "bad_type"
    return AlertEvent(patient=patient, time=parse_time(d["time"]), alert_id=alert_id, type=kind)


def decode_alert(raw: bytes | None) -> AlertEvent | str:
    """An :class:`AlertEvent`, or the reason it could not be read.

    >>> decode_alert(b'{"patient": "p1", "time": "2026-01-01T00:00:00Z", "alert_id": "a1", "type": "model_risk"}')
    AlertEvent(patient='p1', time=1767225600.0, alert_id='a1', type='model_risk')
    >>> decode_alert(b'{"patient": "p1"}'), decode_alert(b'[1]'), decode_alert(None)
    ('missing_field', 'not_an_object', 'empty')
    """
    return _decode_object(raw, _alert)


class DemandState:
    """Census + latest scores of the calibrated model + what the forecasts need beside them: each patient's
    recent NEWS2 course (for the calibration's NEWS2 model and tables) and whether a sepsis alert of the patient was
    acknowledged as ``treated``; :meth:`snapshots` per ward for :mod:`.aggregate`."""

    def __init__(
        self, model: tuple[str, str], *, beds: dict[str, int] | None = None, ttl_s: float = 48 * 3600.0,
        closed_keep_s: float = 24 * 3600.0, versions: Iterable[str] | None = None,
        history_window_h: int | None = None, news2_features: bool = False,
    ) -> None:  # fmt: skip
        self.model = model
        self.versions = set(versions) if versions is not None else {model[1]}
        self.beds = dict(beds or {})
        self.census = Census(closed_keep_s=closed_keep_s, ttl_s=ttl_s)
        self.window_h = history_window_h
        self.with_features = news2_features
        self._scores: dict[str, ScoreEvent] = {}
        self._news2: dict[str, History] = {}  # completed rows' NEWS2 totals of the last 24 h
        self._sepsis_alerts: dict[str, dict[str, float]] = {}  # model_risk alert id -> its time, per patient
        self._treated_acks: dict[str, dict[str, float]] = {}  # alert id acknowledged as treated -> when
        self._last_event: dict[str, float] = {}  # newest score / alert / ack event time per patient
        self._keep_s = max(ttl_s, closed_keep_s)

    def on_adt(self, ev: AdtEvent) -> str:
        """Apply an ADT event to the census (``applied``, ``stale`` or ``duplicate``); an applied admit starts a
        new stay, so alerts and acks from before it no longer hold (later ones, read before the admit, do)."""
        outcome = self.census.apply(ev)
        if outcome == "applied" and ev.kind == "admit":
            for table in (self._sepsis_alerts, self._treated_acks):
                kept = {a: t for a, t in table.get(ev.patient, {}).items() if t >= ev.time}
                if kept:
                    table[ev.patient] = kept
                else:
                    table.pop(ev.patient, None)
        return outcome

    def on_score(self, ev: ScoreEvent) -> str:
        """Keep the score if it is the patient's latest: ``applied``, ``older``, ``other_model`` or
        ``uncalibrated_version`` (a version of the model without a calibration)."""
        if ev.model != self.model[0]:
            return "other_model"
        if ev.version not in self.versions:
            return "uncalibrated_version"
        if (self.window_h is not None or self.with_features) and not ev.partial and ev.news2_total >= 0:
            self._news2.setdefault(ev.patient, History()).add(ev.time, ev.row, ev.news2_total)
        self._seen(ev.patient, ev.event_time)
        cur = self._scores.get(ev.patient)
        if cur is not None and (ev.time, not ev.partial) < (cur.time, not cur.partial):
            return "older"
        self._scores[ev.patient] = ev
        self.census.touch(ev.patient, ev.event_time)
        return "applied"

    def on_alert(self, ev: AlertEvent) -> str:
        """Remember the ids of the patient's sepsis-model alerts (``model_risk``): ``applied`` or ``other_type``."""
        if ev.type != "model_risk":
            return "other_type"
        self._sepsis_alerts.setdefault(ev.patient, {})[ev.alert_id] = ev.time
        self._seen(ev.patient, ev.time)
        self.census.touch(ev.patient, ev.time)
        return "applied"

    def on_ack(self, ev: AckEvent) -> str:
        """Remember a ``treated`` acknowledgement (``applied``); other actions are ``other_action``."""
        if ev.action != "treated":
            return "other_action"
        self._treated_acks.setdefault(ev.patient, {})[ev.alert_id] = ev.time
        self._seen(ev.patient, ev.time)
        return "applied"

    def _seen(self, patient: str, t: float) -> None:
        if t > self._last_event.get(patient, -math.inf):
            self._last_event[patient] = t

    def is_treated(self, patient: str) -> bool:
        """A sepsis alert of the patient's current stay was acknowledged as treated."""
        acks = self._treated_acks.get(patient)
        return bool(acks) and not acks.keys().isdisjoint(self._sepsis_alerts.get(patient, {}))

    def recent_news2_max(self, patient: str) -> int:
        """The highest NEWS2 total of the last ``window_h`` rows up to the patient's latest score (that score's
        total included; -1 when unknown)."""
        s = self._scores.get(patient)
        if s is None or self.window_h is None or s.news2_total < 0:
            return -1
        return self._news2.get(patient, History()).recent_max(s.time, s.news2_total, self.window_h)

    def news2_features(self, patient: str) -> np.ndarray | None:
        """The :mod:`vigil.demand.news2_model` features of the patient's latest score (None when unknown)."""
        s = self._scores.get(patient)
        if s is None or s.news2_total < 0:
            return None
        return self._news2.get(patient, History()).features(s.time, s.row, s.news2_total)

    def held_scores(self) -> int:
        return len(self._scores)

    def evict(self, now: float) -> dict[str, int]:
        """Evict census entries (see :meth:`Census.evict`) and the scores, NEWS2 history, alert ids and acks of
        patients not present whose newest score, alert or ack is older than the TTL; returns the counts by
        reason."""
        out = self.census.evict(now)
        stale = [p for p, t in self._last_event.items() if now - t > self._keep_s and not self.census.is_present(p)]
        dropped = 0
        for p in stale:
            dropped += self._scores.pop(p, None) is not None
            self._news2.pop(p, None)
            self._sepsis_alerts.pop(p, None)
            self._treated_acks.pop(p, None)
            del self._last_event[p]
        if dropped:
            out["scores"] = dropped
        return out

    def snapshots(self) -> list[WardSnapshot]:
        """One snapshot per ward with patients present or beds configured, sorted by ward."""
        wards = self.census.by_ward()
        out = []
        for ward in sorted(set(wards) | set(self.beds)):
            patients = wards.get(ward, [])
            n = len(patients)
            risk = np.full(n, math.nan)
            news2 = np.full(n, -1, dtype=np.int64)
            news2_max = np.full(n, -1, dtype=np.int64)
            features = np.full((n, len(FEATURES)), math.nan) if self.with_features else None
            treated = np.zeros(n, dtype=bool)
            versions = np.full(n, self.model[1], dtype=object)
            for i, p in enumerate(patients):
                s = self._scores.get(p)
                if s is not None:
                    risk[i], news2[i], versions[i] = s.risk, s.news2_total, s.version
                    news2_max[i] = self.recent_news2_max(p)
                    f = self.news2_features(p) if features is not None else None
                    if f is not None and features is not None:
                        features[i] = f
                treated[i] = self.is_treated(p)
            out.append(WardSnapshot(ward, risk, news2, self.beds.get(ward),
                                    news2_max=news2_max if self.window_h is not None else None,
                                    news2_features=features,
                                    treated=treated, versions=versions, patients=tuple(patients)))  # fmt: skip
        return out
