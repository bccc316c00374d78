"""The reorder buffer and event-time pacing: cross-topic skew never releases a later hour before an
earlier one, however long a backlog takes and however unevenly the topics are fetched."""

from __future__ import annotations

import math
from types import SimpleNamespace as E

from vigil.worker.reorder import Input, Progress, ReorderBuffer, plan

H = 3600.0


def ev(topic: str, hour: float, offset: int, partition: int = 0) -> E:
    return E(topic=topic, partition=partition, offset=offset, event=E(time=hour * H))


def test_a_younger_chunk_with_earlier_events_bounds_the_release() -> None:
    buf = ReorderBuffer(min_hold_s=0.5)
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
    buf = ReorderBuffer(min_hold_s=0.0)
    buf.add([ev("labs", h, h) for h in range(10)], now=0.0)
    # vitals is behind: only hour 3 fetched so far -> labs after hour 3 must wait
    out = buf.release(1.0, {0: (3 * H, math.inf)})
    assert [e.event.time / H for e in out] == [0, 1, 2, 3]
    assert buf.min_offsets() == {("labs", 0): 4} and buf.held_by_partition() == {0: 6}
    assert len(buf.release(1.0, {0: (math.inf, math.inf)})) == 6
    assert buf.held_by_partition() == {0: 0}


def test_not_polled_since_arrival_is_not_caught_up() -> None:
    buf = ReorderBuffer(min_hold_s=0.0)
    buf.add([ev("vitals", 1, 0)], now=5.0)
    assert buf.release(6.0, {0: (math.inf, 4.0)}) == []  # the last poll predates the fetch
    assert len(buf.release(6.0, {0: (math.inf, 5.5)})) == 1


def test_no_wall_clock_release_however_long_events_are_held() -> None:
    """The old 10 s maximum hold released a chunk whole when a backlog took long; now only the
    watermark releases (a stalled input is handled by pacing, see Progress)."""
    buf = ReorderBuffer(min_hold_s=0.5)
    buf.add([ev("adt", 400, 0, partition=0), ev("vitals", 1, 0, partition=1)], now=0.0)
    assert buf.release(1e6, {0: (3 * H, math.inf)}) == []  # held a million seconds: still before the watermark
    assert len(buf.release(1e6, {1: (math.inf, math.inf)})) == 1  # partitions are independent
    assert buf.release(math.inf, {0: (399 * H, math.inf)}) == []  # shutdown applies only what is due
    buf.add([ev("vitals", 2, 1, partition=3)], now=3.0)
    buf.drop_partitions([0, 3])
    assert buf.held == 0 and buf.min_offsets() == {} and buf.held_by_partition() == {1: 0}


def _in(topic: str, newest_h: float, caught_up: bool = False, partition: int = 0, polled: float = 10.0,
        stalled: bool = False) -> Input:  # fmt: skip
    return Input((topic, partition), partition, newest_h * H, caught_up, polled, stalled)


def test_plan_pauses_what_runs_ahead_and_never_the_watermark() -> None:
    ins = [_in("vitals", 5), _in("labs", 5.1), _in("adt", 300), _in("alert-acks", -math.inf, caught_up=True)]
    p = plan(ins, held={}, slack_s=600.0, max_held=1000)
    assert p.watermarks == {0: (5 * H, 10.0)}
    assert p.pause == {("adt", 0)}  # labs is within the slack, vitals defines the watermark
    # over the held bound: anything ahead of the watermark at all is paused
    p = plan(ins, held={0: 1001}, slack_s=600.0, max_held=1000)
    assert p.pause == {("labs", 0), ("adt", 0)}
    # a caught-up input does not hold the others back and is never paused (nothing left to fetch)
    p = plan([_in("vitals", 5), _in("adt", 300, caught_up=True, polled=7.0)], held={0: 5000}, slack_s=0.0,
             max_held=1000)  # fmt: skip
    assert p.watermarks == {0: (5 * H, 7.0)} and p.pause == set()
    # nothing fetched yet from one input: the others wait for it (paused) rather than run ahead
    p = plan([_in("vitals", -math.inf), _in("labs", 2)], held={}, slack_s=600.0, max_held=1000)
    assert p.watermarks[0][0] == -math.inf and p.pause == {("labs", 0)}


