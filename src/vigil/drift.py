"""Drift monitoring in the worker: population stability index (PSI) of key features and of the score
against the training reference stored in the model card (``card["reference"]``, written by the trainer).

For each monitored quantity the card holds the inner edges of ~10 quantile bins on the training split and
the fraction of training rows per bin. The worker counts the scored rows that fall in each bin over a
sliding window (the last ``window_rows`` rows, kept as per-batch count blocks) and computes

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``a_i`` the live fraction and ``e_i`` the reference fraction (both floored at 1e-4 so an empty bin
is finite). Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 a real shift. Crossing
``level`` with at least ``min_rows`` rows in the window produces a drift event (topic ``model-drift``)
that a retraining job can act on (``vigil train --on-drift``), at most once per quantity per
``cooldown_rows`` scored rows.

>>> ref = {"features": {"HR_locf": {"edges": [70.0, 90.0], "fractions": [0.3, 0.4, 0.3]}},
...        "score": {"edges": [0.5], "fractions": [0.8, 0.2]}}
>>> m = DriftMonitor("m", "1", ref, ["HR_locf"], window_rows=1000, level=0.25, min_rows=10)
>>> events = m.update(np.full((50, 1), 120.0, np.float32), np.full(50, 0.9, np.float32))
>>> sorted(e["quantity"] for e in events), round(m.psi()["score"], 2) > 0.25
(['HR_locf', 'score'], True)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["DriftMonitor", "psi"]

_FLOOR = 1e-4


def psi(actual_counts: np.ndarray, expected_fractions: np.ndarray) -> float:
    """Population stability index of observed bin counts against reference fractions.

    >>> round(psi(np.array([30, 40, 30]), np.array([0.3, 0.4, 0.3])), 6)
    0.0
    """
    n = float(actual_counts.sum())
    if n <= 0:
        return 0.0
    a = np.maximum(actual_counts / n, _FLOOR)
    e = np.maximum(np.asarray(expected_fractions, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """Sliding-window PSI of one model's monitored features and score."""

    @classmethod
    def for_model(cls, model: str, version: str, reference: dict[str, Any] | None, feature_names: list[str],
                  settings: Any) -> DriftMonitor | None:  # fmt: skip
        """The monitor of a model version from its card's training ``reference`` and the ``drift`` settings
        (None when the card has no reference)."""
        if not reference:
            return None
        return cls(model, version, reference, feature_names, window_rows=settings.window_rows, level=settings.level,
                   min_rows=settings.min_rows, cooldown_rows=settings.cooldown_rows)  # fmt: skip

    def __init__(
        self,
        model: str,
        version: str,
        reference: dict[str, Any],
        feature_names: list[str],
        *,
        window_rows: int = 20_000,
        level: float = 0.25,
        min_rows: int = 2_000,
        cooldown_rows: int = 20_000,
    ) -> None:
        self.model, self.version = model, version
        self.level, self.min_rows, self.window_rows, self.cooldown_rows = level, min_rows, window_rows, cooldown_rows
        feats = reference.get("features") or {}
        self.names = [f for f in feature_names if f in feats]
        self.columns = [feature_names.index(f) for f in self.names]
        self.edges = [np.asarray(feats[f]["edges"], dtype=np.float64) for f in self.names]
        self.expected = [np.asarray(feats[f]["fractions"], dtype=np.float64) for f in self.names]
        score = reference.get("score")
        self.score_edges = np.asarray(score["edges"], dtype=np.float64) if score else None
        self.score_expected = np.asarray(score["fractions"], dtype=np.float64) if score else None
        self._blocks: deque[tuple[int, list[np.ndarray], np.ndarray | None]] = deque()
        self._tot = [np.zeros(e.size + 1, dtype=np.int64) for e in self.edges]  # counts in the window
        self._tot_score = np.zeros(self.score_edges.size + 1, dtype=np.int64) if self.score_edges is not None else None
        self._rows = 0
        self._seen = 0
        self._last_event: dict[str, int] = {}

    @property
    def rows(self) -> int:
        return self._rows

    def update(self, features: np.ndarray, score: np.ndarray) -> list[dict[str, Any]]:
        """Add a batch (``features`` [B, F] in ``feature_names`` order, ``score`` [B]); returns drift events."""
        b = int(score.shape[0])
        if b == 0:
            return []
        counts = [np.bincount(np.searchsorted(e, features[:, c].astype(np.float64), side="right"),
                              minlength=e.size + 1) for c, e in zip(self.columns, self.edges, strict=True)]  # fmt: skip
        sc = None
        if self.score_edges is not None:
            sc = np.bincount(np.searchsorted(self.score_edges, score.astype(np.float64), side="right"),
                             minlength=self.score_edges.size + 1)  # fmt: skip
        self._blocks.append((b, counts, sc))
        self._add(counts, sc, 1)
        self._rows += b
        self._seen += b
        while self._blocks and self._rows - self._blocks[0][0] >= self.window_rows:
            old_b, old_counts, old_sc = self._blocks.popleft()
            self._add(old_counts, old_sc, -1)
            self._rows -= old_b
        if self._rows < self.min_rows:
            return []
        events = []
        for quantity, value in self.psi().items():
            last = self._last_event.get(quantity)
            if value >= self.level and (last is None or self._seen - last >= self.cooldown_rows):
                self._last_event[quantity] = self._seen
                events.append({"v": 1, "model": self.model, "version": self.version, "quantity": quantity,
                               "psi": round(value, 4), "level": self.level, "rows": self._rows})  # fmt: skip
        return events

    def _add(self, counts: list[np.ndarray], sc: np.ndarray | None, sign: int) -> None:
        for tot, c in zip(self._tot, counts, strict=True):
            tot += sign * c
        if self._tot_score is not None and sc is not None:
            self._tot_score += sign * sc

    def psi(self) -> dict[str, float]:
        """PSI of every monitored quantity over the current window (``score`` for the model output)."""
        out = {name: psi(tot, exp) for name, tot, exp in zip(self.names, self._tot, self.expected, strict=True)}
        if self._tot_score is not None and self.score_expected is not None:
            out["score"] = psi(self._tot_score, self.score_expected)
        return out
