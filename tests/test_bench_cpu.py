"""make bench's CPU accounting (vigil.tools.bench_cpu) and its section of docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from vigil.tools.bench_cpu import budget, snapshot, spent
from vigil.tools.bench_report import cpu_section

linux = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux /proc")


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@linux
def test_spent_splits_the_loop_thread_the_other_threads_and_a_second_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        a = snapshot(child.pid)
        _burn(0.2)
        done, leave = threading.Event(), threading.Event()

        def work() -> None:  # started after the first snapshot (counts from 0), alive at the second
            _burn(0.3)
            done.set()
            leave.wait(10)

        t = threading.Thread(target=work)
        t.start()
        done.wait(10)
        b = snapshot(child.pid)
        leave.set()
        t.join()
    finally:
        child.communicate(b"")
    got = spent(a, b)
    assert got is not None
    assert 0.15 <= got["event_loop"] <= 0.5  # clock ticks: 10 ms
    assert 0.25 <= got["other_threads"] <= 0.6
    assert 0 <= got["broker"] < 0.15  # the idle child
    assert got["total"] == pytest.approx(got["event_loop"] + got["other_threads"] + got["broker"], abs=1e-3)


def test_spent_of_an_unread_snapshot_is_none_and_an_unknown_broker_counts_zero() -> None:
    assert spent(None, {"loop": 1, "threads": {}, "broker": None}) is None
    a = {"loop": 7, "threads": {7: 1.0}, "broker": None}
    assert spent(a, {"loop": 7, "threads": {7: 1.5}, "broker": None}) == {
        "event_loop": 0.5, "other_threads": 0.0, "broker": 0.0, "total": 0.5}  # fmt: skip


def test_budget_is_the_span_at_the_ratio_times_the_cores() -> None:
    assert budget(0.7, cores=2) == {"ratio": 0.4, "seconds": 1.75, "core_seconds": 3.5}
    assert budget(1.0, cores=4, ratio=0.5) == {"ratio": 0.5, "seconds": 2.0, "core_seconds": 8.0}


def test_the_report_section_reads_the_medians_and_the_budget() -> None:
    def run(seconds: float, loop: float, other: float, broker: float) -> dict:
        return {"seconds": seconds, "cpu": {"event_loop": loop, "other_threads": other, "broker": broker,
                                            "total": loop + other + broker}}  # fmt: skip

    t = {"contenders": {
        "raw": {"runs": [run(0.6, 0.55, 0.0, 0.1), run(0.8, 0.7, 0.0, 0.2), run(0.7, 0.6, 0.0, 0.15)]},
        "pipeline": {"runs": [run(4.0, 3.0, 1.4, 0.3), run(4.4, 3.3, 1.5, 0.3), run(5.0, 3.6, 1.6, 0.4)]},
        "naive": {"runs": [{"seconds": 30.0, "cpu": None}]},
    }}  # fmt: skip
    text = cpu_section(t, cores=2)
    assert "| raw | 0.70 | 0.60 | 0.00 | 0.15 | 0.75 | 1.07 |" in text
    assert "| pipeline | 4.40 | 3.30 | 1.50 | 0.30 | 5.10 | 1.16 |" in text
    assert "naive" not in text  # nothing read: no row
    # 0.40 of the raw ceiling: 0.70 / 0.40 = 1.75 s, 3.50 core-seconds on 2 cores
    assert "span would be 1.75 s: 3.50 core-seconds on 2 cores" in text
    assert "It used 5.10 (1.5x)" in text and "3.30 s (1.9x the span)" in text
    assert cpu_section({"contenders": {"raw": {"runs": [{"seconds": 1.0}]}}}, cores=2) == ""
