"""Producer side of edge watermarks: a producer that writes in event-time order says how far it has got.

After writing every record up to event time *W* (and before any record earlier than *W* could follow — it
never does, the producer is in event-time order), a :class:`Punctuator` writes ``{"v": 1, "source": ID,
"watermark": W}`` keyless to **every** partition of each of its topics, at most every ``interval_s`` of wall
time, one first watermark before its first record (so that a worker that still remembers a previous
producer's progress is not surprised) and a ``final`` one when it is done. The worker
(:mod:`vigil.worker.punctuation`) then orders those partitions by the producers' progress instead of a
wall-clock hold. ``vigil replay`` punctuates; so does the benchmark's paced publisher.

A producer must punctuate only what it writes in event-time order (``vigil replay`` merges the stays by event
time). A live feed whose messages can arrive late (labs reported hours after collection) must not claim a
watermark it cannot keep: the worker counts every record below a watermark
(``vigil_watermark_violations_total``) and falls back to its inferred ordering for that input.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from vigil.records import encode_watermark

__all__ = ["Punctuator"]


class Punctuator:
    def __init__(self, producer: Any, topics: list[str], *, source: str | None = None, interval_s: float = 0.05,
                 batcher: Any = None) -> None:  # fmt: skip
        self.producer = producer
        self.topics = topics
        self.source = source or f"producer-{uuid.uuid4().hex[:12]}"  # one id per producer process
        self.interval_s = interval_s
        self.batcher = batcher  # replay's _Batcher: its open batches are shipped first (order per partition)
        self.futures: list[asyncio.Future[Any]] = []
        self.sent = 0  # watermark records written
        self._parts: dict[str, list[int]] = {}
        self._last = -float("inf")

    async def start(self) -> None:
        for topic in self.topics:
            parts = await self.producer.partitions_for(topic)
            if not parts:
                msg = f"topic {topic!r} has no partitions (does it exist?)"
                raise RuntimeError(msg)
            self._parts[topic] = sorted(parts)

    async def maybe(self, t: float) -> None:
        """Everything up to event time ``t`` is written and nothing earlier will follow: write the watermark
        if ``interval_s`` has passed since the last one."""
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            await self.emit(t)

    async def emit(self, t: float, *, final: bool = False) -> None:
        if self.batcher is not None:
            await self.batcher.send_open()  # the data they cover goes first in each partition
        value = encode_watermark(self.source, datetime.fromtimestamp(t, UTC), final=final)
        for topic, parts in self._parts.items():
            for p in parts:
                self.futures.append(await self.producer.send(topic, value, partition=p))
        self.sent += sum(len(p) for p in self._parts.values())
        self._last = time.monotonic()

    async def settle(self) -> None:
        pending, self.futures = self.futures, []
        await asyncio.gather(*pending)
