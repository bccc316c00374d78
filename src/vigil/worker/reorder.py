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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ReorderBuffer"]


@dataclass(slots=True)
class _Chunk:
    arrived: float
    min_time: float
    max_time: float
    events: list[Any]
    low: dict[tuple[str, int], int]  # (topic, partition) -> lowest offset in the chunk


def _chunk(arrived: float, events: list[Any]) -> _Chunk:
    low: dict[tuple[str, int], int] = {}
    lo_t, hi_t = math.inf, -math.inf
    for ie in events:
        key = (ie.topic, ie.partition)
        if key not in low or ie.offset < low[key]:
            low[key] = ie.offset
        t = ie.event.time
        lo_t = t if t < lo_t else lo_t
        hi_t = t if t > hi_t else hi_t
    return _Chunk(arrived, lo_t, hi_t, events, low)


class ReorderBuffer:
    def __init__(self, min_hold_s: float, max_hold_s: float) -> None:
        self.min_hold_s = min_hold_s
        self.max_hold_s = max_hold_s
        self._q: dict[int, list[_Chunk]] = {}
        self.held = 0

    def add(self, events: list[Any], now: float) -> None:
        """Hold a fetched batch (events of one fetch, per partition in fetch order)."""
        by_part: dict[int, list[Any]] = {}
        for ie in events:
            by_part.setdefault(ie.partition, []).append(ie)
        for p, evs in by_part.items():
            self._q.setdefault(p, []).append(_chunk(now, evs))
        self.held += len(events)

    def release(self, now: float, watermarks: dict[int, tuple[float, float]]) -> list[Any]:
        """Events that can no longer be overtaken by an earlier event of their partition.

        A chunk is *eligible* once held ``min_hold_s`` and fetched before the caught-up topics were
        last polled. The partition's bound is the lowest of its watermark and the earliest event time
        in a chunk that is not eligible yet; eligible events at or below the bound are released.
        Chunks held ``max_hold_s`` are released whole (bounded latency). ``watermarks``: partition ->
        (event-time watermark, fresh_since wall time); ``now=inf`` releases everything.
        """
        out: list[Any] = []
        for p, chunks in self._q.items():
            if not chunks:
                continue
            wm, fresh = watermarks.get(p, (-math.inf, -math.inf))
            eligible, young = [], []
            for c in chunks:
                age = now - c.arrived
                if age >= self.max_hold_s:
                    out += c.events
                elif age >= self.min_hold_s and c.arrived <= fresh:
                    eligible.append(c)
                else:
                    young.append(c)
            bound = min([wm, *(c.min_time for c in young)])
            kept: list[_Chunk] = []
            for c in eligible:
                if c.max_time <= bound:
                    out += c.events
                elif c.min_time > bound:
                    kept.append(c)
                else:  # split: release what is safe, keep the rest (its offsets stay uncommitted)
                    go = [ie for ie in c.events if ie.event.time <= bound]
                    out += go
                    kept.append(_chunk(c.arrived, [ie for ie in c.events if ie.event.time > bound]))
            self._q[p] = sorted(kept + young, key=lambda c: c.arrived)
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
