"""How much the stays the gate reads can tell: a paired bootstrap of its two comparisons.

The onboarding gate compares the onboarded version with the base by two rules: utility at each version's
threshold, and AUROC, each refused when the candidate is more than a margin worse; on every sample stay,
cross-fitted (:mod:`vigil.onboarding.crossfit`), or on the held-back *check* stays (30 % of a sample: a few hundred
stays, a few dozen septic). On set A's units the check stays refused 3 of 11 labelled site versions that the same
rules pass on the other 80 % of the site (docs/evaluation/onboarding.md, "The gate on every sample stay,
cross-fitted"). This module says how sure the comparisons are, so that a verdict on a small sample is read as what
it is.

Resampling is by stay (the rows of a stay stay together) and paired (both versions on the same resampled stays).
Utility comes from the normalized utility's per-stay sums (one matrix product per block of resamples); AUROC is
the Mann-Whitney statistic with each row weighted by how many times its stay was drawn (mid-ranks for ties, as
:func:`vigil.evaluation.metrics.auroc`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vigil.evaluation.utility import row_utilities

__all__ = ["Difference", "CheckNoise", "paired_check_noise", "resampled_differences", "resampled_auroc_differences",
           "within_group_auroc"]


@dataclass(frozen=True, slots=True)
class Difference:
    """Candidate minus base on the check stays, with the paired stay bootstrap's spread."""

    metric: str  # "utility" or "AUROC"
    difference: float  # on the check stays as they are
    low: float  # the bootstrap's (1 - level) / 2 quantile
    high: float  # its (1 + level) / 2 quantile
    share_refused: float  # share of resamples in which the rule (difference < -margin) refuses
    margin: float

    def cannot_tell(self) -> bool:
        return bool(self.low < -self.margin < self.high)

    def describe(self) -> str:
        return (f"{self.metric} {self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}], refused in "
                f"{100 * self.share_refused:.0f} % of resamples")  # fmt: skip


@dataclass(frozen=True, slots=True)
class CheckNoise:
    """Both comparisons of the gate, bootstrapped over the same resamples of the check stays."""

    stays: int
    septic_stays: int
    resamples: int
    level: float  # 0.9
    utility: Difference
    auroc: Difference
    on: str = "check stays"  # which stays: "check stays" or "sample stays (cross-fitted)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckNoise:
        return cls(**{**d, "utility": Difference(**d["utility"]), "auroc": Difference(**d["auroc"])})

    def describe(self) -> str:
        tell = ("these stays cannot tell the two apart" if self.utility.cannot_tell() or self.auroc.cannot_tell()
                else "these stays separate them")  # fmt: skip
        return (f"paired stay bootstrap ({self.resamples} resamples of {self.stays} {self.on}, {self.septic_stays} "
                f"septic), "
                f"candidate - base with {100 * self.level:.0f} % intervals: {self.utility.describe()}; "
                f"{self.auroc.describe()}; {tell}")  # fmt: skip


def _starts(stay_start: np.ndarray) -> np.ndarray:
    s = np.asarray(stay_start, bool).copy()
    if s.size:
        s[0] = True
    return s


def resampled_differences(labels: np.ndarray, stay_start: np.ndarray, cand_pred: np.ndarray, base_pred: np.ndarray,
                          counts: np.ndarray) -> np.ndarray:  # fmt: skip
    """Candidate minus base normalized utility of binary predictions on each resample; ``counts[r, i]`` = how many
    times resample ``r`` draws stay ``i`` (NaN where no septic stay is drawn)."""
    s = _starts(stay_start)
    u1, u0, best = row_utilities(np.asarray(labels), s)
    first = np.flatnonzero(s)
    obs_c = np.add.reduceat(np.where(np.asarray(cand_pred, bool), u1, u0), first)
    obs_b = np.add.reduceat(np.where(np.asarray(base_pred, bool), u1, u0), first)
    room = np.add.reduceat(np.where(best, u1, u0), first) - np.add.reduceat(u0, first)
    w = np.asarray(counts, np.float64)
    den = w @ room
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w @ obs_c - w @ obs_b) / den, np.nan)


class _Ranked:
    """Rows keyed by (group, score), keys in group-then-score order, for a within-group Mann-Whitney."""

    def __init__(self, scores: np.ndarray, groups: np.ndarray) -> None:
        order = np.lexsort((np.asarray(scores, np.float64), groups))
        keys = np.stack([groups[order], np.asarray(scores, np.float64)[order]])
        new = np.r_[True, np.any(keys[:, 1:] != keys[:, :-1], axis=0)] if order.size else np.zeros(0, bool)
        self.inv = np.empty(order.size, np.int64)
        self.inv[order] = np.cumsum(new) - 1
        self.size = int(new.sum())
        self.key_group = keys[0][new].astype(np.int64) if order.size else np.zeros(0, np.int64)
        self.groups = int(groups.max()) + 1 if groups.size else 0

    def auroc(self, y: np.ndarray, w: np.ndarray) -> float:
        pos = np.bincount(self.inv, weights=w * y, minlength=self.size)
        neg = np.bincount(self.inv, weights=w * (1.0 - y), minlength=self.size)
        g_pos = np.bincount(self.key_group, weights=pos, minlength=self.groups)
        g_neg = np.bincount(self.key_group, weights=neg, minlength=self.groups)
        den = float((g_pos * g_neg).sum())
        if den <= 0:
            return float("nan")
        below = np.cumsum(neg) - (np.cumsum(g_neg) - g_neg)[self.key_group] - 0.5 * neg  # within the group
        return float((pos * below).sum() / den)


