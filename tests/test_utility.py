"""PhysioNet 2019 normalized utility and the numpy ranking metrics."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.evaluation import auprc, auroc, best_threshold, normalized_utility, row_utilities, stay_utility


def official_stay_utility(labels, predictions) -> float:
    """Row-by-row transliteration of the challenge's compute_prediction_utility (reference)."""
    dt_optimal, dt_late = -6, 3.0  # dt_early = -12 is folded into m1, b1
    if np.any(labels):
        septic, t_sepsis = True, int(np.argmax(labels)) - dt_optimal
    else:
        septic, t_sepsis = False, float("inf")
    m1, b1 = 1 / 6, 2.0
    m2, b2 = -1 / 9, 1 / 3
    m3, b3 = -2 / 9, -4 / 3
    u = 0.0
    for t, p in enumerate(predictions):
        if t > t_sepsis + dt_late:
            continue
        if septic and p:
            u += (
                max(m1 * (t - t_sepsis) + b1, -0.05)
                if t <= t_sepsis + dt_optimal
                else m2 * (t - t_sepsis) + b2
            )
        elif not septic and p:
            u += -0.05
        elif septic and not p and t > t_sepsis + dt_optimal:
            u += m3 * (t - t_sepsis) + b3
    return u


def _concat(stays):
    labels = np.concatenate([np.asarray(y) for y, _ in stays])
    preds = np.concatenate([np.asarray(p) for _, p in stays])
    start = np.concatenate([np.eye(1, len(y), 0, dtype=bool)[0] for y, _ in stays])
    return labels, preds, start


def test_sanity_value():
    u = stay_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1])
    assert u.observed == pytest.approx(3.3889, abs=1e-4)
    # t_sepsis = 10: rows 0..4 have d <= -6 (a miss costs 0), row 5 has d = -5 (a miss costs 2/9)
    assert u.inaction == pytest.approx(-2 / 9)
    assert u.best == pytest.approx(2 / 6 + 3 / 6 + 4 / 6 + 5 / 6 + 1 + 8 / 9)  # rows 0..5 all predicted


def test_non_septic_stay():
    u = stay_utility(np.zeros(7), np.ones(7))
    assert u.observed == pytest.approx(-0.05 * 7)
    assert u.best == 0.0 and u.inaction == 0.0
    assert u.worst == pytest.approx(-0.35)
    assert stay_utility(np.zeros(7), np.zeros(7)).observed == 0.0


def test_late_rows_count_zero_and_missed_sepsis_is_penalised():
    labels = np.r_[np.zeros(14), np.ones(20)]  # first label 14 -> t_sepsis 20; rows > 23 score 0
    u = stay_utility(labels, np.zeros(34))
    expected = sum(-2 * dd / 9 - 4 / 3 for dd in np.arange(15, 24) - 20)  # rows 15..23: -6 < d <= 3
    assert u.inaction == pytest.approx(expected)
    all_ones = stay_utility(labels, np.ones(34))
    assert all_ones.observed == pytest.approx(official_stay_utility(labels, np.ones(34)))


def test_cohort_inaction_zero_and_best_one():
    stays = [
        ([0] * 20 + [1] * 10, None),
        ([0] * 15, None),
        ([1] * 8, None),  # septic from the first row (onset 6 h after admission)
        ([0] * 40 + [1] * 3, None),
    ]
    labels = np.concatenate([np.asarray(y) for y, _ in stays])
    start = np.concatenate([np.eye(1, len(y), 0, dtype=bool)[0] for y, _ in stays])
    assert normalized_utility(labels, np.zeros(labels.size), start) == 0.0
    _, _, best = row_utilities(labels, start)
    assert normalized_utility(labels, best, start) == pytest.approx(1.0)
    assert normalized_utility(labels, np.ones(labels.size), start) < 1.0


def test_matches_reference_on_random_stays():
    rng = np.random.default_rng(0)
    stays = []
    for _ in range(40):
        n = int(rng.integers(1, 60))
        y = np.zeros(n, dtype=int)
        if rng.random() < 0.5:
            y[int(rng.integers(0, n)) :] = 1
        stays.append((y, rng.random(n) < 0.4))
    labels, preds, start = _concat(stays)
    ref_obs = sum(official_stay_utility(y, p) for y, p in stays)
    ref_inact = sum(official_stay_utility(y, np.zeros_like(p)) for y, p in stays)
    ref_best = 0.0
    for y, _ in stays:
        b = np.zeros(len(y))
        if y.any():
            ts = int(np.argmax(y)) + 6
            b[max(0, ts - 12) : min(ts + 3 + 1, len(y))] = 1
        ref_best += official_stay_utility(y, b)
    for y, p in stays:
        assert stay_utility(y, p).observed == pytest.approx(official_stay_utility(y, p))
    expected = (ref_obs - ref_inact) / (ref_best - ref_inact)
    assert normalized_utility(labels, preds, start) == pytest.approx(expected)


def test_no_septic_stay_is_undefined():
    assert np.isnan(normalized_utility(np.zeros(5), np.ones(5), np.eye(1, 5, 0, dtype=bool)[0]))


def test_best_threshold_toy():
    # septic stay (onset row 14): rows 2..9 are worth predicting, rows 0..1 are too early (-0.05)
    labels = np.array([0] * 8 + [1, 1] + [0, 0, 0])
    start = np.zeros(13, dtype=bool)
    start[[0, 10]] = True
    probs = np.array([0.2, 0.2, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.3, 0.5, 0.1])
    thr, util = best_threshold(probs, labels, start)
    assert 0.5 < thr <= 0.6
    assert util == pytest.approx(1.0)
    assert util == pytest.approx(normalized_utility(labels, probs >= thr, start))
    thr2, util2 = best_threshold(probs, labels, start, grid=np.array([0.1, 0.65, 0.95]))
    assert thr2 == 0.65 and util2 == pytest.approx(normalized_utility(labels, probs >= 0.65, start))


def test_best_threshold_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    stays = []
    for _ in range(60):
        n = int(rng.integers(5, 50))
        y = np.zeros(n, dtype=int)
        if rng.random() < 0.3:
            y[int(rng.integers(0, n)) :] = 1
        stays.append((y, None))
    labels = np.concatenate([y for y, _ in stays])
    start = np.concatenate([np.eye(1, len(y), 0, dtype=bool)[0] for y, _ in stays])
    probs = np.clip(rng.random(labels.size) * 0.7 + labels * 0.3, 0, 1)
    grid = np.round(np.linspace(0.01, 0.99, 99), 2)
    brute = [normalized_utility(labels, probs >= g, start) for g in grid]
    thr, util = best_threshold(probs, labels, start, grid)
    assert util == pytest.approx(max(brute))
    assert thr == grid[int(np.argmax(brute))]


def test_auroc_auprc():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s) == pytest.approx(0.75)
    assert auprc(y, s) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert auroc(y, np.ones(4)) == pytest.approx(0.5)  # ties -> 0.5
    assert auprc(y, np.ones(4)) == pytest.approx(0.5)  # one threshold: precision = prevalence
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert np.isnan(auroc(np.zeros(3), [0.1, 0.2, 0.3]))
    # against a brute-force pair count
    rng = np.random.default_rng(2)
    yy = rng.random(300) < 0.2
    ss = np.round(rng.random(300), 1)  # many ties
    pos, neg = ss[yy], ss[~yy]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(yy, ss) == pytest.approx(pairs)
