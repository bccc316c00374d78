"""Small Kafka helpers shared by the demo, the benchmarks and the tests (bounded waits, no sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from vigil.config import Settings

__all__ = ["produce_many", "produce_records", "read_topic", "TopicTail"]


async def produce_many(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Produce (key, value) records to ``topic`` (broker name) with acks=all; returns the count."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **settings.kafka.client_kwargs())
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await producer.stop()


async def produce_records(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> int:
    """Produce (topic, key, value) records in the given order with one producer (acks=all)."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **settings.kafka.client_kwargs())
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await producer.stop()


class TopicTail:
    """Reads a topic from the beginning (no consumer group) and keeps every record it has seen."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicTail:
        self._consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            **self.settings.kafka.client_kwargs(),
        )  # fmt: skip
        await self._consumer.start()
        parts = None
        deadline = time.monotonic() + 10
        while not parts:
            parts = self._consumer.partitions_for_topic(self.topic)
            if parts:
                break
            await self._consumer._client.force_metadata_update()  # noqa: SLF001
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