def test_plan_a_stalled_input_stops_holding_the_others_back() -> None:
    ins = [_in("vitals", 5, stalled=True), _in("labs", 7), _in("adt", 9), _in("labs", 1, partition=1)]
    p = plan(ins, held={}, slack_s=600.0, max_held=1000)
    assert p.watermarks == {0: (7 * H, math.inf), 1: (1 * H, math.inf)}
    assert p.pause == {("adt", 0)}


def test_progress_tells_a_stalled_input_from_a_paced_one() -> None:
    pr = Progress(stall_s=30.0)
    assert not pr.update("vitals", 10, waiting=True, now=0.0)
    assert not pr.update("vitals", 10, waiting=True, now=29.0)
    assert pr.update("vitals", 10, waiting=True, now=30.0) and pr.stalled == {"vitals"}  # counted once
    assert not pr.update("vitals", 10, waiting=True, now=40.0) and pr.stalled == {"vitals"}
    assert not pr.update("vitals", 11, waiting=True, now=41.0) and pr.stalled == set()  # progresses again
    # paused (or caught up) for a long time is not a stall, and the clock restarts on resume
    for t in range(0, 100, 10):
        assert not pr.update("adt", 3, waiting=False, now=200.0 + t)
    assert not pr.update("adt", 3, waiting=True, now=300.0)
    assert not pr.update("adt", 3, waiting=True, now=329.0)
    assert pr.update("adt", 3, waiting=True, now=330.0)
    pr.clear()
    assert pr.stalled == set()


def test_paced_backlog_releases_in_event_time_order_with_bounded_memory() -> None:
    """A simulated consumer over a backlog: a sparse topic (adt, one event per 10 h) comes back 400
    records per fetch — thousands of event-hours — and the dense ones 50 per fetch (one per 6 min).
    With pacing, every release of a partition is at or after everything released before it (no event
    can be late), everything is released, and the held events stay bounded by the slack plus a fetch."""
    per_h = {"vitals": 10, "labs": 10, "adt": 0.1}
    fetch = {"vitals": 50, "labs": 50, "adt": 400}
    hours = 500
    logs = {t: [ev(t, i / r, i) for i in range(int(hours * r))] for t, r in per_h.items()}
    pos = dict.fromkeys(logs, 0)
    newest = dict.fromkeys(logs, -math.inf)
    buf, paused = ReorderBuffer(min_hold_s=0.0), set()
    released, high, peak, now = 0, -math.inf, 0, 0.0
    while released < sum(map(len, logs.values())):
        now += 0.01  # wall time: a backlog of any length; no wall-clock bound releases anything
        for t, log in logs.items():
            if t not in paused and pos[t] < len(log):
                got = log[pos[t] : pos[t] + fetch[t]]
                pos[t] += len(got)
                newest[t] = got[-1].event.time
                buf.add(got, now)
        ins = [Input(t, 0, newest[t], pos[t] >= len(logs[t]), now) for t in logs]
        p = plan(ins, buf.held_by_partition(), slack_s=H, max_held=10_000)
        paused = p.pause
        out = buf.release(now, p.watermarks)
        if out:
            assert min(e.event.time for e in out) >= high  # never behind an earlier release
            high = max(e.event.time for e in out)
        released += len(out)
        peak = max(peak, buf.held)
    assert buf.held == 0 and released == sum(map(len, logs.values()))
    assert peak <= 2 * 10 + 50 + 50 + 400  # one hour of slack (both dense topics) + one fetch per topic
