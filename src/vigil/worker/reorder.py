"""Event-time ordering in front of the state: a reorder buffer released by per-partition watermarks,
and **pacing** (pausing the input topic-partitions that run ahead) so that ordering holds under any backlog.

Vitals, labs and ADT arrive on three co-partitioned topics. A fetch can deliver one topic's events
for hour *k+1* before another topic's events for hour *k* (and a discharge before the last vitals);
since a row is closed by the first event of a later hour, applying events as fetched would score
rows before all of their data arrived.

**Watermark.** Events are held per partition *p* until the partition's watermark passes them. The
watermark is the minimum over the input topic-partitions of *p* of the newest event time fetched from
it — or +infinity for a topic-partition that is **idle**: caught up (its position at the broker's high
watermark as of its last fetch response) *and* silent for ``idle_s`` of wall time (``quiet_since``: its
last fetched record, or for one that never delivered, the first record of its partition), so a sparse or
silent topic (``alert-acks``, ``adt``) never stalls the others for longer than that (Flink's source
idleness).

"Caught up" alone says nothing about a live feed that produces continuously: its consumer is at the high
watermark after nearly every fetch, and the next record (possibly for an earlier event time than what the
other topics already delivered — labs produced 100 ms behind vitals) is only on its way. So a caught-up
topic-partition that delivered a record less than ``idle_s`` ago still holds the watermark at its newest
event time; only its silence for ``idle_s`` makes it idle. A feed that is behind on the broker (not caught up)
always holds the watermark. ``idle_s`` is the largest gap between the records of one feed that is
tolerated without late events, whatever the feed's lag; a sparser feed that lags the others, or a feed
that pauses longer than ``idle_s`` and then resumes behind the others, delivers events for rows already
closed (counted late).

**Edge watermarks** (:mod:`vigil.worker.punctuation`). A topic-partition whose producers publish watermark
records contributes their minimum instead (no idleness, no freshness: the record follows, in the log, the data
it covers), and a partition whose inputs are all edge-ordered, idle or stalled needs **no minimum hold**
(``Plan.unheld``): its events leave as soon as the producers' progress passes them.

"Caught up" is only as fresh as the last fetch response, so a chunk is released past an idle
topic-partition only once that topic-partition has been polled after the chunk arrived (``fresh_since``):
data produced before the chunk was fetched is then visible. Every event is also held at least
``min_hold_s`` (a wall-clock tolerance: for feeds that are not in event-time order per topic-partition —
stays published one after another — and for sparse independent feeds; see docs/integrity.md). There is
**no wall-clock maximum hold**: a held event leaves only when the watermark passes it, however long a
backlog takes, so fetch speed can never reorder events.

**Pacing** (:func:`plan`, as Kafka Streams' and Flink's watermark alignment do). On a backlog the
sparse ``adt`` topic is fetched hundreds of event-hours ahead of ``vitals``/``labs``. A topic-partition
that is not caught up and whose newest fetched event time is more than ``slack_s`` ahead of its
partition's watermark is paused
(``consumer.pause``) and resumed once the watermark catches up; when a partition holds more than
``max_held`` events, every topic-partition of it that is ahead of the watermark at all is paused too.
The topic-partitions that define the watermark are never paused, so it always advances. Memory held
per partition is therefore at most ``max_held`` plus one fetch per topic-partition
(``max_partition_fetch_bytes``) — see docs/integrity.md.

**Stalled inputs** (:class:`Progress`). The only wall-clock escape: a topic-partition that is behind its
broker high watermark, not paused, and whose position has not advanced for ``stall_s`` stops holding the
others back (it no longer counts in the watermark) — counted (``vigil_reorder_stalled_inputs_total``) and
logged, never silent. Its events that arrive afterwards for rows already closed count as late.

Offsets of held events are not committed (:meth:`ReorderBuffer.min_offsets`): after a crash they are
consumed again, so holding never loses an event.

>>> buf = ReorderBuffer(min_hold_s=0.5)
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
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Input", "Plan", "Progress", "ReorderBuffer", "plan"]


@dataclass(slots=True)
class _Chunk:
    arrived: float
    min_time: float
    max_time: float
    events: list[Any]
    low: dict[tuple[str, int], int]  # (topic, partition) -> lowest offset in the chunk
    hold: bool = True  # False: every event came from an edge-ordered input (no minimum hold of its own)


def _chunk(arrived: float, events: list[Any], edged: dict[tuple[str, int], int] | None = None) -> _Chunk:
    low: dict[tuple[str, int], int] = {}
    lo_t, hi_t = math.inf, -math.inf
    for ie in events:
        key = (ie.topic, ie.partition)
        if key not in low or ie.offset < low[key]:
            low[key] = ie.offset
        t = ie.event.time
        lo_t = t if t < lo_t else lo_t
        hi_t = t if t > hi_t else hi_t
    hold = not edged or any(k not in edged or off <= edged[k] for k, off in low.items())
    return _Chunk(arrived, lo_t, hi_t, events, low, hold)


class ReorderBuffer:
    def __init__(self, min_hold_s: float) -> None:
        self.min_hold_s = min_hold_s
        self._q: dict[int, list[_Chunk]] = {}
        self._held: dict[int, int] = {}  # partition -> events held
        self.held = 0

    def add(self, events: list[Any], now: float, edged: dict[tuple[str, int], int] | None = None) -> None:
        """Hold a fetched batch (events of one fetch, per partition in fetch order); ``edged``: (topic, partition)
        -> the offset after which that input's events were edge-ordered when fetched (no minimum hold of their
        own)."""
        by_part: dict[int, list[Any]] = {}
        for ie in events:
            by_part.setdefault(ie.partition, []).append(ie)
        for p, evs in by_part.items():
            self._q.setdefault(p, []).append(_chunk(now, evs, edged))
            self._held[p] = self._held.get(p, 0) + len(evs)
        self.held += len(events)

    def wake(self, now: float, unheld: frozenset[int] | set[int] = frozenset()) -> float:
        """The next wall time after ``now`` at which a held chunk completes ``min_hold_s`` (inf: none);
        ``unheld``: partitions without a minimum hold (edge-ordered)."""
        if self.min_hold_s <= 0:
            return math.inf
        due = math.inf
        for p, q in self._q.items():
            for c in q:
                if p in unheld and not c.hold:
                    continue  # in arrival order: the first one still young is the next one due
                if c.arrived + self.min_hold_s > now:
                    due = min(due, c.arrived + self.min_hold_s)
                    break
        return due

    def held_by_partition(self) -> dict[int, int]:
        return dict(self._held)

    def release(self, now: float, watermarks: dict[int, tuple[float, float]],
                unheld: frozenset[int] | set[int] = frozenset()) -> list[Any]:  # fmt: skip
        """Events that can no longer be overtaken by an earlier event of their partition.

        A chunk is *eligible* once held ``min_hold_s`` and fetched before the caught-up topics were
        last polled. The partition's bound is the lowest of its watermark and the earliest event time
        in a chunk that is not eligible yet; eligible events at or below the bound are released.
        ``watermarks``: partition -> (event-time watermark, fresh_since wall time); ``now=inf`` with
        infinite watermarks releases everything (shutdown). ``unheld``: partitions whose chunks need no
        minimum hold (every input edge-ordered, idle or stalled: :class:`Plan`) unless they hold an event of an
        input that was not edge-ordered when fetched.
        """
        out: list[Any] = []
        for p, chunks in self._q.items():
            if not chunks:
                continue
            wm, fresh = watermarks.get(p, (-math.inf, -math.inf))
            free = p in unheld
            eligible, young = [], []
            for c in chunks:
                if (now - c.arrived >= self.min_hold_s or (free and not c.hold)) and c.arrived <= fresh:
                    eligible.append(c)
                else:
                    young.append(c)
            bound = min([wm, *(c.min_time for c in young)])
            kept: list[_Chunk] = []
            n = 0
            for c in eligible:
                if c.max_time <= bound:
                    out += c.events
                    n += len(c.events)
                elif c.min_time > bound:
                    kept.append(c)
                else:  # split: release what is safe, keep the rest (its offsets stay uncommitted)
                    go = [ie for ie in c.events if ie.event.time <= bound]
                    out += go
                    n += len(go)
                    rest = _chunk(c.arrived, [ie for ie in c.events if ie.event.time > bound])
                    rest.hold = c.hold
                    kept.append(rest)
            self._q[p] = sorted(kept + young, key=lambda c: c.arrived)
            self._held[p] -= n
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
            self._held.pop(p, None)
            if q:
                self.held -= sum(len(c.events) for c in q)


# -- pacing ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Input:
    """What the engine knows about one input topic-partition when it plans."""

    key: Hashable  # the consumer's TopicPartition
    partition: int
    newest: float  # newest event time fetched from it (-inf: nothing yet)
    caught_up: bool  # position at its high watermark (as of ``polled``)
    polled: float = -math.inf  # wall time of its last fetch response
    stalled: bool = False  # behind, fetchable, no progress for stall_s (see Progress)
    # wall time of its last fetched record (for one that never delivered: of its partition's first); -inf: idle
    quiet_since: float = -math.inf
    edge: float | None = None  # its producers' watermark (vigil.worker.punctuation); None: not edge-ordered


@dataclass(slots=True)
class Plan:
    watermarks: dict[int, tuple[float, float]]  # partition -> (event-time watermark, fresh_since)
    pause: set[Hashable]  # topic-partitions to pause (every other one runs)
    wake: float = math.inf  # wall time the next active caught-up input turns idle (the watermark may move)
    unheld: set[int] = field(default_factory=set)  # partitions needing no minimum hold (edge-ordered)


def plan(inputs: Iterable[Input], held: dict[int, int], slack_s: float, max_held: int, *,
         now: float = math.inf, idle_s: float = 0.0) -> Plan:  # fmt: skip
    """Watermarks per partition and the topic-partitions to pause.

    Watermark: min of ``newest`` over the topic-partitions that are neither idle (caught up and
    ``quiet_since`` at least ``idle_s`` before ``now``) nor stalled nor edge-ordered, and of ``edge`` over
    the edge-ordered ones that are not stalled (+inf if none); fresh_since: the oldest ``polled`` among the
    idle ones. ``unheld``: the partitions with an edge-ordered input and no input counted by ``newest``.
    Pause: a
    topic-partition that is not caught up and whose ``newest`` is more than ``slack_s`` ahead of its
    partition's watermark, or ahead at all when the partition holds more than ``max_held`` events.
    Those at the watermark are never paused, so the watermark always advances while input flows; a
    caught-up one is never paused either (nothing more to fetch, and its polls keep fresh_since fresh).
    """
    by_part: dict[int, list[Input]] = {}
    for i in inputs:
        by_part.setdefault(i.partition, []).append(i)
    marks: dict[int, tuple[float, float]] = {}
    pause: set[Hashable] = set()
    wake = math.inf
    unheld: set[int] = set()
    for p, ins in by_part.items():
        wm, fresh = math.inf, math.inf
        edged, inferred = False, False
        for i in ins:
            if i.edge is not None:  # its producers say how far it is: no idleness, no freshness needed
                if not i.stalled:
                    wm = min(wm, i.edge)
                    edged = True
            elif i.caught_up and now - i.quiet_since >= idle_s:  # idle: nothing on the broker, nothing lately
                fresh = min(fresh, i.polled)
            elif not i.stalled:
                wm = min(wm, i.newest)
                inferred = True
                if i.caught_up:  # a live feed between two records: it holds the watermark until idle
                    wake = min(wake, i.quiet_since + idle_s)
        marks[p] = (wm, fresh)
        if edged and not inferred:
            unheld.add(p)
        limit = wm if held.get(p, 0) > max_held else wm + slack_s
        for i in ins:
            # an edge-ordered input whose producers' watermark is the partition's must keep being read
            if not i.caught_up and i.newest > limit and (i.edge is None or i.edge > wm):
                pause.add(i.key)
    return Plan(marks, pause, wake, unheld)


class Progress:
    """Per topic-partition fetch progress, to tell a stalled input from one that is merely paced.

    ``update`` returns the keys that became stalled (behind, not paused, position unchanged for
    ``stall_s``) and those that recovered; :attr:`stalled` is the current set.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._since: dict[Hashable, tuple[int | None, float | None]] = {}  # key -> (position, waiting since)
        self.stalled: set[Hashable] = set()

    def update(self, key: Hashable, position: int | None, waiting: bool, now: float) -> bool:
        """Record ``key``'s position; ``waiting``: behind and fetchable (not caught up, not paused).
        Returns True if the key is newly stalled."""
        pos, since = self._since.get(key, (None, None))
        if not waiting or since is None or position != pos:  # the clock starts when it starts waiting
            self._since[key] = (position, now if waiting else None)
            self.stalled.discard(key)
            return False
        if now - since >= self.stall_s and key not in self.stalled:
            self.stalled.add(key)
            return True
        return False

    def clear(self) -> None:
        self._since.clear()
        self.stalled.clear()
