"""Event-time watermarks without a wall-clock hold (issue 15): a caught-up input counts as idle only after
``idle_s`` of silence, so a live feed that produces continuously but lags the others
(labs produced 100 ms behind vitals) holds the watermark, and a silent one does not stall them."""

from __future__ import annotations

import math
from types import SimpleNamespace as E

from vigil.worker.reorder import Input, ReorderBuffer, plan

H = 3600.0


def test_a_caught_up_feed_holds_the_watermark_until_it_has_been_quiet_for_idle_s() -> None:
    def marks(quiet: float, now: float) -> tuple[float, float, float]:
        ins = [Input("vitals", 0, 8 * H, caught_up=False, polled=9.9),
               Input("labs", 0, 5 * H, caught_up=True, polled=9.95, quiet_since=quiet)]  # fmt: skip
        p = plan(ins, {}, slack_s=math.inf, max_held=10**6, now=now, idle_s=0.125)
        return (*p.watermarks[0], p.wake)

    assert marks(10.0, 10.0) == (5 * H, math.inf, 10.125)  # labs delivered just now: it holds
    assert marks(10.0, 10.0625) == (5 * H, math.inf, 10.125)  # quiet 62.5 ms: still holds
    assert marks(10.0, 10.125) == (8 * H, 9.95, math.inf)  # quiet idle_s: idle, and its last poll must be fresh
    # the default (no clock given): a caught-up input is idle at once, as before this change
    p = plan([Input("labs", 0, 5 * H, caught_up=True, polled=1.0)], {}, slack_s=1.0, max_held=10)
    assert p.watermarks == {0: (math.inf, 1.0)} and p.wake == math.inf


def test_min_hold_wake_is_the_next_hold_to_end() -> None:
    buf = ReorderBuffer(min_hold_s=0.5)
    assert buf.wake(0.0) == math.inf
    buf.add([E(topic="vitals", partition=0, offset=0, event=E(time=1.0))], now=1.0)
    buf.add([E(topic="vitals", partition=0, offset=1, event=E(time=2.0))], now=1.2)
    assert buf.wake(1.1) == 1.5 and buf.wake(1.5) == 1.7 and buf.wake(1.7) == math.inf
    assert ReorderBuffer(min_hold_s=0.0).wake(0.0) == math.inf


def _simulate(idle_s: float, labs_from: float) -> tuple[int, int]:
    """Two live feeds into one partition, fetched every 10 ms by a consumer that keeps up (caught up after
    every fetch): vitals one record per ms, labs one per 5 ms, each produced 100 ms of wall time after its
    event time (event time runs 60x wall time, as in a replay), from event time ``labs_from`` (x 60) on:
    -0.1 = the feed was already running (a steady lag), 0 = it starts 100 ms after vitals. Returns
    (released events, late events: released after an event of a later time)."""
    speed, lag = 60.0, 0.1
    log = [("vitals", i / 1000, i / 1000 * speed) for i in range(2000)]  # (topic, produced at, event time)
    log += [("labs", t + lag, t * speed) for t in (labs_from + i / 200 for i in range(400))]
    log.sort(key=lambda r: r[1])
    buf = ReorderBuffer(min_hold_s=0.0)
    newest = {"vitals": -math.inf, "labs": -math.inf}
    quiet: dict[str, float] = {}
    offset = {"vitals": 0, "labs": 0}
    pos, released, late, high, now = 0, 0, 0, -math.inf, -0.2
    while released < len(log):
        now = round(now + 0.01, 6)
        got = []
        while pos < len(log) and log[pos][1] <= now:
            t, _, et = log[pos]
            got.append(E(topic=t, partition=0, offset=offset[t], event=E(time=et)))
            offset[t] += 1
            newest[t] = max(newest[t], et)
            pos += 1
        buf.add(got, now)
        delivered = {e.topic for e in got}
        for t in newest:  # the engine's bookkeeping (Engine._quiet)
            if t in delivered or (delivered and t not in quiet):
                quiet[t] = now
        ins = [Input(t, 0, newest[t], True, now + 0.001, quiet_since=quiet.get(t, -math.inf)) for t in newest]
        p = plan(ins, buf.held_by_partition(), slack_s=math.inf, max_held=10**6, now=now + 0.002, idle_s=idle_s)
        out = buf.release(now + 0.002, p.watermarks)
        for e in sorted(out, key=lambda e: e.event.time):
            late += e.event.time < high
            high = max(high, e.event.time)
        released += len(out)
        assert now < 10, "the simulation did not drain"
    return released, late


def test_a_lagging_live_feed_holds_the_watermark_no_late_events() -> None:
    assert _simulate(idle_s=0.0, labs_from=-0.1)[1] > 0  # "caught up" alone: lagging labs records arrive late
    assert _simulate(idle_s=0.05, labs_from=-0.1) == (2400, 0)  # gaps of 5 ms < idle_s: none late, any lag


def test_a_feed_that_starts_later_than_idle_s_is_not_waited_for() -> None:
    """What idle_s does not cover: a feed silent for longer than idle_s (here: it starts 100 ms after the
    other) is idle meanwhile, and its first records are late; an idle_s above that gap covers it."""
    assert _simulate(idle_s=0.05, labs_from=0.0)[1] > 0
    assert _simulate(idle_s=0.15, labs_from=0.0) == (2400, 0)
