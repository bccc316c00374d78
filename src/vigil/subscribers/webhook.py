"""``vigil alerts webhook URL``: forward every alert to a subscriber's endpoint, signed, at least once, in order.

Each alert is POSTed as the exact JSON bytes of the ``alerts`` record with ``Content-Type: application/json``,
``Idempotency-Key`` and ``X-Vigil-Alert-Id`` (the deterministic ``alert_id``), ``X-Vigil-Timestamp`` (Unix
seconds of the attempt) and ``X-Vigil-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>``
(:mod:`vigil.subscribers.signing`).

**Receiving.** Read the raw body bytes; reject unless ``verify_signature(secret, body, header)`` holds
(constant-time); de-duplicate on ``Idempotency-Key`` (a delivery may be repeated after a crash or a timeout);
answer 2xx once the alert is stored. 5xx, 408, 429 (``Retry-After`` honoured) and timeouts are retried; any
other 4xx is final and the alert goes to ``alerts-webhook-dead-letter``.

**Guarantees.** One Kafka consumer group per destination (``webhook.group_prefix`` + destination name, or
``--group``). Alerts are handled one at a time, in offset order per partition, and an offset is committed only
after its alert was delivered (2xx) or written to the dead-letter topic (acks=all). A restart with the same
group continues at the first unconfirmed alert; a new group commits its starting position as soon as it gets its
partitions, so an alert produced while it was down is never skipped. Within one run, an ``alert_id`` delivered
recently (``webhook.dedupe_window``) is not sent again. Each alert takes at most ``max_attempts`` attempts of
``timeout_s`` each, with waits capped at ``backoff_max_s``: the forwarder never blocks on one alert forever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from vigil import kafka_io
from vigil.config import Settings
from vigil.errors import ConfigError
from vigil.kafka_io import wait_for_topic
from vigil.logs import trace
from vigil.subscribers.delivery import (
    Attempt,
    Deliverer,
    Outcome,
    RecentIds,
    RetryPolicy,
    check_url,
    destination_name,
    redact_url,
    stop_aware_sleep,
)
from vigil.subscribers.metrics import WebhookMetrics
from vigil.subscribers.tail import parse_alert

__all__ = ["WebhookForwarder", "dead_letter_value", "DEAD_LETTER_TOPIC", "USER_AGENT"]

log = logging.getLogger(__name__)

DEAD_LETTER_TOPIC = "alerts-webhook-dead-letter"
USER_AGENT = "vigil-webhook/1"
_NAME_OK = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ALERT_ID_OK = re.compile(r"[\x21-\x7e]{1,128}")  # it becomes a header value: printable ASCII, no spaces


def dead_letter_value(
    rec: ConsumerRecord[bytes, bytes], alert: Mapping[str, Any] | None, alert_id: str | None, outcome: Outcome,
    *, destination: str, name: str,
) -> bytes:  # fmt: skip
    """The ``alerts-webhook-dead-letter`` record of an alert given up (schema: alerts-webhook-dead-letter)."""
    doc = {
        "v": 1, "reason": outcome.last.reason, "destination": destination, "destination_name": name,
        "alert_id": alert_id, "attempts": outcome.attempts, "status_code": outcome.last.status,
        "last_error": outcome.last.error[:1024], "source_topic": rec.topic, "partition": rec.partition,
        "offset": rec.offset, "alert": dict(alert) if alert is not None else None,
        "raw_b64": base64.b64encode(rec.value).decode("ascii") if rec.value is not None else None,
        "first_attempt_at": outcome.first_attempt_at.isoformat(), "failed_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    return orjson.dumps(doc)


@dataclass(slots=True)
class _Clients:
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    deliverer: Deliverer
    stop: asyncio.Event


class WebhookForwarder:
    """Forwards the ``alerts`` topic to one URL (see the module docstring for the guarantees).

    ``name`` is the destination's short name (metric label, default group suffix; default: host + hash of the
    URL). ``from_beginning`` only matters for a group with no committed offsets: start at the oldest retained
    alert instead of at the alerts produced from now on. ``ready`` is set once partitions are assigned and
    their starting positions committed.
    """

    def __init__(
        self, settings: Settings, url: str, *, secret: bytes | str, name: str | None = None,
        group_id: str | None = None, from_beginning: bool = False, metrics: WebhookMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        check_url(url)
        if not secret:
            msg = "a webhook secret is required (VIGIL_WEBHOOK__SECRET, or the variable named by --secret-env)"
            raise ConfigError(msg)
        if name is not None and not _NAME_OK.fullmatch(name):
            msg = f"destination name must be 1-64 characters of A-Z a-z 0-9 . _ -, got {name!r}"
            raise ConfigError(msg)
        self.settings, self.url = settings, url
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.destination = redact_url(url)
        self.name = name or destination_name(url)
        self.group_id = group_id or settings.webhook.group_prefix + self.name
        self.from_beginning = from_beginning
        self.policy = RetryPolicy.from_settings(settings.webhook)
        self.metrics = metrics or WebhookMetrics()
        self.recent = RecentIds(settings.webhook.dedupe_window)
        self.rng = rng or random.Random()  # noqa: S311 - jitter
        self.ready = asyncio.Event()
        self._checked: set[TopicPartition] = set()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Forward alerts until ``stop`` is set; an alert in progress at the stop stays unconfirmed."""
        log.info("forwarding %s to %s as %s (group %s)", self.settings.topic("alerts"), self.destination,
                 self.name, self.group_id)  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            consumer = await self._start_consumer(stack)
            producer = kafka_io.producer(self.settings)
            await producer.start()
            stack.push_async_callback(producer.stop)
            session = await stack.enter_async_context(aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}))
            sleep = functools.partial(stop_aware_sleep, stop)
            deliverer = Deliverer(session, self.url, self.secret, self.policy, sleep=sleep, on_attempt=self._on_attempt,
                                  rng=self.rng)  # fmt: skip
            up = self.metrics.up.labels(destination=self.name)
            up.set(1)
            try:
                await self._loop(_Clients(consumer, producer, deliverer, stop))
            finally:
                up.set(0)
        log.info("webhook forwarder for %s stopped", self.name)

    def _max_poll_interval_ms(self) -> int:
        # One alert may take every attempt and every wait; the group must not evict us meanwhile.
        p = self.policy
        worst_s = p.max_attempts * (p.timeout_s + p.cap_s) + 60.0
        return int(max(300.0, 2 * worst_s) * 1000)

    async def _start_consumer(self, stack: contextlib.AsyncExitStack) -> AIOKafkaConsumer:
        ws = self.settings.webhook
        consumer = kafka_io.consumer(
            self.settings, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            max_poll_interval_ms=self._max_poll_interval_ms(), session_timeout_ms=ws.session_timeout_ms,
            heartbeat_interval_ms=max(100, ws.session_timeout_ms // 10),
        )  # fmt: skip
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        topic = self.settings.topic("alerts")
        await wait_for_topic(consumer, topic)
        await wait_for_topic(consumer, self.settings.topic(DEAD_LETTER_TOPIC))
        consumer.subscribe([topic])
        return consumer

    # ------------------------------------------------------------------------------------------ the loop
    async def _loop(self, c: _Clients) -> None:
        while not c.stop.is_set():
            await self._commit_starting_positions(c)
            batch = await c.consumer.getmany(timeout_ms=200, max_records=1)  # one at a time: bounded poll gap
            for tp, records in batch.items():
                for rec in records:
                    if c.stop.is_set() or tp not in c.consumer.assignment():
                        break
                    if not await self._handle(c, rec):
                        return  # stopping in the middle of an alert: it stays unconfirmed
                    await self._commit(c, tp, rec.offset + 1)

    async def _commit_starting_positions(self, c: _Clients) -> None:
        """Commit the position of newly assigned partitions that have no committed offset yet."""
        assigned = set(c.consumer.assignment())
        for tp in sorted(assigned - self._checked):
            if await c.consumer.committed(tp) is None:
                await self._commit(c, tp, await c.consumer.position(tp))
        self._checked = assigned
        if assigned:
            self.ready.set()

    async def _commit(self, c: _Clients, tp: TopicPartition, offset: int) -> None:
        try:
            await c.consumer.commit({tp: offset})
        except KafkaError as exc:  # rebalanced away or broker trouble: the next commit (or owner) covers it
            self.metrics.commit_failures.labels(destination=self.name).inc()
            log.warning("offset commit for %s[%d] failed (%s); the alert may be delivered again", tp.topic,
                        tp.partition, type(exc).__name__)  # fmt: skip

    # ------------------------------------------------------------------------------------------ one alert
    async def _handle(self, c: _Clients, rec: ConsumerRecord[bytes, bytes]) -> bool:
        """Deliver or dead-letter one record; False when a stop interrupted it (do not commit)."""
        alert = parse_alert(rec.value)
        alert_id = alert.get("alert_id") if alert is not None else None
        if not isinstance(alert_id, str) or not _ALERT_ID_OK.fullmatch(alert_id):
            invalid = Attempt(None, "invalid_alert", "not a JSON object with an alert_id of 1-128 printable ASCII")
            return await self._dead_letter(c, rec, alert, None, Outcome(False, False, 0, invalid, datetime.now(UTC), 0))
        with trace(alert_id):  # the delivery's log records carry the alert id (a hash, no patient data)
            return await self._deliver(c, rec, alert, alert_id)

    async def _deliver(self, c: _Clients, rec: ConsumerRecord[bytes, bytes], alert: Mapping[str, Any] | None,
                       alert_id: str) -> bool:  # fmt: skip
        if alert_id in self.recent:
            self.metrics.duplicates.labels(destination=self.name).inc()
            log.info("alert %s already delivered to %s in this run; skipped", alert_id, self.name)
            return True
        outcome = await c.deliverer.deliver(rec.value, alert_id)
        if outcome.stopped:
            return False
        if outcome.delivered:
            self.recent.add(alert_id)
            self.metrics.delivered.labels(destination=self.name).inc()
            self.metrics.delivery_seconds.labels(destination=self.name).observe(outcome.seconds)
            return True
        return await self._dead_letter(c, rec, alert, alert_id, outcome)

    def _on_attempt(self, attempt: Attempt, delay: float | None) -> None:
        if attempt.ok or attempt.reason is None:
            return
        self.metrics.failed_attempts.labels(destination=self.name, reason=attempt.reason).inc()
        if delay is not None:
            self.metrics.retries.labels(destination=self.name, reason=attempt.reason).inc()
            log.info("delivery to %s failed (%s, status %s); retrying in %.2fs", self.name, attempt.reason,
                     attempt.status, delay)  # fmt: skip

    async def _dead_letter(self, c: _Clients, rec: ConsumerRecord[bytes, bytes], alert: Mapping[str, Any] | None,
                           alert_id: str | None, outcome: Outcome) -> bool:  # fmt: skip
        """Write the alert to the dead-letter topic (retrying until the broker acks or a stop); True when done."""
        value = dead_letter_value(rec, alert, alert_id, outcome, destination=self.destination, name=self.name)
        topic, wait = self.settings.topic(DEAD_LETTER_TOPIC), self.policy.base_s
        while True:
            try:
                await c.producer.send_and_wait(topic, value, key=rec.key)
                break
            except KafkaError as exc:
                log.error("cannot write to %s (%s); retrying in %.1fs", topic, type(exc).__name__, wait)
                if not await stop_aware_sleep(c.stop, wait):
                    return False
                wait = min(self.policy.cap_s, wait * 2)
        reason = outcome.last.reason or "unknown"
        self.metrics.dead_lettered.labels(destination=self.name, reason=reason).inc()
        log.warning("alert %s not delivered to %s after %d attempt(s) (%s, status %s): sent to %s", alert_id,
                    self.name, outcome.attempts, reason, outcome.last.status, topic)  # fmt: skip
        return True
