"""Metrics: names used by the dashboards exist, base units, no patient identifiers as labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

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
            assert fam.name.endswith(("_seconds", "_events", "_ratio")), fam.name  # base units in the name


