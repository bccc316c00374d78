"""P(NEWS2 >= 7 within h) from the NEWS2 history of the last 24 h: a logistic model, one per horizon.

A patient's recent course says more than the current total alone: one at 4 who was at 9 two hours ago, or
who has spent half of the last day at 7 or more, is likelier to reach 7 again than one at 4 all day. The
features of a row (:func:`history_features`, :data:`FEATURES`) use only that row and the rows before it in the
same stay, at most :data:`HISTORY_H` of them:

* the current total, one-hot (0-20);
* over the last 6, 12 and 24 rows (this one included; fewer early in a stay): the share of rows at 7 or more,
  the mean total / 20 and the maximum total / 20;
* hours since the last row at 7 or more (capped at 24; 24 when none in the window) / 24, and whether that was
  within 1 or 3 hours;
* log(1 + hours since admission) / 5, and whether the stay is under 6 h old;
* the change since the previous row / 10.

The same function computes the features offline (every row of a split, vectorised over stays) and live (the
demand job keeps each patient's last 24 completed rows and takes the features of the newest), so the model
sees the same inputs in both; a test checks it. Fitted by L2-penalised logistic regression (iteratively
reweighted least squares, numpy) on the validation split, its output then mapped by isotonic regression (the
logistic form alone is calibrated in the large but not in every range); the weights and knots are stored in
``demand_calibration.json`` (``news2_model``) with the feature names, and a file whose names differ is refused.

>>> f = history_features(np.array([2, 9, 4]), np.array([0, 1, 2]))
>>> f.shape == (3, len(FEATURES)), float(f[2, FEATURES.index("total=4")]), float(f[2, FEATURES.index("max_6h")])
(True, 1.0, 0.45)
>>> float(f[2, FEATURES.index("since_high")]), float(f[2, FEATURES.index("high_within_1h")])
(0.041666666666666664, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FEATURES", "HISTORY_H", "History", "history_features", "News2Model", "fit_logistic"]

HISTORY_H = 24
WINDOWS = (6, 12, 24)
HIGH = 7
NEWS2_MAX = 20
FEATURES: tuple[str, ...] = (
    "bias",
    *(f"total={k}" for k in range(NEWS2_MAX + 1)),
    *(f"{stat}_{w}h" for w in WINDOWS for stat in ("share_high", "mean", "max")),
    "since_high", "high_within_1h", "high_within_3h",
    "log_hours_since_admission", "first_6h",
    "change",
)  # fmt: skip


def history_features(totals: np.ndarray, rows: np.ndarray, stay_first: np.ndarray | None = None) -> np.ndarray:
    """``[n, len(FEATURES)]`` for rows sorted by stay then hour. ``totals``: each row's NEWS2 total (0-20);
    ``rows``: hours since admission; ``stay_first``: the index of each row's stay's first row (None: one stay)."""
    n2 = np.clip(np.asarray(totals, dtype=np.float64), 0, NEWS2_MAX)
    n = n2.shape[0]
    at = np.arange(n)
    first = np.zeros(n, dtype=np.int64) if stay_first is None else np.asarray(stay_first, dtype=np.int64)
    high = (n2 >= HIGH).astype(np.float64)
    c_high = np.concatenate([[0.0], np.cumsum(high)])
    c_sum = np.concatenate([[0.0], np.cumsum(n2)])
    cols = [np.ones(n)]
    cols += [(n2 == k).astype(np.float64) for k in range(NEWS2_MAX + 1)]
    running_max = n2.copy()
    done = 1
    for w in WINDOWS:
        start = np.maximum(at - w + 1, first)
        length = at + 1 - start
        for k in range(done, w):  # extend the running maximum from the previous window to this one
            ok = at - k >= first
            running_max[ok] = np.maximum(running_max[ok], n2[at[ok] - k])
        done = w
        cols += [(c_high[at + 1] - c_high[start]) / length, (c_sum[at + 1] - c_sum[start]) / length / NEWS2_MAX,
                 running_max / NEWS2_MAX]  # fmt: skip
    last_high = np.maximum.accumulate(np.where(high > 0, at, -(10**9)))
    since = np.where(last_high >= np.maximum(first, at - HISTORY_H + 1), at - last_high, HISTORY_H).astype(np.float64)
    cols += [since / HISTORY_H, (since <= 1).astype(np.float64), (since <= 3).astype(np.float64)]
    r = np.asarray(rows, dtype=np.float64)
    cols += [np.log1p(np.maximum(r, 0.0)) / 5.0, (r < 6).astype(np.float64)]
    prev = np.where(at - 1 >= first, n2[np.maximum(at - 1, 0)], n2)
    cols.append((n2 - prev) / 10.0)
    return np.column_stack(cols)


class History:
    """One patient's completed rows of the last :data:`HISTORY_H` hours, for :func:`history_features` live.

    >>> h = History()
    >>> for row, total in enumerate([2, 9, 4]):
    ...     h.add(row * 3600.0, row, total)
    >>> bool(np.allclose(h.features(2 * 3600.0, 2, 4), history_features(np.array([2, 9, 4]), np.arange(3))[-1]))
    True
    """

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[float, tuple[int, int]] = {}  # row start time -> (hours since admission, total)

    def add(self, time: float, row: int, total: int) -> None:
        self._rows[time] = (int(row), int(total))
        oldest = max(self._rows) - HISTORY_H * 3600.0
        for t in [t for t in self._rows if t <= oldest]:
            del self._rows[t]

    def recent_max(self, time: float, total: int, window_h: int) -> int:
        """The highest total of the rows in the ``window_h`` hours up to the row at ``time`` (``total``: its own)."""
        since = time - (window_h - 1) * 3600.0
        return max([total, *(v for t, (_, v) in self._rows.items() if since <= t < time)])

    def features(self, time: float, row: int, total: int) -> np.ndarray:
        """The features of the row at ``time`` (hours since admission ``row``, NEWS2 ``total``), from the rows
        before it in the last 24 h."""
        before = sorted((t, r, v) for t, (r, v) in self._rows.items() if time - HISTORY_H * 3600.0 < t < time)
        totals = np.array([v for _, _, v in before] + [total])
        rows = np.array([r for _, r, _ in before] + [row])
        return history_features(totals, rows)[-1]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 30) -> np.ndarray:
    """L2-penalised logistic regression by iteratively reweighted least squares (the bias column is
    penalised too, lightly: ``l2`` is small against the row count).

    >>> rng = np.random.default_rng(0)
    >>> x = np.column_stack([np.ones(4000), rng.normal(size=4000)])
    >>> y = (rng.uniform(size=4000) < 1 / (1 + np.exp(-(0.5 + 2 * x[:, 1])))).astype(float)
    >>> np.round(fit_logistic(x, y), 1).tolist()
    [0.5, 2.0]
    """
    w = np.zeros(x.shape[1])
    eye = l2 * np.eye(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + l2 * w
        hess = x.T @ (x * (p * (1.0 - p))[:, None]) + eye
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return np.asarray(w, dtype=np.float64)


@dataclass(frozen=True)
class News2Model:
    """The logistic model of one horizon: weights in :data:`FEATURES` order, then an isotonic map of its output
    (knots ``iso_x`` -> ``iso_y``, fitted on the same rows; empty: none) so that every range of the output is
    calibrated, not only the mean."""

    weights: np.ndarray
    iso_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    iso_y: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def logistic(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(features @ self.weights, -30, 30))), dtype=np.float64)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        p = self.logistic(features)
        return np.asarray(np.interp(p, self.iso_x, self.iso_y), dtype=np.float64) if self.iso_x.size else p

    def to_json(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "weights": [float(v) for v in self.weights], "history_h": HISTORY_H,
                "isotonic": {"x": [float(v) for v in self.iso_x], "y": [float(v) for v in self.iso_y]}}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> News2Model:
        names: Sequence[str] = d["features"]
        if list(names) != list(FEATURES) or int(d.get("history_h", HISTORY_H)) != HISTORY_H:
            msg = "news2_model was fitted on other features than this vigil computes: refit vigil demand calibrate"
            raise ValueError(msg)
        w = np.asarray(d["weights"], dtype=np.float64)
        if w.shape != (len(FEATURES),) or not np.all(np.isfinite(w)):
            msg = f"news2_model needs {len(FEATURES)} finite weights"
            raise ValueError(msg)
        iso = d.get("isotonic") or {}
        x, y = np.asarray(iso.get("x", []), dtype=np.float64), np.asarray(iso.get("y", []), dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1 or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            msg = "news2_model isotonic knots must be two equally long, non-decreasing lists"
            raise ValueError(msg)
        return cls(w, x, y)
