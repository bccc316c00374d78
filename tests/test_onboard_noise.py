"""The paired stay bootstrap of the onboarding gate's utility comparison (:mod:`vigil.onboarding.noise`)."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.evaluation.utility import normalized_utility
from vigil.onboarding.noise import paired_utility_difference, resampled_differences


def _cohort(stays: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, stay_start, candidate score, base score, stay lengths): stays of 20-60 h, ~15 % septic."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 61, stays)
    labels, starts, cand, base = [], [], [], []
    for n in lengths:
        y = np.zeros(n, np.int8)
        if rng.random() < 0.15:
            y[rng.integers(8, n - 4):] = 1
        s = np.zeros(n, bool)
        s[0] = True
        risk = np.clip(0.15 + 0.6 * y + rng.normal(0, 0.2, n), 0, 1)
        labels.append(y), starts.append(s), cand.append(risk), base.append(np.clip(risk + rng.normal(0, 0.25, n), 0, 1))
    return (np.concatenate(labels), np.concatenate(starts), np.concatenate(cand), np.concatenate(base), lengths)


def test_resampled_differences_equal_the_utilities_of_the_resampled_stays_concatenated() -> None:
    y, s, pc, pb, lengths = _cohort(60, 1)
    cp, bp = pc >= 0.5, pb >= 0.5
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(2)
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5)
    got = resampled_differences(y, s, cp, bp, counts)
    for r in range(5):
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in range(60) for _ in range(counts[r, i])])
        starts = np.isin(rows, bounds[:-1])  # a stay's first row is where it starts, each time it is drawn
        want = normalized_utility(y[rows], cp[rows], starts) - normalized_utility(y[rows], bp[rows], starts)
        assert got[r] == pytest.approx(want, abs=1e-12)
    # no septic stay drawn: undefined, not zero
    no_septic = np.array([[0 if y[bounds[i]:bounds[i + 1]].any() else 1 for i in range(60)]])
    assert np.isnan(resampled_differences(y, s, cp, bp, no_septic)[0])


def test_the_difference_its_interval_and_how_often_the_rule_refuses() -> None:
    y, s, pc, pb, _ = _cohort(300, 3)
    cp, bp = pc >= 0.5, pb >= 0.5
    d = paired_utility_difference(y, s, cp, bp, margin=0.01, resamples=800, seed=4)
    assert d.difference == pytest.approx(normalized_utility(y, cp, s) - normalized_utility(y, bp, s), abs=1e-12)
    assert d.low < d.difference < d.high and d.level == 0.9 and d.resamples == 800 and d.stays == 300
    assert d.septic_stays == int(np.add.reduceat(y, np.flatnonzero(s)).astype(bool).sum())
    assert d.difference > 0.1 and d.share_refused < 0.05  # the less noisy score is clearly better
    # the same model on both sides: nothing to tell apart, the rule never refuses
    same = paired_utility_difference(y, s, cp, cp, margin=0.01, resamples=200)
    assert (same.difference, same.low, same.high, same.share_refused) == (0.0, 0.0, 0.0, 0.0)
    # ten times the stays (the same cohort repeated): the interval narrows by about sqrt(10)
    big = paired_utility_difference(np.tile(y, 10), np.tile(s, 10), np.tile(cp, 10), np.tile(bp, 10), margin=0.01,
                                    resamples=800, seed=4)  # fmt: skip
    assert big.difference == pytest.approx(d.difference)
    assert 2.0 < (d.high - d.low) / (big.high - big.low) < 4.5
    # swapped: the refusal share is the other tail
    swapped = paired_utility_difference(y, s, bp, cp, margin=0.01, resamples=800, seed=4)
    assert swapped.difference == pytest.approx(-d.difference) and swapped.share_refused > 0.95
    assert "cannot tell" not in d.describe() and "300 check stays" in d.describe()


def test_a_small_check_set_is_said_to_be_unable_to_tell() -> None:
    y, s, pc, _, _ = _cohort(40, 5)
    d = paired_utility_difference(y, s, pc >= 0.5, pc >= 0.45, margin=0.01, resamples=500)
    assert d.high - d.low > 0.02 and d.low <= d.difference <= d.high
    tells = not (d.low < -0.01 < d.high)
    assert ("cannot tell the two apart" in d.describe()) is not tells
    assert ("separate them" in d.describe()) is tells
