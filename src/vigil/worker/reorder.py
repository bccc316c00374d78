"""A processing-time reorder buffer in front of the state.

Vitals, labs and ADT arrive on three topics; a fetch can deliver one topic's events for hour *k+1*
before another topic's events for hour *k* (and a discharge before the last vitals). Rows are closed
by the first event of a later hour, so such skew would score a row before all of its data arrived.
The buffer holds each fetched batch for ``hold_s`` wall seconds before it is applied; the batch
processor sorts each patient's released events by event time. Skew up to ``hold_s`` is absorbed;
beyond it, events count as late. The cost is ``hold_s`` of added latency.

Offsets of held events are not committed (see :meth:`ReorderBuffer.min_offsets`): after a crash they
are consumed again, so holding never loses an event.

>>> buf = ReorderBuffer(hold_s=1.0)
>>> buf.add(["a", "b"], now=10.0)
>>> buf.release(now=10.5), buf.release(now=11.0)
([], ['a', 'b'])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._q: deque[tuple[float, list[Any]]] = deque()
        self.held = 0

    def add(self, events: list[Any], now: float) -> None:
        if events:
            self._q.append((now, events))
            self.held += len(events)

    def release(self, now: float) -> list[Any]:
        """Events held for at least ``hold_s``, in arrival order."""
        out: list[Any] = []
        while self._q and self._q[0][0] <= now - self.hold_s:
            out += self._q.popleft()[1]
        self.held -= len(out)
        return out

    def min_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the lowest offset still held (commit no further than this)."""
        low: dict[tuple[str, int], int] = {}
        for _, events in self._q:
            for ie in events:
                key = (ie.topic, ie.partition)
                if key not in low or ie.offset < low[key]:
                    low[key] = ie.offset
        return low

    def drop_partitions(self, parts: Iterable[int]) -> None:
        gone = set(parts)
        kept: deque[tuple[float, list[Any]]] = deque()
        for t, events in self._q:
            keep = [ie for ie in events if ie.partition not in gone]
            if keep:
                kept.append((t, keep))
        self._q = kept
        self.held = sum(len(e) for _, e in kept)
