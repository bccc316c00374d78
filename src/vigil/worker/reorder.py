"""An event-time reorder buffer in front of the state, driven by per-partition watermarks.

Vitals, labs and ADT arrive on three co-partitioned topics. A fetch can deliver one topic's events
for hour *k+1* before another topic's events for hour *k* (and a discharge before the last vitals);
since a row is closed by the first event of a later hour, applying events as fetched would score
rows before all of their data arrived.

So events are held per partition *p* until the partition's **watermark** passes them. The watermark
is the minimum over the three topic-partitions of *p* of the newest event time fetched from it — or
+infinity for a topic-partition that is caught up (nothing more on the broker), so a sparse or idle
topic never stalls the others. "Caught up" is only as fresh as the last fetch response, so a chunk
is released only once every caught-up topic-partition of its partition has been polled after the
chunk arrived (``fresh_since``): data produced before the chunk was fetched is then visible.
Every event is also held at least ``min_hold_s`` (for events still in
flight from independent feeds) and at most ``max_hold_s`` (a bound on added latency when a lagging
topic stalls). Beyond that, an event for a closed row counts as late.

Offsets of held events are not committed (:meth:`ReorderBuffer.min_offsets`): after a crash they are
consumed again, so holding never loses an event.

>>> buf = ReorderBuffer(min_hold_s=0.5, max_hold_s=10.0)
>>> from types import SimpleNamespace as E
>>> buf.add([E(partition=0, topic="vitals", offset=7, event=E(time=100.0))], now=0.0)
>>> buf.release(now=1.0, watermarks={0: (99.0, 1.0)}), buf.held
([], 1)
>>> buf.release(now=1.0, watermarks={0: (100.0, -1.0)}), buf.held  # not polled since it arrived
([], 1)
>>> len(buf.release(now=1.0, watermarks={0: (100.0, 0.5)}))
1
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ReorderBuffer"]


@dataclass(slots=True)
class _Chunk:
    arrived: float
    max_time: float
    events: list[Any]
    low: dict[tuple[str, int], int]  # (topic, partition) -> lowest offset in the chunk


class ReorderBuffer:
    def __init__(self, min_hold_s: float, max_hold_s: float) -> None:
        self.min_hold_s = min_hold_s
        self.max_hold_s = max_hold_s
        self._q: dict[int, deque[_Chunk]] = {}
        self.held = 0

    def add(self, events: list[Any], now: float) -> None:
        """Hold a fetched batch (events of one fetch, per partition in fetch order)."""
        by_part: dict[int, list[Any]] = {}
        for ie in events:
            by_part.setdefault(ie.partition, []).append(ie)
        for p, evs in by_part.items():
            low: dict[tuple[str, int], int] = {}
            for ie in evs:
                key = (ie.topic, p)
                if key not in low or ie.offset < low[key]:
                    low[key] = ie.offset
            self._q.setdefault(p, deque()).append(_Chunk(now, max(ie.event.time for ie in evs), evs, low))
        self.held += len(events)

    def release(self, now: float, watermarks: dict[int, tuple[float, float]]) -> list[Any]:
        """Chunks whose events are all at or below their partition's watermark, fetched before the
        caught-up topics were last polled, and held at least ``min_hold_s`` — or held ``max_hold_s``
        already. ``watermarks``: partition -> (event-time watermark, fresh_since wall time);
        ``now=inf`` releases everything."""
        out: list[Any] = []
        for p, q in self._q.items():
            wm, fresh = watermarks.get(p, (-math.inf, -math.inf))
            while q:
                c = q[0]
                age = now - c.arrived
                if age >= self.max_hold_s or (c.max_time <= wm and c.arrived <= fresh and age >= self.min_hold_s):
                    out += q.popleft().events
                else:
                    break
        self.held -= len(out)
        return out

    def min_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the lowest offset still held (commit no further than this)."""
        low: dict[tuple[str, int], int] = {}
        for q in self._q.values():
            for c in q:
                for key, off in c.low.items():
                    if key not in low or off < low[key]:
                        low[key] = off
        return low

    def drop_partitions(self, parts: Iterable[int]) -> None:
        for p in parts:
            q = self._q.pop(p, None)
            if q:
                self.held -= sum(len(c.events) for c in q)
