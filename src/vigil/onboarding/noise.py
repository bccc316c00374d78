"""How much the site's check stays can tell: a paired bootstrap of the gate's two comparisons.

The onboarding gate compares the onboarded version with the base on the site's held-back *check* stays (30 % of a
sample: a few hundred stays, a few dozen septic) by two rules: utility at each version's threshold, and AUROC, each
refused when the candidate is more than a margin worse. On set A's units that comparison refused 4 of 11 labelled
site versions that were better than the base on the other 80 % of the site (docs/evaluation/onboarding.md, "How
much the check stays can tell"). The rules are unchanged; this module says how sure their inputs are, so that a
refusal (or a pass) on a small check set is read as what it is.

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

__all__ = ["Difference", "CheckNoise", "paired_check_noise", "resampled_differences", "resampled_auroc_differences"]


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckNoise:
        return cls(**{**d, "utility": Difference(**d["utility"]), "auroc": Difference(**d["auroc"])})

    def describe(self) -> str:
        tell = ("the check stays cannot tell the two apart" if self.utility.cannot_tell() or self.auroc.cannot_tell()
                else "the check stays separate them")  # fmt: skip
        return (f"paired stay bootstrap ({self.resamples} resamples of {self.stays} check stays, {self.septic_stays} "
                f"septic), candidate - base with {100 * self.level:.0f} % intervals: {self.utility.describe()}; "
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


def _weighted_auroc(inv: np.ndarray, groups: int, y: np.ndarray, w: np.ndarray) -> float:
    pos = np.bincount(inv, weights=w * y, minlength=groups)
    neg = np.bincount(inv, weights=w * (1.0 - y), minlength=groups)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    return float((pos * (np.cumsum(neg) - 0.5 * neg)).sum() / (n_pos * n_neg))


def resampled_auroc_differences(labels: np.ndarray, stay_start: np.ndarray, cand_scores: np.ndarray,
                                base_scores: np.ndarray, counts: np.ndarray) -> np.ndarray:  # fmt: skip
    """Candidate minus base row AUROC on each resample (``counts`` as :func:`resampled_differences`; NaN where a
    resample holds one class only)."""
    s = _starts(stay_start)
    sid = np.cumsum(s) - 1
    y = (np.asarray(labels) > 0).astype(np.float64)
    vc, ic = np.unique(np.asarray(cand_scores, np.float64), return_inverse=True)
    vb, ib = np.unique(np.asarray(base_scores, np.float64), return_inverse=True)
    out = np.empty(len(counts))
    for r, c in enumerate(np.asarray(counts, np.float64)):
        w = c[sid]
        out[r] = _weighted_auroc(ic, vc.size, y, w) - _weighted_auroc(ib, vb.size, y, w)
    return out


def _difference(metric: str, point: float, draws: np.ndarray, margin: float, level: float) -> Difference:
    d = draws[np.isfinite(draws)]
    q = (1 - level) / 2
    if not d.size:
        return Difference(metric, point, float("nan"), float("nan"), float("nan"), margin)
    return Difference(metric, point, float(np.quantile(d, q)), float(np.quantile(d, 1 - q)),
                      float((d < -margin).mean()), margin)  # fmt: skip


def paired_check_noise(labels: np.ndarray, stay_start: np.ndarray, cand_scores: np.ndarray, cand_threshold: float,
                       base_scores: np.ndarray, base_threshold: float, *, margin_utility: float, margin_auroc: float,
                       resamples: int = 1000, level: float = 0.9, seed: int = 0) -> CheckNoise:  # fmt: skip
    """The gate's utility (at each version's threshold) and AUROC comparisons, resampled by stay.

    >>> y = np.array([0, 0, 1, 1, 0, 0, 0, 0] * 20); s = np.tile([1, 0, 0, 0, 1, 0, 0, 0], 20).astype(bool)
    >>> n = paired_check_noise(y, s, y * 0.9, 0.5, np.full(y.size, 0.1), 0.5, margin_utility=0.01, margin_auroc=0.01)
    >>> n.utility.difference > 0 and n.utility.low > 0 and n.utility.share_refused == 0.0, n.auroc.difference
    (True, 0.5)
    """
    s = _starts(stay_start)
    y = np.asarray(labels)
    pc, pb = np.asarray(cand_scores, np.float64), np.asarray(base_scores, np.float64)
    septic = np.add.reduceat((y > 0).astype(np.int64), np.flatnonzero(s)) > 0 if s.size else np.zeros(0, bool)
    n = int(septic.size)
    cp, bp = pc >= cand_threshold, pb >= base_threshold
    ones = np.ones((1, n))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) if n else np.zeros((0, 0))
    util = np.concatenate([resampled_differences(y, s, cp, bp, counts[i:i + 200]) for i in range(0, resamples, 200)])
    auc = resampled_auroc_differences(y, s, pc, pb, counts)
    return CheckNoise(
        stays=n, septic_stays=int(septic.sum()), resamples=int(resamples), level=level,
        utility=_difference("utility", float(resampled_differences(y, s, cp, bp, ones)[0]), util, margin_utility,
                            level),
        auroc=_difference("AUROC", float(resampled_auroc_differences(y, s, pc, pb, ones)[0]), auc, margin_auroc,
                          level),
    )  # fmt: skip
