"""What one batch's outputs add to the worker's Prometheus metrics (counts only; no patient identifier in a label).

Kept apart from the loop (:mod:`vigil.worker.engine`) so that what is counted, and under which labels, reads in one
place: duplicates and late events per topic, events per ward, acknowledgement latency, the risk histogram (every
scored row, including rows scored at discharge), evictions, timings, scores and indeterminate scores per model
version, alerts, the drift monitors' PSI and the open-patient gauge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vigil.drift import DriftMonitor
from vigil.metrics import WorkerMetrics, observe_many
from vigil.scoring import Scorer
from vigil.worker.outputs import Outputs

__all__ = ["count_outputs"]


def count_outputs(m: WorkerMetrics, out: Outputs, scorers: Sequence[Scorer],
                  drift: Mapping[tuple[str, str], DriftMonitor | None], patients: int) -> None:  # fmt: skip
    """Add ``out`` (one batch, or one housekeeping pass) to the metrics ``m``."""
    _counts(m, out.counts)
    for kind, secs in out.ack_latency:
        m.ack_seconds.labels(kind).observe(secs)
    for model, risks in out.risks.items():
        observe_many(m.risk.labels(model), risks)
    if out.scores:
        m.featurize_seconds.observe(out.featurize_s)
        for name, secs in out.inference_s.items():
            m.inference_seconds.labels(name).observe(secs)
        for sc in scorers:
            m.scores.labels(sc.name, sc.version).inc(len(out.scores) // max(1, len(scorers)))
    for (name, version), c in out.indeterminate.items():
        m.indeterminate.labels(name, version).inc(c)
    for labels in out.alert_labels:
        m.alerts.labels(*labels).inc()
    if out.scores:
        for sc in scorers:
            mon = drift.get((sc.name, sc.version))
            if mon is not None and mon.rows:
                for quantity, value in mon.psi().items():
                    m.psi.labels(sc.name, quantity).set(value)
    for _ in out.drift:
        m.drift_events.inc()
    m.patients.set(patients)


def _counts(m: WorkerMetrics, counts: dict[str, Any]) -> None:
    for topic, c in counts.get("duplicates", {}).items():
        m.duplicates.labels(topic).inc(c)
    for topic, c in counts.get("late", {}).items():
        m.late.labels(topic).inc(c)
    for ward, c in counts.get("ward_events", {}).items():
        m.ward_events.labels(ward).inc(c)
    for reason, c in counts.get("evicted", {}).items():
        if c:
            m.evictions.labels(reason).inc(c)