def within_group_auroc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Row AUROC counting only (positive, negative) pairs of the same group (all rows one group by default): the
    AUROC of cross-fitted scores, whose folds' versions need not share a scale (mid-ranks for ties).

    >>> within_group_auroc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    1.0
    """
    y = (np.asarray(labels) > 0).astype(np.float64)
    g = np.zeros(y.size, np.int64) if groups is None else np.asarray(groups, np.int64)
    return _Ranked(np.asarray(scores), g).auroc(y, np.ones(y.size))


def resampled_auroc_differences(labels: np.ndarray, stay_start: np.ndarray, cand_scores: np.ndarray,
                                base_scores: np.ndarray, counts: np.ndarray,
                                groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Candidate minus base row AUROC on each resample (``counts`` as :func:`resampled_differences`; ``groups``:
    pairs within a group only, as :func:`within_group_auroc`; NaN where a resample holds one class only)."""
    s = _starts(stay_start)
    sid = np.cumsum(s) - 1
    y = (np.asarray(labels) > 0).astype(np.float64)
    g = np.zeros(y.size, np.int64) if groups is None else np.asarray(groups, np.int64)
    rc, rb = _Ranked(np.asarray(cand_scores), g), _Ranked(np.asarray(base_scores), g)
    out = np.empty(len(counts))
    for r, c in enumerate(np.asarray(counts, np.float64)):
        w = c[sid]
        out[r] = rc.auroc(y, w) - rb.auroc(y, w)
    return out


def _difference(metric: str, point: float, draws: np.ndarray, margin: float, level: float) -> Difference:
    d = draws[np.isfinite(draws)]
    q = (1 - level) / 2
    if not d.size:
        return Difference(metric, point, float("nan"), float("nan"), float("nan"), margin)
    return Difference(metric, point, float(np.quantile(d, q)), float(np.quantile(d, 1 - q)),
                      float((d < -margin).mean()), margin)  # fmt: skip


def paired_check_noise(labels: np.ndarray, stay_start: np.ndarray, cand_scores: np.ndarray, cand_pred: np.ndarray,
                       base_scores: np.ndarray, base_pred: np.ndarray, *, margin_utility: float, margin_auroc: float,
                       resamples: int = 1000, level: float = 0.9, seed: int = 0, on: str = "check stays",
                       groups: np.ndarray | None = None) -> CheckNoise:  # fmt: skip
    """The gate's utility (of each version's binary predictions: its scores at its threshold) and AUROC (of its
    scores; with ``groups``, within each group: :func:`within_group_auroc`) comparisons, resampled by stay.

    >>> y = np.array([0, 0, 1, 1, 0, 0, 0, 0] * 20); s = np.tile([1, 0, 0, 0, 1, 0, 0, 0], 20).astype(bool)
    >>> c, b = y * 0.9, np.full(y.size, 0.1)
    >>> n = paired_check_noise(y, s, c, c >= 0.5, b, b >= 0.5, margin_utility=0.01, margin_auroc=0.01)
    >>> n.utility.difference > 0 and n.utility.low > 0 and n.utility.share_refused == 0.0, n.auroc.difference
    (True, 0.5)
    """
    s = _starts(stay_start)
    y = np.asarray(labels)
    pc, pb = np.asarray(cand_scores, np.float64), np.asarray(base_scores, np.float64)
    septic = np.add.reduceat((y > 0).astype(np.int64), np.flatnonzero(s)) > 0 if s.size else np.zeros(0, bool)
    n = int(septic.size)
    cp, bp = np.asarray(cand_pred, bool), np.asarray(base_pred, bool)
    ones = np.ones((1, n))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) if n else np.zeros((0, 0))
    util = np.concatenate([resampled_differences(y, s, cp, bp, counts[i:i + 200]) for i in range(0, resamples, 200)])
    auc = resampled_auroc_differences(y, s, pc, pb, counts, groups)
    return CheckNoise(
        stays=n, septic_stays=int(septic.sum()), resamples=int(resamples), level=level,
        utility=_difference("utility", float(resampled_differences(y, s, cp, bp, ones)[0]), util, margin_utility,
                            level),
        auroc=_difference("AUROC", float(resampled_auroc_differences(y, s, pc, pb, ones, groups)[0]), auc,
                          margin_auroc, level),
        on=on,
    )  # fmt: skip
