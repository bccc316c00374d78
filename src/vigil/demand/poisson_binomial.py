"""The count of independent, non-identical Bernoulli events: the Poisson-binomial distribution.

A ward's demand for a resource over a horizon is the number of its patients who will need it; with each
patient's probability ``p_i`` (and patients independent) the count ``X = sum X_i`` is Poisson-binomial:
mean ``sum p_i``, variance ``sum p_i (1 - p_i)``.

* **exact** (``n <= exact_max``): the pmf by the recurrence ``P_i(k) = P_{i-1}(k)(1 - p_i) + P_{i-1}(k-1) p_i``
  (dynamic programming, O(n^2); 200 patients take well under a millisecond).
* **normal** (larger wards): the *refined* normal approximation (Volkova 1996; Hong 2013, Comput. Stat. Data
  Anal. 59:41-51), i.e. the normal CDF with continuity correction plus the first Edgeworth (skewness)
  term: ``F(k) ~ G((k + 0.5 - mu) / sigma)``, ``G(x) = Phi(x) + gamma (1 - x^2) phi(x) / 6`` with the
  skewness ``gamma = sum p(1-p)(1-2p) / sigma^3``. Guaranteed error: the Berry-Esseen bound
  :func:`berry_esseen_bound` (``0.56 sum E|X_i - p_i|^3 / sigma^3``, Shevtsova 2010) bounds the plain normal
  CDF; the skewness term cuts the observed error about tenfold for the small risks of a ward (tested: max CDF
  error <= 0.01 for n = 300..1000, against the exact pmf).

Intervals are central quantile intervals of the discrete distribution: ``[q((1-L)/2), q((1+L)/2)]`` with
``q(a) = min{k : F(k) >= a}``; they hold at least probability ``L`` (more when the count is small).

>>> d = distribution([0.5, 0.5])
>>> d.pmf().tolist(), d.mean, d.interval(0.5), d.p_exceed(1)
([0.25, 0.5, 0.25], 1.0, (0, 1), 0.25)
>>> distribution([0.1] * 500, exact_max=200).method
'normal'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CountDistribution", "pmf_exact", "distribution", "berry_esseen_bound", "BERRY_ESSEEN_C"]

BERRY_ESSEEN_C = 0.56  # Shevtsova (2010): sup|F_n - Phi| <= 0.56 * sum E|X_i - EX_i|^3 / sigma^3 (non-identical)
_TOL = 1e-12  # quantiles: F(k) >= a - _TOL (cumulative sums carry rounding)


def _probs(p: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
        msg = "probabilities must be finite numbers in [0, 1]"
        raise ValueError(msg)
    return arr


def pmf_exact(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """The exact pmf ``[P(X=0), ..., P(X=n)]`` by dynamic programming (an empty ward: ``[1.0]``).

    >>> pmf_exact([0.2, 1.0]).round(12).tolist()
    [0.0, 0.8, 0.2]
    """
    probs = _probs(p)
    pmf = np.zeros(probs.size + 1, dtype=np.float64)
    pmf[0] = 1.0
    for i, pi in enumerate(probs):
        # P_i(k) = P_{i-1}(k)(1-p) + P_{i-1}(k-1) p, for k = i+1 down to 0 (in place, vectorised)
        pmf[1 : i + 2] = pmf[1 : i + 2] * (1.0 - pi) + pmf[: i + 1] * pi
        pmf[0] *= 1.0 - pi
    return pmf


def _refined_normal_cdf(probs: np.ndarray, mean: float, var: float) -> np.ndarray:
    """``F(k)`` for k = 0..n by the refined normal approximation (monotone, within [0, 1], ``F(n) = 1``)."""
    n = probs.size
    sigma = math.sqrt(var)
    gamma = float(np.sum(probs * (1.0 - probs) * (1.0 - 2.0 * probs))) / sigma**3
    x = (np.arange(n + 1, dtype=np.float64) + 0.5 - mean) / sigma
    phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    big_phi = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    cdf = np.clip(big_phi + gamma * (1.0 - x * x) * phi / 6.0, 0.0, 1.0)
    cdf = np.maximum.accumulate(cdf)
    cdf[-1] = 1.0
    return np.asarray(cdf, dtype=np.float64)


def berry_esseen_bound(p: Sequence[float] | np.ndarray) -> float:
    """The Berry-Esseen bound on ``sup_x |P(X <= x) - Phi((x - mu) / sigma)|`` (``inf`` for zero variance).

    >>> round(berry_esseen_bound([0.5] * 100), 3)
    0.056
    """
    probs = _probs(p)
    q = 1.0 - probs
    var = float(np.sum(probs * q))
    if var <= 0.0:
        return math.inf
    third = float(np.sum(probs * q * (probs**2 + q**2)))  # E|X_i - p_i|^3
    return float(BERRY_ESSEEN_C * third / var**1.5)


@dataclass(frozen=True, slots=True)
class CountDistribution:
    """A Poisson-binomial count: ``cdf[k] = P(X <= k)`` for k = 0..n, with how it was computed."""

    n: int
    mean: float
    var: float
    method: str  # "exact" | "normal"
    cdf: np.ndarray

    def pmf(self) -> np.ndarray:
        """``P(X = k)`` for k = 0..n."""
        return np.diff(self.cdf, prepend=0.0)

    def cdf_at(self, k: int) -> float:
        """``P(X <= k)`` for any integer ``k`` (0 below 0, 1 from n on)."""
        if k < 0:
            return 0.0
        return 1.0 if k >= self.n else float(self.cdf[k])

    def quantile(self, a: float) -> int:
        """``min{k : P(X <= k) >= a}``.

        >>> distribution([0.5]).quantile(0.5), distribution([0.5]).quantile(0.51)
        (0, 1)
        """
        if not 0.0 <= a <= 1.0:
            msg = f"quantile level must be in [0, 1], got {a}"
            raise ValueError(msg)
        return min(int(np.searchsorted(self.cdf, a - _TOL, side="left")), self.n)

    def interval(self, level: float) -> tuple[int, int]:
        """Central interval ``[q((1-L)/2), q((1+L)/2)]``; it holds at least probability ``level``."""
        if not 0.0 < level < 1.0:
            msg = f"interval level must be in (0, 1), got {level}"
            raise ValueError(msg)
        return self.quantile((1.0 - level) / 2.0), self.quantile((1.0 + level) / 2.0)

    def mass(self, lo: int, hi: int) -> float:
        """``P(lo <= X <= hi)``."""
        return max(0.0, self.cdf_at(hi) - self.cdf_at(lo - 1))

    def p_exceed(self, capacity: float | None) -> float | None:
        """``P(X > capacity)``; ``None`` when the capacity is unknown. A negative capacity gives 1.

        >>> distribution([0.5, 0.5]).p_exceed(None), distribution([]).p_exceed(0), distribution([0.3]).p_exceed(-1)
        (None, 0.0, 1.0)
        """
        if capacity is None:
            return None
        return max(0.0, 1.0 - self.cdf_at(math.floor(capacity)))

    def pit(self, observed: int) -> tuple[float, float]:
        """``(P(X <= y-1), P(X <= y))``: the range of the randomised probability integral transform of ``y``."""
        return self.cdf_at(observed - 1), self.cdf_at(observed)


def distribution(p: Sequence[float] | np.ndarray, exact_max: int = 200) -> CountDistribution:
    """The count distribution of independent events with probabilities ``p``: exact for ``n <= exact_max``,
    else the refined normal approximation (exact whenever the variance is 0)."""
    probs = _probs(p)
    n = int(probs.size)
    mean = float(probs.sum())
    var = float(np.sum(probs * (1.0 - probs)))
    if var <= 0.0:  # every p is 0 or 1: the count is certain
        cdf = (np.arange(n + 1) >= round(mean)).astype(np.float64)
        return CountDistribution(n, mean, var, "exact", cdf)
    if n <= exact_max:
        cdf = np.minimum(np.cumsum(pmf_exact(probs)), 1.0)
        cdf[-1] = 1.0
        return CountDistribution(n, mean, var, "exact", cdf)
    return CountDistribution(n, mean, var, "normal", _refined_normal_cdf(probs, mean, var))
