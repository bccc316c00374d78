"""Metrics: names used by the dashboards exist, base units, no patient identifiers as labels."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry, generate_latest

from vigil.config import REPO_ROOT
from vigil.metrics import WorkerMetrics

FORBIDDEN_LABELS = {"patient", "mrn", "visit", "bed", "name_of_patient", "stay"}


def _families(m: WorkerMetrics) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for fam in m.registry.collect():
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_fresh_registry_per_instance_and_no_patient_labels() -> None:
    a, b = WorkerMetrics(CollectorRegistry()), WorkerMetrics(CollectorRegistry())
    a.events.labels("vitals", "vital").inc(3)
    assert b"vigil_events_total" in generate_latest(a.registry)
    assert 'vigil_events_total{kind="vital",topic="vitals"} 3.0' in generate_latest(a.registry).decode()
    assert 'topic="vitals"' not in generate_latest(b.registry).decode()
    for fam in a.registry.collect():
        labels = set()
        for s in fam.samples:
            labels |= set(s.labels)
        assert not labels & FORBIDDEN_LABELS, (fam.name, labels)
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_events")), fam.name  # base units in the name


def test_every_metric_in_the_dashboards_exists() -> None:
    m = WorkerMetrics(CollectorRegistry())
    m.e2e_latency.labels("score").observe(0.1)
    m.inference_seconds.labels("x").observe(0.1)
    m.consumer_lag.labels("vitals", "0").set(1)
    m.model_info.labels("m", "1", "CPUExecutionProvider").set(1)
    m.alerts.labels("news2_emergency", "emergency", "W").inc()
    m.events.labels("vitals", "vital").inc()
    m.dead_letters.labels("malformed_json").inc()
    known = set(_families(m))
    used: set[str] = set()
    for path in (REPO_ROOT / "dashboards").rglob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel["targets"]:
                used |= set(re.findall(r"\bvigil_[a-z0-9_]+", t["expr"]))
    assert used, "no dashboard queries found"
    assert used <= known, f"dashboards use metrics the worker does not export: {sorted(used - known)}"
