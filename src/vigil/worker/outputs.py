"""The records the worker publishes for a scored batch: scores (live and shadow), alerts and acknowledgement
records, built from the policy's decisions. Pure functions of their inputs (no Kafka, no clocks except the
``emitted_at`` stamps), so a replay or a recovery rebuilds the same ids."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from vigil.alerts import alert_id, alert_message, score_id
from vigil.explain import explain
from vigil.policy import AlertPolicy, Decision
from vigil.scoring import ONSET_HORIZON_H, Scorer
from vigil.state import PatientState, Snapshot

__all__ = ["iso", "score_record", "news2_decisions", "alert_records", "ack_record", "ACKABLE"]

ACKABLE = 8  # recent raised alerts per patient and type that an acknowledgement can refer to

Fired = tuple[int, Scorer | None, Decision, float, float]  # (row in batch, scorer, decision, risk, level in force)


@lru_cache(maxsize=1 << 14)
def iso(t: float) -> str:
    """ISO 8601 (UTC) of POSIX seconds ``t``; cached (a batch repeats its row starts and broker timestamps)."""
    return datetime.fromtimestamp(t, UTC).isoformat()


def score_record(snap: Snapshot, sc: Scorer, risk: float, n2: dict[str, Any], now_iso: str,
                 live: dict[str, Any] | None | bool = False, level: float | None = None) -> dict[str, Any]:  # fmt: skip
    """A ``scores`` record; with ``live`` (the live model's record of the same row, or None) a
    ``scores-shadow`` record of a candidate in shadow mode. ``threshold`` / ``above_threshold``: the alert
    level in force for the patient's ward and unit (:func:`vigil.levels.level_in_force`; default the
    card's alert level), the same level the alerts are raised at."""
    thr = sc.alert_level if level is None else level
    rec: dict[str, Any] = {
        "v": 1, "score_id": score_id(snap.patient, sc.name, sc.version, snap.row, snap.partial),
        "patient": snap.patient, "ward": snap.ward, "bed": snap.bed, "unit": snap.unit,
        "time": iso(snap.row_time), "row": snap.row, "partial": snap.partial,
        "model": {"name": sc.name, "version": sc.version, "provider": sc.provider},
        "risk": round(risk, 6), "threshold": thr, "above_threshold": risk >= thr, "news2": n2,
        "emitted_at": now_iso, "trigger_time": iso(snap.trigger_ts),
    }  # fmt: skip
    if live is not False:
        rec["shadow"] = True
        rec["live"] = None if not isinstance(live, dict) else {
            "model": live["model"]["name"], "version": live["model"]["version"], "risk": live["risk"],
            "above_threshold": live["above_threshold"],
        }  # fmt: skip
    return rec


def news2_decisions(pol: AlertPolicy, st: PatientState, snap: Snapshot, n2: dict[str, Any]) -> list[Decision]:
    """The NEWS2 rules, once per row (not once per model)."""
    total = float(n2["total"])
    emergency = pol.rule("news2_emergency", snap.ward, snap.unit)
    covered = emergency.enabled and total >= float(emergency.raise_at or 7)
    t, row, w, u = snap.row_time, snap.row, snap.ward, snap.unit
    single = float(max(n2["parts"].values(), default=0))
    return [
        *pol.step(st.alerts, "news2_emergency", None, total, t, row, ward=w, unit=u),
        *pol.step(st.alerts, "news2_urgent", None, total, t, row, ward=w, unit=u, can_raise=not covered),
        *pol.step(st.alerts, "news2_single", None, single, t, row, ward=w, unit=u),
    ]


def alert_records(
    fired: list[Fired],
    scorers: list[Scorer],
    snaps: list[Snapshot],
    inp: Any,
    risks: list[np.ndarray],
    n2s: list[dict[str, Any]],
    states: dict[str, PatientState],
    now_iso: str,
) -> list[tuple[str, dict[str, Any], float, tuple[str, str, str]]]:
    """``(patient, alert record, trigger time, metric labels)`` for the policy's decisions; model alerts carry
    the model's own top factors (one :func:`vigil.explain.explain` call per model per batch). Records each
    raised alert's id in the patient's policy state so acknowledgements can refer to it."""
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
        st = states[snap.patient]
        model_name = sc.name if sc is not None else "-"
        version = sc.version if (sc is not None and d.kind == "model_risk") else "-"
        aid = alert_id(snap.patient, d.key, version, d.row, d.event)
        episode = alert_id(snap.patient, d.key, version, int(d.episode), "raised") if d.episode else aid
        if d.event == "raised":
            entry = st.alerts[d.key]
            entry["alert_id"], entry["version"] = aid, version
            ids = entry.setdefault("ids", {})  # recent alerts of this type: acknowledgeable
            ids[aid] = d.time
            for old_id in list(ids)[:-ACKABLE]:
                del ids[old_id]
        fs = factors.get((i, model_name), []) if d.kind == "model_risk" else []
        quotes_onset = sc is not None and d.kind == "model_risk" and d.event != "resolved"
        p_onset = sc.onset_probability(risk) if quotes_onset else None
        onset = None if p_onset is None else (ONSET_HORIZON_H, p_onset)
        alert = {
            "v": 1, "alert_id": aid, "event": d.event, "episode_id": episode, "type": d.kind,
            "severity": d.severity, "patient": snap.patient, "ward": snap.ward, "bed": snap.bed,
            "unit": snap.unit, "time": iso(snap.row_time), "row": snap.row,
            "model": {"name": model_name, "version": sc.version if sc is not None else "-"},
            "score": round(risk, 6), "threshold": thr, "value": d.value, "raise_at": d.raise_at,
            "news2": n2s[i], "factors": fs, "ack": d.ack,
            "onset_probability": None if onset is None else {"horizon_h": onset[0], "p": round(onset[1], 4)},
            "message": alert_message(d, risk=risk, threshold=thr, news2=n2s[i], factors=fs, onset=onset),
            "emitted_at": now_iso,
        }  # fmt: skip
        result.append((snap.patient, alert, snap.trigger_ts, (d.kind, d.severity, snap.ward or "unknown")))
    return result


def ack_record(st: PatientState, d: Decision) -> dict[str, Any]:
    """The ``acknowledged`` record of an acknowledgement applied to the patient's alert state."""
    s = st.alerts[d.key]
    ack = d.ack or {}
    acked = d.episode or s["alert_id"]
    return {
        "v": 1, "alert_id": alert_id(acked, "ack", ack.get("by"), ack.get("at"), ack.get("action")),
        "event": "acknowledged", "episode_id": acked, "type": d.kind, "severity": "info",
        "patient": st.patient, "ward": st.ward, "bed": st.bed, "unit": st.unit, "time": iso(d.time),
        "row": d.row, "model": {"name": d.key.partition(":")[2] or "-", "version": s.get("version", "-")},
        "score": None, "threshold": None, "value": d.value, "raise_at": None, "news2": None, "factors": [],
        "ack": {**ack, "at": iso(float(ack["at"]))} if ack else None,
        "message": f"{d.kind} alert {ack.get('action', 'acknowledged')} by {ack.get('by')}",
        "emitted_at": iso(time.time()),
    }  # fmt: skip
