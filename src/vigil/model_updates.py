"""Publishing a serving change (an event of :func:`vigil.registry.update_event`) to the ``model-updates`` topic,
which every worker follows (``vigil models promote|rollback|shadow|unshadow``). Kept out of the registry: the
registry is the shared layer's view of the folder on disk; Kafka clients are built by :mod:`vigil.kafka_io`."""

from __future__ import annotations

from typing import Any

import orjson

from vigil import kafka_io
from vigil.config import Settings
from vigil.errors import ModelError

__all__ = ["publish_update"]


def publish_update(settings: Settings, event: dict[str, Any], timeout_s: float = 30.0) -> str:
    """Publish ``event`` to the ``model-updates`` topic with acks=all, keyed by the model name; returns
    the broker-side topic. Raises :class:`ModelError` naming the topic when it cannot."""
    import asyncio

    topic = settings.topic("model-updates")
    if not settings.kafka.bootstrap_servers:
        msg = "no Kafka bootstrap servers configured (--bootstrap or KAFKA_BOOTSTRAP_SERVERS)"
        raise ModelError(msg)

    async def send() -> None:
        producer = kafka_io.producer(settings, acks="all")
        try:
            await producer.start()
            await producer.send_and_wait(topic, orjson.dumps(event), key=str(event["name"]).encode())
        finally:
            await producer.stop()

    try:
        asyncio.run(asyncio.wait_for(send(), timeout_s))
    except Exception as exc:  # any client or network failure: one clear message
        msg = f"could not publish to {topic} at {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}"
        raise ModelError(msg) from exc
    return topic
