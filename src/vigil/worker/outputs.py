"""The records the worker publishes for a scored batch: scores (live and shadow), alerts and acknowledgement
records, built from the alerting stage's decisions (:mod:`vigil.alerting`, which owns the alert state and the
alert ids). Pure functions of their inputs (no Kafka, no state changes, no clocks except the ``emitted_at``
stamps), so a replay or a recovery rebuilds the same records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from vigil.alerting import Decision
from vigil.alerts import alert_message, score_id
from vigil.explain import explain
from vigil.scoring import ONSET_HORIZON_H, Scorer
from vigil.state import PatientState, Snapshot
from vigil.worker.intake import DeadLetter

__all__ = ["Outputs", "merge", "iso", "score_record", "alert_records", "ack_record", "Fired"]

Fired = tuple[int, Scorer | None, Decision, float, float]  # (row in batch, scorer, decision, risk, level in force)


@dataclass(slots=True)
class Outputs:
    """What one batch publishes (records per topic) and reports (metrics), built by the Processor."""

    scores: list[tuple[str, bytes]] = field(default_factory=list)  # (key, value)
    shadow_scores: list[tuple[str, bytes]] = field(default_factory=list)  # candidates in shadow mode
    drift: list[tuple[str, bytes]] = field(default_factory=list)  # drift events (key: model name)
    risks: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> risks scored in the batch
    ack_latency: list[tuple[str, float]] = field(default_factory=list)  # (alert type, seconds raise -> ack)
    alerts: list[tuple[str, bytes]] = field(default_factory=list)
    changelog: list[tuple[int, str, bytes | None]] = field(default_factory=list)  # (partition, key, value)
    score_trigger_ts: list[float] = field(default_factory=list)
    alert_trigger_ts: list[float] = field(default_factory=list)
    row_end_times: list[float] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    featurize_s: float = 0.0
    inference_s: dict[str, float] = field(default_factory=dict)
    alert_labels: list[tuple[str, str, str]] = field(default_factory=list)  # (type, severity, ward)
    dead: list[DeadLetter] = field(default_factory=list)  # quarantined events (processing_error, time_out_of_range)
    indeterminate: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, version) -> scores flagged


def merge(out: Outputs, extra: Outputs) -> None:
    """Add ``extra`` (the outputs of a scoring pass) to ``out``: every record, risk and timing."""
    for name, arr in extra.risks.items():
        out.risks[name] = np.concatenate([out.risks[name], arr]) if name in out.risks else arr
    out.scores += extra.scores
    out.shadow_scores += extra.shadow_scores
    out.drift += extra.drift
    out.alerts += extra.alerts
    out.score_trigger_ts += extra.score_trigger_ts
    out.alert_trigger_ts += extra.alert_trigger_ts
    out.row_end_times += extra.row_end_times
    out.alert_labels += extra.alert_labels
    out.featurize_s += extra.featurize_s
    for k, v in extra.inference_s.items():
        out.inference_s[k] = out.inference_s.get(k, 0.0) + v
    for key, c in extra.indeterminate.items():
        out.indeterminate[key] = out.indeterminate.get(key, 0) + c


@lru_cache(maxsize=1 << 14)
def iso(t: float) -> str:
    """ISO 8601 (UTC) of POSIX seconds ``t``; cached (a batch repeats its row starts and broker timestamps)."""
    return datetime.fromtimestamp(t, UTC).isoformat()


def score_record(snap: Snapshot, sc: Scorer, risk: float, n2: dict[str, Any], now_iso: str,
                 live: dict[str, Any] | None | bool = False, level: float | None = None,
                 flag: tuple[bool, str | None] = (False, None)) -> dict[str, Any]:  # fmt: skip
    """A ``scores`` record; with ``live`` (the live model's record of the same row, or None) a
    ``scores-shadow`` record of a candidate in shadow mode. ``threshold`` / ``above_threshold``: the alert
    level in force for the patient's ward and unit (:func:`vigil.levels.level_in_force`; default the
    card's alert level), the same level the alerts are raised at. ``flag``: (indeterminate, reason) of the score
    (:mod:`vigil.abstain`)."""
    thr = sc.alert_level if level is None else level
    rec: dict[str, Any] = {
        "v": 1, "score_id": score_id(snap.patient, sc.name, sc.version, snap.row, snap.partial),
        "patient": snap.patient, "ward": snap.ward, "bed": snap.bed, "unit": snap.unit,
        "time": iso(snap.row_time), "row": snap.row, "partial": snap.partial,
        "model": {"name": sc.name, "version": sc.version, "provider": sc.provider},
        "risk": round(risk, 6), "threshold": thr, "above_threshold": risk >= thr,
        "indeterminate": flag[0], "indeterminate_reason": flag[1], "news2": n2,
        "emitted_at": now_iso, "trigger_time": iso(snap.trigger_ts),
    }  # fmt: skip
    if live is not False:
        rec["shadow"] = True
        rec["live"] = None if not isinstance(live, dict) else {
            "model": live["model"]["name"], "version": live["model"]["version"], "risk": live["risk"],
            "above_threshold": live["above_threshold"],
        }  # fmt: skip
    return rec


def alert_records(
    fired: list[Fired],
    scorers: list[Scorer],
    snaps: list[Snapshot],
    inp: Any,
    risks: list[np.ndarray],
    n2s: list[dict[str, Any]],
    now_iso: str,
    flags: dict[tuple[int, int], tuple[bool, str | None]] | None = None,
) -> list[tuple[str, dict[str, Any], float, tuple[str, str, str]]]:
    """``(patient, alert record, trigger time, metric labels)`` for the alerting stage's decisions; model alerts
    carry the model's own top factors (one :func:`vigil.explain.explain` call per model per batch). ``flags``:
    (row, scorer index) -> (indeterminate, reason) of the model scores (:mod:`vigil.abstain`); model alerts carry
    theirs."""
    factors: dict[tuple[int, str], list[dict[str, Any]]] = {}
    result = []
    for j, sc in enumerate(scorers):
        rows = sorted({i for i, s2, d, _, _ in fired if s2 is sc and d.kind == "model_risk"
                       and d.event in ("raised", "escalated")})  # fmt: skip
        if rows:
            for i, fs in zip(rows, explain(sc, inp, rows, risk=risks[j]), strict=True):
                factors[(i, sc.name)] = [f.to_dict() for f in fs]
    for i, sc, d, risk, thr in fired:
        snap = snaps[i]
        model_name = sc.name if sc is not None else "-"
        fs = factors.get((i, model_name), []) if d.kind == "model_risk" else []
        quotes_onset = sc is not None and d.kind == "model_risk" and d.event != "resolved"
        p_onset = sc.onset_probability(risk) if quotes_onset else None
        onset = None if p_onset is None else (ONSET_HORIZON_H, p_onset)
        j = next((k for k, s2 in enumerate(scorers) if s2 is sc), -1) if d.kind == "model_risk" else -1
        flag = (flags or {}).get((i, j), (False, None))
        alert = {
            "v": 1, "alert_id": d.alert_id, "event": d.event, "episode_id": d.episode_id, "type": d.kind,
            "severity": d.severity, "patient": snap.patient, "ward": snap.ward, "bed": snap.bed,
            "unit": snap.unit, "time": iso(snap.row_time), "row": snap.row,
            "model": {"name": model_name, "version": sc.version if sc is not None else "-"},
            "score": round(risk, 6), "threshold": thr, "value": d.value, "raise_at": d.raise_at,
            "news2": n2s[i], "factors": fs, "ack": d.ack,
            "onset_probability": None if onset is None else {"horizon_h": onset[0], "p": round(onset[1], 4)},
            "indeterminate": flag[0], "indeterminate_reason": flag[1],
            "message": alert_message(d, risk=risk, threshold=thr, news2=n2s[i], factors=fs, onset=onset),
            "emitted_at": now_iso,
        }  # fmt: skip
        result.append((snap.patient, alert, snap.trigger_ts, (d.kind, d.severity, snap.ward or "unknown")))
    return result


def ack_record(st: PatientState, d: Decision) -> dict[str, Any]:
    """The ``acknowledged`` record of an acknowledgement the alerting stage applied (``st``: the patient's
    context: ward, bed, unit)."""
    ack = d.ack or {}
    return {
        "v": 1, "alert_id": d.alert_id, "event": "acknowledged", "episode_id": d.episode_id, "type": d.kind,
        "severity": "info", "patient": st.patient, "ward": st.ward, "bed": st.bed, "unit": st.unit,
        "time": iso(d.time), "row": d.row, "model": {"name": d.model or "-", "version": d.version},
        "score": None, "threshold": None, "value": d.value, "raise_at": None, "news2": None, "factors": [],
        "ack": {**ack, "at": iso(float(ack["at"]))} if ack else None,
        "message": f"{d.kind} alert {ack.get('action', 'acknowledged')} by {ack.get('by')}",
        "emitted_at": iso(time.time()),
    }  # fmt: skip
