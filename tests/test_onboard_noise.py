"""The paired stay bootstrap of the onboarding gate's comparisons (:mod:`vigil.onboarding.noise`)."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.evaluation.metrics import auroc
from vigil.evaluation.utility import normalized_utility
from vigil.onboarding.noise import CheckNoise, paired_check_noise, resampled_auroc_differences, resampled_differences


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


def test_resampled_differences_equal_the_metrics_of_the_resampled_stays_concatenated() -> None:
    y, s, pc, pb, lengths = _cohort(60, 1)
    pb = np.round(pb, 1)  # ties in the base's scores: mid-ranks
    cp, bp = pc >= 0.5, pb >= 0.5
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(2)
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5)
    got = resampled_differences(y, s, cp, bp, counts)
    got_auc = resampled_auroc_differences(y, s, pc, pb, counts)
    for r in range(5):
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in range(60) for _ in range(counts[r, i])])
        starts = np.isin(rows, bounds[:-1])  # a stay's first row is where it starts, each time it is drawn
        want = normalized_utility(y[rows], cp[rows], starts) - normalized_utility(y[rows], bp[rows], starts)
        assert got[r] == pytest.approx(want, abs=1e-12)
        assert got_auc[r] == pytest.approx(auroc(y[rows], pc[rows]) - auroc(y[rows], pb[rows]), abs=1e-12)
    # no septic stay drawn: undefined, not zero
    no_septic = np.array([[0 if y[bounds[i]:bounds[i + 1]].any() else 1 for i in range(60)]])
    assert np.isnan(resampled_differences(y, s, cp, bp, no_septic)[0])
    assert np.isnan(resampled_auroc_differences(y, s, pc, pb, no_septic)[0])


def test_the_differences_their_intervals_and_how_often_the_rules_refuse() -> None:
    y, s, pc, pb, _ = _cohort(300, 3)
    n = paired_check_noise(y, s, pc, pc >= 0.5, pb, pb >= 0.5, margin_utility=0.01, margin_auroc=0.01, resamples=800,
                           seed=4)  # fmt: skip
    u, a = n.utility, n.auroc
    assert u.difference == pytest.approx(normalized_utility(y, pc >= 0.5, s) - normalized_utility(y, pb >= 0.5, s))
    assert a.difference == pytest.approx(auroc(y, pc) - auroc(y, pb), abs=1e-12)
    assert n.level == 0.9 and n.resamples == 800 and n.stays == 300
    assert n.septic_stays == int(np.add.reduceat(y, np.flatnonzero(s)).astype(bool).sum())
    for d in (u, a):  # the less noisy score is clearly better by both rules
        assert d.low < d.difference < d.high and d.difference > 0.05 and d.share_refused < 0.05
    # the same version on both sides: nothing to tell apart, neither rule refuses
    same = paired_check_noise(y, s, pc, pc >= 0.5, pc, pc >= 0.5, margin_utility=0.01, margin_auroc=0.01, resamples=200)
    for d in (same.utility, same.auroc):
        assert (d.difference, d.low, d.high, d.share_refused) == (0.0, 0.0, 0.0, 0.0)
    # ten times the stays (the same cohort repeated): the intervals narrow by about sqrt(10)
    big = paired_check_noise(np.tile(y, 10), np.tile(s, 10), np.tile(pc, 10), np.tile(pc, 10) >= 0.5, np.tile(pb, 10),
                             np.tile(pb, 10) >= 0.5,
                             margin_utility=0.01, margin_auroc=0.01, resamples=800, seed=4)  # fmt: skip
    assert big.utility.difference == pytest.approx(u.difference)
    assert 2.0 < (u.high - u.low) / (big.utility.high - big.utility.low) < 4.5
    assert 2.0 < (a.high - a.low) / (big.auroc.high - big.auroc.low) < 4.5
    # swapped: the refusal share is the other tail
    swapped = paired_check_noise(y, s, pb, pb >= 0.5, pc, pc >= 0.5, margin_utility=0.01, margin_auroc=0.01,
                                 resamples=800, seed=4)  # fmt: skip
    assert swapped.utility.difference == pytest.approx(-u.difference) and swapped.utility.share_refused > 0.95
    assert swapped.auroc.share_refused > 0.95
    assert "cannot tell" not in n.describe() and "300 check stays" in n.describe()
    assert CheckNoise.from_dict(n.as_dict()) == n


def test_a_small_check_set_is_said_to_be_unable_to_tell() -> None:
    y, s, pc, _, _ = _cohort(40, 5)
    n = paired_check_noise(y, s, pc, pc >= 0.5, pc, pc >= 0.45, margin_utility=0.01, margin_auroc=0.01, resamples=500)
    d = n.utility
    assert d.high - d.low > 0.02 and d.low <= d.difference <= d.high
    tells = not (d.low < -0.01 < d.high)  # the AUROC is the same score's: [0, 0], it tells
    assert ("cannot tell the two apart" in n.describe()) is not tells
    assert ("separate them" in n.describe()) is tells


def test_the_cross_fitted_auroc_counts_pairs_within_a_fold_only() -> None:
    from vigil.onboarding.noise import within_group_auroc

    y, s, pc, pb, lengths = _cohort(90, 7)
    stay = np.repeat(np.arange(90), lengths)
    fold = stay % 3
    # three versions that each rank as the candidate, on their own scales: pooled, the ranking is scrambled
    scaled = np.where(fold == 0, pc, np.where(fold == 1, 0.2 + 0.1 * pc, 0.5 * pc ** 3))
    assert within_group_auroc(y, scaled, fold) == pytest.approx(within_group_auroc(y, pc, fold), abs=1e-12)
    assert auroc(y, scaled) < within_group_auroc(y, scaled, fold) - 0.02
    assert within_group_auroc(y, pb) == pytest.approx(auroc(y, pb), abs=1e-12)  # one group: the plain AUROC
    # the same as the folds' AUROCs weighted by their (positive x negative) pairs, also on resamples
    want = sum(auroc(y[fold == k], pb[fold == k]) * (y[fold == k] > 0).sum() * (y[fold == k] == 0).sum()
               for k in range(3)) / sum((y[fold == k] > 0).sum() * (y[fold == k] == 0).sum() for k in range(3))
    assert within_group_auroc(y, pb, fold) == pytest.approx(want, abs=1e-12)
    counts = np.random.default_rng(8).multinomial(90, np.full(90, 1 / 90), size=3)
    got = resampled_auroc_differences(y, s, scaled, pb, counts, fold)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for r in range(3):
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in range(90) for _ in range(counts[r, i])])
        d = within_group_auroc(y[rows], scaled[rows], fold[rows]) - within_group_auroc(y[rows], pb[rows], fold[rows])
        assert got[r] == pytest.approx(d, abs=1e-12)
    n = paired_check_noise(y, s, scaled, scaled >= 0.3, pc, pc >= 0.5, margin_utility=0.01, margin_auroc=0.01,
                           resamples=300, groups=fold, on="sample stays (cross-fitted)")  # fmt: skip
    assert n.auroc.difference == pytest.approx(0.0, abs=1e-12) and "sample stays (cross-fitted)" in n.describe()
