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




def test_observe_many_gives_the_exposition_of_one_observe_per_value() -> None:
    """``observe_many`` writes prometheus_client's private bucket and sum fields: the same text as ``observe`` per
    value (a client upgrade that renames them fails here), for values on, between and beyond every bound."""
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from vigil.metrics import LATENCY_BUCKETS, observe_many

    rng = np.random.default_rng(1)
    values = [*LATENCY_BUCKETS, 0.0, -1.0, 1e9, *rng.exponential(0.3, 500).round(4).tolist(), float("nan")]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat_seconds", "x", ["stage"], buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("lat_seconds", "x", ["stage"], buckets=LATENCY_BUCKETS, registry=many)
    for v in values:
        h1.labels("score").observe(v)
    observe_many(h2.labels("score"), values[:100])
    observe_many(h2.labels("score"), np.asarray(values[100:]))
    observe_many(h2.labels("score"), [])

    def lines(reg: CollectorRegistry) -> list[str]:
        return [ln for ln in generate_latest(reg).decode().splitlines() if "_created" not in ln]

    a, b = lines(one), lines(many)
    assert [ln for ln in a if "_sum" not in ln] == [ln for ln in b if "_sum" not in ln]
    assert any("_bucket" in ln and 'le="0.25"' in ln for ln in a)
    sums = [ln for ln in a + b if "_sum" in ln]
    assert len(sums) == 2 and sums[0].split()[-1] == sums[1].split()[-1] == "NaN"  # a NaN poisons the sum, as before
    h3, h4 = Histogram("s_seconds", "x", registry=one), Histogram("s_seconds", "x", registry=many)
    finite = [v for v in values if v == v]
    for v in finite:
        h3.observe(v)
    observe_many(h4, finite)
    s3 = next(s.value for s in h3.collect()[0].samples if s.name == "s_seconds_sum")
    s4 = next(s.value for s in h4.collect()[0].samples if s.name == "s_seconds_sum")
    assert abs(s3 - s4) <= 1e-9 * abs(s3)  # one float sum instead of many: equal up to rounding
