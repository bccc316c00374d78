"""``vigil train --on-drift``: block until the worker reports drift on ``model-drift``, then train.

A consumer group (default ``vigil-trainer-drift``) reads ``model-drift`` from its committed position
(the oldest retained event the first time), skips events of other models, and commits the event that
triggers a run before returning it, so each drift event starts at most one training run even if the
trainer restarts. Run it as a long-lived job or from a scheduler loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from vigil import kafka_io
from vigil.config import Settings

__all__ = ["wait_for_drift"]


async def wait_for_drift(
    settings: Settings, *, model: str | None = None, group: str = "vigil-trainer-drift", timeout_s: float | None = None
) -> dict[str, Any] | None:
    """The next unprocessed drift event (of ``model``, if given); None after ``timeout_s`` without one."""
    consumer = kafka_io.consumer(
        settings, settings.topic("model-drift"), group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await consumer.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while deadline is None or time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=100)
            for tp, records in batch.items():
                for r in records:
                    try:
                        event = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        continue
                    if model is None or event.get("model") == model:
                        await consumer.commit({tp: r.offset + 1})
                        return event  # type: ignore[no-any-return]
                await consumer.commit({tp: records[-1].offset + 1})
        return None
    finally:
        await consumer.stop()


def wait_for_drift_sync(settings: Settings, **kw: Any) -> dict[str, Any] | None:
    return asyncio.run(wait_for_drift(settings, **kw))
