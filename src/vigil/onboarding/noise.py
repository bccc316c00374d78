"""How much the site's check stays can tell: a paired bootstrap of the gate's utility comparison.

The onboarding gate compares the onboarded version with the base on the site's held-back *check* stays (30 % of a
sample: a few hundred stays, a few dozen septic). On set A's units that comparison refused 4 of 11 labelled site
versions that were better than the base on the other 80 % of the site (docs/evaluation/onboarding.md, "How much
the check stays can tell"). The gate's rule is unchanged; this module says how sure its inputs are, so that a
refusal (or a pass) on a small check set is read as what it is.

Resampling is by stay (rows of a stay stay together) and paired (both models on the same resampled stays), on the
normalized utility's per-stay sums, so each resample costs one matrix product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vigil.evaluation.utility import row_utilities

__all__ = ["UtilityDifference", "paired_utility_difference", "resampled_differences"]


@dataclass(frozen=True, slots=True)
class UtilityDifference:
    """Candidate minus base normalized utility on the check stays, with its paired stay-bootstrap spread."""

    difference: float  # on the check stays as they are
    low: float  # the bootstrap's (1 - level) / 2 quantile
    high: float  # its (1 + level) / 2 quantile
    level: float  # 0.9
    share_refused: float  # share of resamples in which the rule (difference < -margin) refuses
    margin: float
    resamples: int
    stays: int
    septic_stays: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        tell = ("the check stays cannot tell the two apart" if self.low < -self.margin < self.high
                else "the check stays separate them")  # fmt: skip
        return (f"paired stay bootstrap ({self.resamples} resamples of {self.stays} check stays, {self.septic_stays} "
                f"septic): candidate - base utility {self.difference:+.3f}, {100 * self.level:.0f} % interval "
                f"[{self.low:+.3f}, {self.high:+.3f}]; the utility rule refuses in {100 * self.share_refused:.0f} % of "
                f"resamples; {tell}")  # fmt: skip


def _stay_sums(labels: np.ndarray, stay_start: np.ndarray, *preds: np.ndarray) -> tuple[np.ndarray, ...]:
    u1, u0, best = row_utilities(labels, stay_start)
    first = np.flatnonzero(np.asarray(stay_start, bool))
    out = [np.add.reduceat(np.where(p, u1, u0), first) for p in preds]
    return (*out, np.add.reduceat(np.where(best, u1, u0), first), np.add.reduceat(u0, first))


def resampled_differences(labels: np.ndarray, stay_start: np.ndarray, cand_pred: np.ndarray, base_pred: np.ndarray,
                          counts: np.ndarray) -> np.ndarray:  # fmt: skip
    """Candidate minus base normalized utility on each resample; ``counts[r, i]`` = how many times resample ``r``
    draws stay ``i`` (NaN where no septic stay is drawn)."""
    s = np.asarray(stay_start, bool).copy()
    if s.size:
        s[0] = True
    obs_c, obs_b, best, inaction = _stay_sums(np.asarray(labels), s, np.asarray(cand_pred, bool),
                                              np.asarray(base_pred, bool))  # fmt: skip
    w = np.asarray(counts, np.float64)
    den = w @ (best - inaction)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w @ obs_c - w @ obs_b) / den, np.nan)


def paired_utility_difference(labels: np.ndarray, stay_start: np.ndarray, cand_pred: np.ndarray,
                              base_pred: np.ndarray, *, margin: float, resamples: int = 1000, level: float = 0.9,
                              seed: int = 0) -> UtilityDifference:  # fmt: skip
    """Candidate minus base normalized utility of binary predictions on the same rows, resampled by stay.

    A resample whose utility is undefined (no septic stay drawn) is left out of the quantiles.

    >>> y = np.array([0, 0, 1, 1, 0, 0, 0, 0] * 20); s = np.tile([1, 0, 0, 0, 1, 0, 0, 0], 20).astype(bool)
    >>> d = paired_utility_difference(y, s, y.astype(bool), np.zeros(y.size, bool), margin=0.01)
    >>> d.difference > 0 and d.low > 0 and d.share_refused == 0.0
    True
    """
    s = np.asarray(stay_start, bool).copy()
    if s.size:
        s[0] = True
    y = np.asarray(labels)
    septic = np.add.reduceat(y.astype(np.int64), np.flatnonzero(s)) > 0
    n = int(septic.size)

    def diff(counts: np.ndarray) -> np.ndarray:
        return resampled_differences(y, s, cand_pred, base_pred, counts)

    point = float(diff(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    draws = []
    for lo in range(0, resamples, 200):  # counts of each stay in each resample, 200 resamples at a time
        k = min(200, resamples - lo)
        draws.append(diff(rng.multinomial(n, np.full(n, 1.0 / n), size=k)))
    d = np.concatenate(draws)
    d = d[np.isfinite(d)]
    q = (1 - level) / 2
    low, high = (float(np.quantile(d, q)), float(np.quantile(d, 1 - q))) if d.size else (float("nan"),) * 2
    return UtilityDifference(point, low, high, level, float((d < -margin).mean()) if d.size else float("nan"),
                             margin, int(d.size), int(n), int(septic.sum()))  # fmt: skip
