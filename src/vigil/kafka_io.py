"""The one Kafka module: client factory, admin, metadata and topic-reading helpers (bounded waits, no sleeps).

Every Kafka client of vigil is built here, from :class:`~vigil.config.Settings` (bootstrap servers and
security via ``settings.kafka.client_kwargs()``), with the options of its call site:

* :func:`consumer` — an ``AIOKafkaConsumer``; defaults: no consumer group, no auto-commit, from the earliest
  offset (a reader); a call site that consumes as a group passes ``group_id`` and its own options;
* :func:`producer` — an ``AIOKafkaProducer`` with ``acks="all"`` (every vigil producer waits for all
  in-sync replicas);
* :func:`admin` — an ``AIOKafkaAdminClient``;
* :func:`refresh_metadata`, :func:`wait_for_topic`, :func:`assign_all` — topic metadata (the one place
  that calls aiokafka's private metadata refresh);
* :func:`produce_many`, :func:`produce_records`, :class:`TopicTail`, :func:`read_topic`,
  :func:`read_at_least` — produce and read whole topics (the demo, the benchmarks and the tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiokafka.admin
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from vigil.config import Settings
from vigil.errors import ConfigError

__all__ = [
    "TopicTail",
    "admin",
    "assign_all",
    "consumer",
    "produce_many",
    "produce_records",
    "producer",
    "read_at_least",
    "read_topic",
    "refresh_metadata",
    "wait_for_topic",
]


def consumer(
    settings: Settings,
    *topics: str,
    group_id: str | None = None,
    enable_auto_commit: bool = False,
    auto_offset_reset: str = "earliest",
    **options: Any,
) -> AIOKafkaConsumer:
    """An (unstarted) consumer of ``topics`` (broker names; none: assign or subscribe later)."""
    return AIOKafkaConsumer(
        *topics, group_id=group_id, enable_auto_commit=enable_auto_commit, auto_offset_reset=auto_offset_reset,
        **options, **settings.kafka.client_kwargs(),
    )  # fmt: skip


def producer(settings: Settings, *, acks: str | int = "all", **options: Any) -> AIOKafkaProducer:
    """An (unstarted) producer; ``options`` are the call site's (``linger_ms``, ``max_batch_size``, ...)."""
    return AIOKafkaProducer(acks=acks, **options, **settings.kafka.client_kwargs())


def admin(settings: Settings | Mapping[str, Any]) -> aiokafka.admin.AIOKafkaAdminClient:
    """An (unstarted) admin client, from Settings or from ready client kwargs (``settings.kafka.client_kwargs()``)."""
    kw = settings.kafka.client_kwargs() if isinstance(settings, Settings) else dict(settings)
    return aiokafka.admin.AIOKafkaAdminClient(**kw)  # looked up per call (tests substitute it)


async def refresh_metadata(c: AIOKafkaConsumer) -> None:
    """Fetch fresh cluster metadata now (a topic created meanwhile becomes visible)."""
    await c._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh


async def wait_for_topic(c: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0,
                         hint: str = "create the catalogue: vigil topics create") -> set[int]:  # fmt: skip
    """The partition ids of ``topic``; ConfigError naming the fix (``hint``) if it does not appear in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (parts := c.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            msg = f"topic {topic} does not exist ({hint})"
            raise ConfigError(msg)
        await refresh_metadata(c)
        await asyncio.sleep(0.1)
    return set(parts)


async def assign_all(c: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer."""
    tps = [TopicPartition(topic, p) for p in sorted(await wait_for_topic(c, topic, timeout_s))]
    c.assign(tps)
    return tps


async def produce_many(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Produce (key, value) records to ``topic`` (broker name) with acks=all; returns the count."""
    p = producer(settings, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await p.stop()


async def produce_records(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> int:
    """Produce (topic, key, value) records in the given order with one producer (acks=all)."""
    p = producer(settings, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await p.stop()


class TopicTail:
    """Reads a topic from the beginning (no consumer group) and keeps every record it has seen."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicTail:
        self._consumer = consumer(self.settings)
        await self._consumer.start()
        parts = None
        deadline = time.monotonic() + 10
        while not parts:
            parts = self._consumer.partitions_for_topic(self.topic)
            if parts:
                break
            await refresh_metadata(self._consumer)
            if time.monotonic() > deadline:
                msg = f"topic {self.topic} does not exist"
                raise TimeoutError(msg)
            await asyncio.sleep(0.1)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def poll(self, timeout_ms: int = 200) -> list[Any]:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        new = [r for recs in batch.values() for r in recs]
        self.records.extend(new)
        return new

    async def wait_for(self, done: Callable[[list[Any]], bool], timeout_s: float = 30.0) -> list[Any]:
        """Poll until ``done(records)`` is true; raises TimeoutError with the count seen otherwise."""
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                msg = f"{self.topic}: condition not met after {timeout_s}s ({len(self.records)} records)"
                raise TimeoutError(msg)
            await self.poll()
        return self.records

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def read_topic(settings: Settings, topic: str, *, quiet_s: float = 1.0, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` until nothing new arrives for ``quiet_s`` seconds."""
    tail = await TopicTail(settings, topic).start()
    try:
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() - last_new < quiet_s and time.monotonic() < deadline:
            if await tail.poll():
                last_new = time.monotonic()
        return tail.records
    finally:
        await tail.stop()


async def read_at_least(settings: Settings, topic: str, n: int, timeout_s: float = 20.0) -> list[Any]:
    """The first records of ``topic`` (from the beginning) once there are at least ``n``; TimeoutError otherwise."""
    tail = await TopicTail(settings, topic).start()
    try:
        return await tail.wait_for(lambda recs: len(recs) >= n, timeout_s)
    finally:
        await tail.stop()
