"""Calibration and curve points in numpy: Brier score, reliability bins, ROC and precision-recall curves.

>>> round(brier([0, 1], [0.2, 0.6]), 6)
0.1
>>> [b["n"] for b in reliability_bins([0, 0, 1], [0.05, 0.15, 0.95], n_bins=10)][:2]
[1, 1]
>>> fpr, tpr = roc_curve([0, 0, 1, 1], [1, 2, 2, 3])
>>> fpr.tolist(), tpr.tolist()
([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["brier", "reliability_bins", "expected_calibration_error", "roc_curve", "pr_curve", "thin"]


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between the predicted probability and the 0/1 label (NaN if empty)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of the predicted probability on [0, 1] (the last bin includes 1.0): per bin its
    edges, row count ``n``, mean predicted probability and observed positive rate (``None`` when empty)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    return [
        {
            "lo": float(edges[k]),
            "hi": float(edges[k + 1]),
            "n": int(n[k]),
            "mean_predicted": float(sum_p[k] / n[k]) if n[k] else None,
            "observed_rate": float(sum_y[k] / n[k]) if n[k] else None,
        }
        for k in range(n_bins)
    ]


def expected_calibration_error(bins: list[dict[str, Any]]) -> float:
    """Row-weighted mean of |observed rate - mean predicted| over the reliability bins."""
    total = sum(b["n"] for b in bins)
    if not total:
        return float("nan")
    return float(sum(b["n"] * abs(b["observed_rate"] - b["mean_predicted"]) for b in bins if b["n"]) / total)


def _ranked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(true positives, false positives) at each distinct threshold, scores descending; and the class sizes."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[ss[1:] != ss[:-1], True] if ss.size else np.zeros(0, bool)
    tp = np.cumsum(yy)[last]
    fp = np.cumsum(~yy)[last]
    return tp, fp, int(y.sum()), int(y.size - y.sum())


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) from (0, 0) through every distinct threshold."""
    tp, fp, n_pos, n_neg = _ranked(labels, scores)
    return np.r_[0.0, fp / max(n_neg, 1)], np.r_[0.0, tp / max(n_pos, 1)]


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, from the highest score down."""
    tp, fp, n_pos, _ = _ranked(labels, scores)
    return tp / max(n_pos, 1), tp / np.maximum(tp + fp, 1)


def thin(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve (first and last kept), for plotting."""
    if x.size <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, max_points).astype(np.int64))
    return x[keep], y[keep]
