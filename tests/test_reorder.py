"""The reorder buffer: cross-topic skew never releases a later hour before an earlier one."""

from __future__ import annotations

import math
from types import SimpleNamespace as E

from vigil.worker.reorder import ReorderBuffer

H = 3600.0


def ev(topic: str, hour: float, offset: int, partition: int = 0) -> E:
    return E(topic=topic, partition=partition, offset=offset, event=E(time=hour * H))


def test_a_younger_chunk_with_earlier_events_bounds_the_release() -> None:
    buf = ReorderBuffer(min_hold_s=0.5, max_hold_s=10)
    buf.add([ev("vitals", h, h) for h in range(6)], now=0.0)  # vitals for hours 0..5 fetched first
    buf.add([ev("labs", h, h) for h in range(6)], now=0.3)  # labs for the same hours, a fetch later
    fresh = {0: (math.inf, 1.0)}  # every topic caught up, polled after both fetches
    first = buf.release(0.6, fresh)
    assert [e.event.time / H for e in first] == [0.0]  # only up to the labs chunk's earliest hour
    assert buf.min_offsets() == {("vitals", 0): 1, ("labs", 0): 0}  # nothing held is committed
    rest = buf.release(0.9, fresh)
    assert sorted(e.event.time / H for e in rest) == [0, *sorted([h for h in range(1, 6)] * 2)]
    assert buf.held == 0 and len(first) + len(rest) == 12


def test_lagging_topic_holds_events_beyond_its_newest_time() -> None:
    buf = ReorderBuffer(min_hold_s=0.0, max_hold_s=10)
    buf.add([ev("labs", h, h) for h in range(10)], now=0.0)
    # vitals is behind: only hour 3 fetched so far -> labs after hour 3 must wait
    out = buf.release(1.0, {0: (3 * H, math.inf)})
    assert [e.event.time / H for e in out] == [0, 1, 2, 3]
    assert buf.min_offsets() == {("labs", 0): 4}
    assert len(buf.release(1.0, {0: (math.inf, math.inf)})) == 6


def test_not_polled_since_arrival_is_not_caught_up() -> None:
    buf = ReorderBuffer(min_hold_s=0.0, max_hold_s=10)
    buf.add([ev("vitals", 1, 0)], now=5.0)
    assert buf.release(6.0, {0: (math.inf, 4.0)}) == []  # the last poll predates the fetch
    assert len(buf.release(6.0, {0: (math.inf, 5.5)})) == 1


def test_max_hold_bounds_latency_and_partitions_are_independent() -> None:
    buf = ReorderBuffer(min_hold_s=0.5, max_hold_s=2.0)
    buf.add([ev("vitals", 1, 0, partition=0), ev("vitals", 1, 0, partition=1)], now=0.0)
    assert len(buf.release(1.0, {1: (math.inf, math.inf)})) == 1  # partition 0 has no watermark yet
    assert len(buf.release(2.5, {})) == 1  # held past max_hold_s: released anyway
    buf.add([ev("vitals", 2, 1, partition=3)], now=3.0)
    buf.drop_partitions([3])
    assert buf.held == 0 and buf.min_offsets() == {}
