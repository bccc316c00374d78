"""Kafka plumbing shared by the subscribers: wait for a topic, assign all of its partitions."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from vigil.errors import ConfigError

__all__ = ["wait_for_topic", "assign_all"]


async def wait_for_topic(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """The partition ids of ``topic``; ConfigError naming the fix if it does not appear within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (parts := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            msg = f"topic {topic} does not exist (create the catalogue: vigil topics create)"
            raise ConfigError(msg)
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
        await asyncio.sleep(0.1)
    return set(parts)


async def assign_all(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer."""
    tps = [TopicPartition(topic, p) for p in sorted(await wait_for_topic(consumer, topic, timeout_s))]
    consumer.assign(tps)
    return tps
