"""PhysioNet/CinC 2019 normalized utility, vectorised over many stays.

Definition (Reyna et al., Crit Care Med 2020; restated in docs/reference): for a septic stay,
``t_sepsis`` = first row with ``SepsisLabel == 1`` plus 6 (labels are shifted 6 h early), and a row t
with ``d = t - t_sepsis`` earns

* predicted 1: ``max(d/6 + 2, -0.05)`` for ``d <= -6``; ``-d/9 + 1/3`` for ``-6 < d <= 3``;
* predicted 0: ``0`` for ``d <= -6``; ``-2d/9 - 4/3`` for ``-6 < d <= 3``;
* rows with ``d > 3`` earn 0 whatever is predicted.

A non-septic stay earns -0.05 per positive row and 0 per negative row. The cohort score is
``(U_observed - U_inaction) / (U_best - U_inaction)``: 0 for predicting nothing, 1 for the best
predictions (1 exactly on rows ``t_sepsis - 12 .. t_sepsis + 3``).

Because every row's utility depends on its own prediction only, each row has two fixed payoffs
(``u1`` if predicted 1, ``u0`` if predicted 0); all scores are sums over them, which makes threshold
scans a sort and a cumulative sum.

>>> round(stay_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]).observed, 4)
3.3889
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "StayUtility",
    "row_utilities",
    "stay_utility",
    "normalized_utility",
    "best_threshold",
    "DEFAULT_GRID",
]

DT_EARLY, DT_OPTIMAL, DT_LATE = -12, -6, 3
U_FP = -0.05
DEFAULT_GRID = np.round(np.linspace(0.01, 0.99, 99), 2)


class StayUtility(NamedTuple):
    """Utility sums: of the predictions given, of the best predictions, of predicting nothing, and the
    lowest achievable."""

    observed: float
    best: float
    inaction: float
    worst: float


def _stay_ids(n: int, stay_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(stay id per row, first row of each stay); row 0 always starts a stay."""
    if stay_start is None:
        starts = np.zeros(n, dtype=bool)
    else:
        starts = np.asarray(stay_start, dtype=bool).copy()
        if starts.shape != (n,):
            raise ValueError("stay_start must be a bool array with one entry per row")
    if n:
        starts[0] = True
    sid = np.cumsum(starts) - 1
    return sid, np.flatnonzero(starts)


def row_utilities(
    labels: np.ndarray, stay_start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row payoffs ``(u1, u0, best)``: utility if predicted 1, if predicted 0, and the best prediction
    (bool). ``labels`` are the per-row SepsisLabel of stays concatenated in time order."""
    y = np.asarray(labels).astype(bool)
    n = y.shape[0]
    sid, first = _stay_ids(n, stay_start)
    t = np.arange(n) - first[sid] if n else np.zeros(0, dtype=np.int64)
    big = np.iinfo(np.int64).max // 4
    first_pos = np.where(y, t, big)
    onset_label = np.minimum.reduceat(first_pos, first) if n else np.zeros(0, dtype=np.int64)
    septic = (onset_label < big)[sid]
    d = (t - (onset_label[sid] - DT_OPTIMAL)).astype(np.float64)  # t - t_sepsis (garbage if not septic)
    early = d <= DT_OPTIMAL
    window = (d > DT_OPTIMAL) & (d <= DT_LATE)
    u1 = np.where(early, np.maximum(d / 6.0 + 2.0, U_FP), np.where(window, -d / 9.0 + 1.0 / 3.0, 0.0))
    u0 = np.where(window, -2.0 * d / 9.0 - 4.0 / 3.0, 0.0)
    u1 = np.where(septic, u1, U_FP)
    u0 = np.where(septic, u0, 0.0)
    best = septic & (d >= DT_EARLY) & (d <= DT_LATE)
    return u1, u0, best


def _sums(u1: np.ndarray, u0: np.ndarray, best: np.ndarray, pred: np.ndarray) -> StayUtility:
    return StayUtility(
        observed=float(np.where(pred, u1, u0).sum()),
        best=float(np.where(best, u1, u0).sum()),
        inaction=float(u0.sum()),
        worst=float(np.minimum(u1, u0).sum()),
    )


def _binary(predictions: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(predictions)
    if p.shape != (n,):
        raise ValueError("labels and predictions must have the same length")
    return p.astype(bool)


def stay_utility(labels: np.ndarray, predictions: np.ndarray) -> StayUtility:
    """Utility sums of one stay (binary predictions, one per hourly row).

    >>> u = stay_utility([0] * 10, [1] * 10)
    >>> round(u.observed, 2), u.best, u.inaction
    (-0.5, 0.0, 0.0)
    """
    y = np.asarray(labels)
    u1, u0, best = row_utilities(y)
    return _sums(u1, u0, best, _binary(predictions, y.shape[0]))


def normalized_utility(labels: np.ndarray, predictions: np.ndarray, stay_start: np.ndarray) -> float:
    """Cohort normalized utility of binary predictions over many concatenated stays.

    NaN when undefined (no septic stay: best == inaction).

    >>> y = np.array([0, 0, 0, 0, 1, 1, 0, 0]); s = np.array([1, 0, 0, 0, 0, 0, 1, 0], bool)
    >>> normalized_utility(y, np.zeros(8), s), normalized_utility(y, row_utilities(y, s)[2], s)
    (0.0, 1.0)
    """
    y = np.asarray(labels)
    u1, u0, best = row_utilities(y, stay_start)
    s = _sums(u1, u0, best, _binary(predictions, y.shape[0]))
    den = s.best - s.inaction
    return float((s.observed - s.inaction) / den) if den > 0 else float("nan")


def best_threshold(
    probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, grid: np.ndarray | None = None
) -> tuple[float, float]:
    """(threshold, normalized utility) maximising the utility of ``probs >= threshold`` over ``grid``
    (default 0.01..0.99 step 0.01). Ties go to the lowest threshold. One sort + cumulative sum, so any
    grid size costs O(N log N).

    >>> y = np.array([0] * 8 + [1, 1] + [0, 0, 0]); s = np.zeros(13, bool); s[[0, 10]] = True
    >>> p = np.array([.2, .2, .6, .6, .7, .7, .8, .8, .9, .9] + [.3, .5, .1])
    >>> best_threshold(p, y, s)
    (0.51, 1.0)
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError("probs and labels must have the same length")
    g = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    u1, u0, best = row_utilities(y, stay_start)
    inaction = float(u0.sum())
    den = float(np.where(best, u1, u0).sum()) - inaction
    order = np.argsort(p, kind="stable")
    ps = p[order]
    gain = (u1 - u0)[order]
    suffix = np.concatenate([np.cumsum(gain[::-1])[::-1], [0.0]])  # suffix[k] = gain of rows k..N-1
    observed = inaction + suffix[np.searchsorted(ps, g, side="left")]  # rows with p >= threshold
    util = (observed - inaction) / den if den > 0 else np.full(g.shape, np.nan)
    if np.all(np.isnan(util)):
        return float(g[0]), float("nan")
    k = int(np.nanargmax(util))
    exact = _sums(u1, u0, best, p >= g[k])  # re-sum directly: no cumulative-sum rounding in the report
    return float(g[k]), float((exact.observed - exact.inaction) / den)
