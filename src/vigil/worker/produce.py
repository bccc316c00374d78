"""Batch production: a batch's output records packed into one record batch per topic-partition.

``AIOKafkaProducer.send()`` costs tens of microseconds per record (a coroutine, metadata checks, the
pure-Python murmur2 partitioner, an accumulator future). The worker emits thousands of records per batch and
awaits them all anyway, so :class:`BatchSender` appends them to ``create_batch()`` builders itself, one per
topic-partition, ships each builder with ``send_batch`` and returns the futures to await.

Partitioning is the producer's own: a keyed record goes to ``DefaultPartitioner`` (murmur2, like the Java
client) over the topic's partitions, computed once per distinct key and cached; an explicit partition wins; an
unkeyed record gets a random available partition (as ``send()`` does). Record order within a partition is
the order given. A record too large for an empty batch goes through ``send()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from vigil.config import Settings
from vigil.worker.batch import Outputs

__all__ = ["BatchSender", "OutRecord", "output_records"]

OutRecord = tuple[str, bytes | None, bytes | None, int | None]  # (topic, key, value, partition or None)

_KEY_CACHE = 1 << 16  # keys remembered per topic (patients); the cache is dropped when it grows past this


class BatchSender:
    """Sends records in per-partition batches through one started ``AIOKafkaProducer``."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._parts: dict[str, tuple[list[int], list[int]]] = {}  # topic -> (all, available) partitions
        self._by_key: dict[str, dict[bytes, int]] = {}

    async def _partitions(self, topic: str) -> tuple[list[int], list[int]]:
        got = self._parts.get(topic)
        if got is None:
            parts = await self._producer.partitions_for(topic)
            if not parts:
                msg = f"topic {topic!r} has no partitions (does it exist?)"
                raise RuntimeError(msg)
            cluster = self._producer.client.cluster
            available = sorted(cluster.available_partitions_for_topic(topic)) or sorted(parts)
            got = self._parts[topic] = (sorted(parts), available)
        return got

    async def partition(self, topic: str, key: bytes | None) -> int:
        all_parts, available = await self._partitions(topic)
        if key is None:
            return self._partitioner(None, all_parts, available)  # type: ignore[no-any-return]
        cache = self._by_key.setdefault(topic, {})
        p = cache.get(key)
        if p is None:
            if len(cache) >= _KEY_CACHE:
                cache.clear()
            p = cache[key] = self._partitioner(key, all_parts, available)
        return p

    async def send(self, records: Iterable[OutRecord]) -> list[asyncio.Future[Any]]:
        """Append every record to its partition's open batch and ship the batches; returns the delivery
        futures (one per shipped batch, plus one per oversized record), to be awaited by the caller."""
        producer = self._producer
        futs: list[asyncio.Future[Any]] = []
        open_: dict[tuple[str, int], Any] = {}
        by_key = self._by_key
        for topic, key, value, part in records:
            if part is not None:
                p = part
            else:  # the cached partition of a known key without a coroutine per record; else the full lookup
                known = by_key.get(topic)
                hit = known.get(key) if known is not None and key is not None else None
                p = hit if hit is not None else await self.partition(topic, key)
            tp = (topic, p)
            batch = open_.get(tp)
            if batch is None:
                batch = open_[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: ship it, open another
                batch.close()
                futs.append(await producer.send_batch(batch, topic, partition=p))
                batch = open_[tp] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # larger than a batch
                    futs.append(await producer.send(topic, value, key=key, partition=p))
        for (topic, p), batch in open_.items():
            if batch.record_count():
                batch.close()
                futs.append(await producer.send_batch(batch, topic, partition=p))
        return futs


def output_records(
    s: Settings, out: Outputs, dead: list[tuple[bytes | None, bytes]], changelog: str
) -> list[OutRecord]:
    """A batch's records in the worker's order: scores, drift, shadow scores, alerts, dead letters, then the
    changelog of every touched patient (explicit partition: the input partition)."""
    recs: list[OutRecord] = []
    t = s.topic("scores")
    recs += [(t, k.encode(), v, None) for k, v in out.scores]
    if out.drift:
        t = s.topic("model-drift")
        recs += [(t, k.encode(), v, None) for k, v in out.drift]
    if out.shadow_scores:
        t = s.topic("scores-shadow")
        recs += [(t, k.encode(), v, None) for k, v in out.shadow_scores]
    t = s.topic("alerts")
    recs += [(t, k.encode(), v, None) for k, v in out.alerts]
    t = s.topic("dead-letter")
    recs += [(t, k, v, None) for k, v in dead]
    t = s.topic(changelog)
    recs += [(t, k.encode(), v, p) for p, k, v in out.changelog]
    return recs
