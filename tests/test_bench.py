"""The benchmark harness on tiny data: its correctness checks pass for honest contenders and fail a contender
that does not do the whole job. Correctness only: no timing is asserted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vigil.config import Settings
from vigil.tools.bench import (
    BenchFailure,
    contender_settings,
    expected_rows,
    latency_step,
    memory_child,
    n_scorers,
    run_contender,
    workload,
)

STAYS = 3


@pytest.fixture
def bench_base(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(time_window={"mode": "replay"})


def test_expected_rows_counts_closed_rows_and_skips_long_silences() -> None:
    assert expected_rows(np.array([1, 2, 3]), 72) == 3
    assert expected_rows(np.array([0, 2, 3]), 72) == 4  # the empty hour 1 is closed (and scored) too
    assert expected_rows(np.array([0, 100]), 72) == 2  # a silence over max_gap: only row 0, then row 100


def test_every_contender_produces_exactly_the_expected_scores(
    bench_base: Settings, sample_path: Path, tmp_path: Path
) -> None:
    wl = workload(sample_path, STAYS, bench_base)
    expected = wl.rows * n_scorers(bench_base)[0]
    assert wl.stays == STAYS and expected > 0
    for name in ("raw", "pipeline", "naive"):
        res = run_contender(name, contender_settings(bench_base, name), wl, expected, tmp_path)
        if name == "raw":
            assert res.events == len(wl.events)
        else:
            assert (res.scores, res.late, res.duplicates, res.dead_letters) == (expected, 0, 0, wl.invalid), name
        if name == "naive":  # a child process: its CPU is not read
            assert res.cpu is None
        else:  # read in the timed span (Linux /proc; 10 ms clock ticks: a span this short may read 0)
            assert res.cpu is not None and min(res.cpu.values()) >= 0, name
            assert res.cpu["total"] == pytest.approx(sum(res.cpu[k] for k in ("event_loop", "other_threads", "broker")))


def test_a_contender_that_restores_another_contenders_changelog_fails(
    bench_base: Settings, sample_path: Path, tmp_path: Path
) -> None:
    """The old benchmark's flaw, reproduced: a second pipeline on the same prefix (new group) restores the first
    one's changelog, finds every stay discharged and drops every event as late. The bench must refuse it."""
    wl = workload(sample_path, STAYS, bench_base)
    expected = wl.rows * n_scorers(bench_base)[0]
    s = contender_settings(bench_base, "pipeline")
    run_contender("pipeline", s, wl, expected, tmp_path)
    again = s.model_copy(update={"group_id": s.group_id + "-again"})
    with pytest.raises(BenchFailure, match="late events"):
        run_contender("pipeline", again, wl, expected, tmp_path, publish=False)


def test_latency_step_awaits_every_score_with_no_late_event(
    bench_base: Settings, sample_path: Path, tmp_path: Path
) -> None:
    wl = workload(sample_path, 2, bench_base)
    (row,) = latency_step(bench_base, wl, [2000.0], tmp_path, log=lambda _: None)
    assert row["scores"] == wl.rows * n_scorers(bench_base)[0] and row["late"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    # published as `vigil replay` does, with the producer's watermarks: consumed, none contradicted
    assert row["producer_watermarks"] is True and row["watermarks"] > 0 and row["watermark_violations"] == 0


def test_memory_step_holds_the_patients_it_reports() -> None:
    r = memory_child(200, 300)
    assert r["patients"] == 200 and r["dedupe_ids_per_patient"] == 256
    assert r["heap_bytes_per_patient"] > 0 and r["changelog_bytes_per_patient"] > 2 * 1024
