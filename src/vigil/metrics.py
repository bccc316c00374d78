"""Prometheus metrics of the worker: one class, an injected registry, base units, no patient labels.

Labels are topics, partitions, reasons, models, alert types and wards — never patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vigil.errors import REASONS

__all__ = ["WorkerMetrics", "DemandMetrics", "IngestMetrics", "LATENCY_BUCKETS", "observe_many"]

# Resolve 10 ms - 2 s finely (the latency budget is a p99 of 250 ms), coarse beyond.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)


def observe_many(hist: Histogram, amounts: Sequence[float] | np.ndarray) -> None:
    """``hist.observe(a)`` for every ``a`` of ``amounts`` (a histogram child: labels already applied), in one pass:
    each bucket incremented once by its count and the sum once (the worker observes two latencies per score; one
    ``observe`` per score was ~3 % of the event loop's time). Reads prometheus_client's ``_upper_bounds``,
    ``_buckets`` and ``_sum`` (the fields ``Histogram.observe`` writes); ``tests/test_metrics.py`` checks that the
    exposition equals the one of ``observe`` per value, so a client upgrade that changes them fails there.

    >>> h = Histogram("h_seconds", "h", buckets=(0.1, 1.0), registry=CollectorRegistry())
    >>> observe_many(h, [0.05, 0.1, 0.5, 7.0])
    >>> [(s.labels.get("le"), s.value) for s in h.collect()[0].samples if s.name == "h_seconds_bucket"]
    [('0.1', 2.0), ('1.0', 3.0), ('+Inf', 4.0)]
    """
    a = np.asarray(amounts, dtype=np.float64)
    if not a.size:
        return
    hist._raise_if_not_observable()  # noqa: SLF001 - what observe() checks first
    hist._sum.inc(float(a.sum()))  # noqa: SLF001
    bounds = hist._upper_bounds  # noqa: SLF001 - ascending, the last +Inf
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), a, side="left")  # first bound >= amount, as observe
    counts = np.bincount(idx, minlength=len(bounds) + 1)[: len(bounds)]  # a NaN lands past the end: no bucket
    for i in np.flatnonzero(counts).tolist():
        hist._buckets[i].inc(int(counts[i]))  # noqa: SLF001


class WorkerMetrics:
    """All worker metrics, registered on ``registry`` (a fresh ``CollectorRegistry`` per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "vigil") -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, prefix
        self.events = Counter(f"{p}_events", "Valid events consumed", ["topic", "kind"], registry=r)
        self.invalid = Counter(
            f"{p}_invalid_events", "Events rejected at the edge", ["topic", "reason"], registry=r
        )
        self.duplicates = Counter(f"{p}_duplicate_events", "Duplicate events dropped", ["topic"], registry=r)
        self.late = Counter(f"{p}_late_events", "Events for an already closed hourly row", ["topic"], registry=r)
        self.dead_letters = Counter(
            f"{p}_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.scores = Counter(f"{p}_scores", "Risk scores emitted", ["model", "version"], registry=r)
        self.indeterminate = Counter(f"{p}_scores_indeterminate", "Risk scores flagged indeterminate (vigil.abstain)",
                                     ["model", "version"], registry=r)  # fmt: skip
        self.alerts = Counter(f"{p}_alerts", "Alerts emitted", ["type", "severity", "ward"], registry=r)
        self.batch_size = Histogram(
            f"{p}_batch_size_events", "Events per consumed batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            f"{p}_batch_seconds", "Wall time to process one batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.featurize_seconds = Histogram(
            f"{p}_featurize_seconds", "Featurization time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            f"{p}_inference_seconds", "ONNX inference time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.e2e_latency = Histogram(
            f"{p}_e2e_latency_seconds",
            "Ingest (broker timestamp of the triggering event) to output acknowledged by the broker",
            ["output"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.event_time_lag = Histogram(
            f"{p}_event_time_lag_seconds", "Event time of the scored row's end to output emitted",
            buckets=(*LATENCY_BUCKETS, 300.0, 900.0, 3600.0, 7200.0), registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            f"{p}_model_info", "Models serving (1 = active)", ["name", "version", "provider"], registry=r
        )
        self.shadow_model_info = Gauge(
            f"{p}_shadow_model_info", "Candidate models scoring in shadow mode (1 = active)",
            ["name", "version", "provider"], registry=r,
        )  # fmt: skip
        self.psi = Gauge(
            f"{p}_drift_psi", "Population stability index against the model card's training reference "
            "(sliding window of scored rows; quantity = a feature or 'score')", ["model", "quantity"], registry=r,
        )  # fmt: skip
        self.drift_events = Counter(f"{p}_drift_events_total", "Drift events published to model-drift", registry=r)
        self.consumer_lag = Gauge(
            f"{p}_consumer_lag", "Records behind the high watermark", ["topic", "partition"], registry=r
        )
        self.patients = Gauge(f"{p}_patients_in_state", "Patients held in state by this worker", registry=r)
        self.partitions = Gauge(f"{p}_assigned_partitions", "Input partitions owned by this worker", registry=r)
        self.evictions = Counter(f"{p}_state_evictions", "Patient states evicted", ["reason"], registry=r)
        self.restored = Counter(f"{p}_state_restored", "Patient states restored from the changelog", registry=r)
        self.commit_failures = Counter(
            f"{p}_commit_failures", "Batches whose offset commit failed (re-delivered)", registry=r
        )
        # event-time pacing (worker/reorder.py): held events, paused inputs, stalled-input escapes
        self.reorder_held = Gauge(f"{p}_reorder_held_events", "Events held in the reorder buffer", registry=r)
        self.reorder_paused = Gauge(
            f"{p}_reorder_paused_inputs", "Input topic-partitions paused because ahead in event time", registry=r
        )
        self.reorder_pauses = Counter(
            f"{p}_reorder_pauses", "Input topic-partitions paused because ahead in event time", ["topic"], registry=r
        )
        self.reorder_stalled = Counter(
            f"{p}_reorder_stalled_inputs",
            "Input topic-partitions that stopped holding the others back after making no fetch progress",
            ["topic"], registry=r,
        )  # fmt: skip
        # edge watermarks (worker/punctuation.py): producers' progress records, and data that contradicted them
        self.watermarks = Counter(f"{p}_watermarks", "Producer watermark records consumed", ["topic"], registry=r)
        self.watermark_violations = Counter(
            f"{p}_watermark_violations",
            "Data records earlier than their topic-partition's producer watermark (that input falls back to the "
            "inferred watermark and the minimum hold for state.edge_watermark_timeout_s)", ["topic"], registry=r,
        )  # fmt: skip
        self.reorder_edge_inputs = Gauge(
            f"{p}_reorder_edge_ordered_inputs", "Input topic-partitions ordered by producer watermarks", registry=r
        )
        self.up = Gauge(f"{p}_worker_up", "1 while the worker's consume loop runs", registry=r)
        self.ack_seconds = Histogram(
            f"{p}_alert_ack_seconds", "Time from an alert being raised to its first acknowledgement (event time)",
            ["type"], registry=r, buckets=(60, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400),
        )  # fmt: skip
        self.high_risk = Gauge(
            f"{p}_high_risk_patients", "Patients in care with a model-risk alert raised and not cleared, by ward",
            ["ward"], registry=r,
        )  # fmt: skip
        self.risk = Histogram(
            f"{p}_risk_ratio", "Risk scores (0-1) of scored rows, by model", ["model"], registry=r,
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        )  # fmt: skip
        self.ward_events = Counter(
            f"{p}_ward_events", "Valid events applied, by the patient's ward ('unknown' before an admit): "
            "a ward whose feed goes silent is a clinical risk", ["ward"], registry=r,
        )  # fmt: skip
        # integrity (issue 14): records that did not become state, each counted where it went
        self.rerouted = Counter(
            f"{p}_rerouted_events", "Records found on a partition their key does not hash to (a producer with a "
            "non-murmur2 partitioner), re-produced to the right partition", ["topic"], registry=r,
        )  # fmt: skip
        self.quarantined = Counter(
            f"{p}_quarantined_events", "Valid events whose processing raised: dead-lettered (processing_error), "
            "the patient's other events and every other patient go on", ["topic"], registry=r,
        )  # fmt: skip
        self.dead_letter_fallbacks = Counter(
            f"{p}_dead_letter_fallbacks", "Dead letters the broker refused, replaced by their minimal form", registry=r
        )
        self.dead_letter_failures = Counter(
            f"{p}_dead_letter_failures", "Dead letters refused even in minimal form (logged with the original's "
            "topic, partition and offset; the original stays on its topic)", registry=r,
        )  # fmt: skip
        # the live alert-budget controller (vigil.budget; alerts.budget.enabled): group = a ward or ICU unit
        self.alert_level = Gauge(f"{p}_alert_level", "Model-risk alert level in force, set by the alert-budget "
                                 "controller", ["group"], registry=r)  # fmt: skip
        self.budget_rate = Gauge(f"{p}_alert_budget_rate", "Model-risk alerts per patient-day at the group's level "
                                 "(the controller's last evaluation)", ["group"], registry=r)  # fmt: skip
        self.budget_pinned = Gauge(f"{p}_alert_budget_pinned", "1 while the controller holds a group at a bound "
                                   "with its rate still off target", ["group"], registry=r)  # fmt: skip
        self.budget_moves = Counter(f"{p}_alert_budget_moves", "Level moves by the alert-budget controller",
                                    ["group", "direction"], registry=r)  # fmt: skip


class DemandMetrics:
    """Metrics of ``vigil demand run`` (own registry): the latest forecast per ward, resource and horizon as
    gauges, the census per ward, and the job's input counters. Labels: ward, resource, horizon_h, level,
    topic, outcome — never patients."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "vigil") -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, f"{prefix}_demand"
        fc = ["ward", "resource", "horizon_h"]
        self.expected = Gauge(f"{p}_expected", "Expected count needing the resource within the horizon", fc,
                              registry=r)  # fmt: skip
        self.interval_lower = Gauge(f"{p}_interval_lower", "Lower end of the central prediction interval",
                                    [*fc, "level"], registry=r)  # fmt: skip
        self.interval_upper = Gauge(f"{p}_interval_upper", "Upper end of the central prediction interval",
                                    [*fc, "level"], registry=r)  # fmt: skip
        self.p_exceed = Gauge(f"{p}_p_exceed_capacity", "P(demand > capacity); absent when the capacity is unknown",
                              fc, registry=r)  # fmt: skip
        self.alert_active = Gauge(f"{p}_capacity_alert_active", "1 while a capacity alert is raised", fc, registry=r)
        self.alerts = Counter(f"{p}_capacity_alerts", "Capacity alerts raised", fc, registry=r)
        self.patients = Gauge(f"{p}_ward_patients", "Patients present per ward (ADT census)", ["ward"], registry=r)
        self.free_beds = Gauge(f"{p}_ward_free_beds", "Free beds per ward (configured beds minus census)", ["ward"],
                               registry=r)  # fmt: skip
        self.unit_patients = Gauge(f"{p}_unit_patients", "Patients present per care unit (ADT unit)", ["unit"],
                                   registry=r)  # fmt: skip
        self.unassigned = Gauge(f"{p}_unassigned_patients", "Patients present whose ward is unknown (in no forecast)",
                                registry=r)  # fmt: skip
        self.events = Counter(f"{p}_input_events", "Input records by topic and outcome", ["topic", "outcome"],
                              registry=r)  # fmt: skip
        self.forecasts = Counter(f"{p}_forecasts", "Forecast records emitted", registry=r)
        self.forecast_time = Gauge(f"{p}_forecast_event_time_seconds", "Event time of the latest forecast round",
                                   registry=r)  # fmt: skip
        self.compute_seconds = Histogram(f"{p}_compute_seconds", "Wall time of one forecast round",
                                         buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        # live verification of the needs the job observes (vigil.demand.verify): settled forecasts
        self.verified = Counter(f"{p}_verified_forecasts", "Forecasts checked once their horizon passed", fc,
                                registry=r)  # fmt: skip
        self.verified_expected = Counter(f"{p}_verified_expected", "Sum of the checked forecasts' expected counts",
                                         fc, registry=r)  # fmt: skip
        self.verified_observed = Counter(f"{p}_verified_observed", "Sum of the realised counts of checked forecasts",
                                         fc, registry=r)  # fmt: skip
        self.verified_abs_error = Counter(f"{p}_verified_abs_error", "Sum of |realised - expected|, checked forecasts",
                                          fc, registry=r)  # fmt: skip
        self.verified_inside = Counter(f"{p}_verified_inside", "Checked forecasts whose realised count fell inside "
                                       "the interval", [*fc, "level"], registry=r)  # fmt: skip
        self.verified_mass = Counter(f"{p}_verified_mass", "Sum of the probability the checked forecasts gave the "
                                     "interval", [*fc, "level"], registry=r)  # fmt: skip
        self.evictions = Counter(f"{p}_evictions", "Census and score entries evicted", ["reason"], registry=r)
        self.up = Gauge(f"{p}_up", "1 while the demand job's consume loop runs", registry=r)
        self.caught_up = Gauge(f"{p}_caught_up", "1 once every record that existed at start is processed",
                               registry=r)
        self.late = Counter(f"{p}_late_events", "Events older than a forecast round already computed: applied "
                            "to the state, but the rounds before them were computed without them", ["topic"],
                            registry=r)  # fmt: skip


class IngestMetrics:
    """Metrics of the edge listeners ``vigil ingest hl7|fhir`` (own registry; one instance may serve both).
    Labels: ``protocol`` (hl7 | fhir), ``outcome`` (HL7 ACK code AA | AE | AR; FHIR created | ok | rejected
    | unauthorized | not_acceptable | too_large | unsupported_media | unprocessable | unavailable | other;
    observations published | rejected | ignored | rolled_back)
    and the dead-letter ``reason`` (:data:`vigil.errors.REASONS`, else ``other``) — never patients, MRNs, control
    ids, facilities or anything else read from a message."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "vigil") -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, f"{prefix}_ingest"
        self.messages = Counter(f"{p}_messages", "Messages answered: HL7 by ACK code, FHIR requests by outcome",
                                ["protocol", "outcome"], registry=r)  # fmt: skip
        self.observations = Counter(f"{p}_observations", "OBX segments / FHIR Observations: published as events, "
                                    "rejected (dead-lettered), ignored (HL7: not used by vigil) or rolled_back "
                                    "(valid entries of a rejected FHIR transaction)", ["protocol", "outcome"],
                                    registry=r)  # fmt: skip
        self.dead_letters = Counter(f"{p}_dead_letters", "Records the listener sent to the dead-letter topic",
                                    ["protocol", "reason"], registry=r)  # fmt: skip
        self.message_seconds = Histogram(f"{p}_message_seconds", "Message fully received to reply sent (includes "
                                         "waiting for the broker's acks)", ["protocol"], buckets=LATENCY_BUCKETS,
                                         registry=r)  # fmt: skip
        self.connections = Gauge(f"{p}_connections", "Open MLLP connections", ["protocol"], registry=r)
        self.up = Gauge(f"{p}_up", "1 while the listener serves", ["protocol"], registry=r)

    def dead_lettered(self, protocol: str, reasons: list[str]) -> None:
        """Count dead letters acknowledged by the broker; a reason outside the fixed set is counted as ``other``
        (a label never carries free text)."""
        for reason in reasons:
            self.dead_letters.labels(protocol, reason if reason in REASONS else "other").inc()
