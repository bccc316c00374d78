"""Prometheus metrics of ``vigil alerts webhook``: an injected registry, base units, no patient labels.

The only labels are ``destination`` (a short stable name: host + hash of the URL, or ``--name``) and
``reason`` (one of :data:`vigil.subscribers.delivery.REASONS`). Never a patient, an alert id or a full URL.

>>> m = WebhookMetrics()
>>> m.delivered.labels(destination="ehr-1a2b3c4d").inc()
>>> m.registry.get_sample_value("vigil_webhook_delivered_total", {"destination": "ehr-1a2b3c4d"})
1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WebhookMetrics", "DELIVERY_BUCKETS"]

# A delivery spans every attempt and backoff wait: up to minutes when a receiver is down.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class WebhookMetrics:
    """Delivery metrics, registered on ``registry`` (a fresh ``CollectorRegistry`` per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "vigil") -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, f"{prefix}_webhook"
        self.delivered = Counter(f"{p}_delivered", "Alerts delivered (2xx)", ["destination"], registry=r)
        self.failed_attempts = Counter(
            f"{p}_failed_attempts", "Failed delivery attempts by reason", ["destination", "reason"], registry=r
        )
        self.retries = Counter(
            f"{p}_retries", "Attempts re-scheduled after a retryable failure", ["destination", "reason"], registry=r
        )
        self.dead_lettered = Counter(
            f"{p}_dead_lettered", "Alerts sent to alerts-webhook-dead-letter", ["destination", "reason"], registry=r
        )
        self.duplicates = Counter(
            f"{p}_duplicates_dropped", "Alerts skipped: the same alert_id was delivered earlier in this run",
            ["destination"], registry=r,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            f"{p}_delivery_seconds", "First attempt to 2xx, retries and backoff included", ["destination"],
            buckets=DELIVERY_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_failures = Counter(
            f"{p}_commit_failures", "Offset commits that failed (the alert may be re-delivered)", ["destination"],
            registry=r,
        )  # fmt: skip
        self.up = Gauge(f"{p}_up", "1 while the forwarder's consume loop runs", ["destination"], registry=r)
