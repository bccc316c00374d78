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

* **ward effect** (``ward_sd`` > 0): patients of one ward at one time are not quite independent (a ward's case
  mix, its staff, a unit's habits move them together). A shared random effect ``Z ~ N(0, ward_sd^2)`` on
  every patient's log-odds makes the count a mixture of Poisson-binomials, integrated by 9-point
  Gauss-Hermite quadrature; the effect is centred (a common log-odds shift, found by bisection) so that the
  expected count stays ``sum p_i``: it widens the distribution without moving its mean. Large wards use the
  refined normal with the mixture's variance.

Intervals are central quantile intervals of the discrete distribution: ``[q((1-L)/2), q((1+L)/2)]`` with
``q(a) = min{k : F(k) >= a}``; they hold at least probability ``L`` (more when the count is small).

>>> d = distribution([0.5, 0.5])
>>> d.pmf().tolist(), d.mean, d.interval(0.5), d.p_exceed(1)
([0.25, 0.5, 0.25], 1.0, (0, 1), 0.25)
>>> distribution([0.1] * 500, exact_max=200).method
'normal'
>>> wide = distribution([0.2] * 20, ward_sd=0.5)
>>> round(wide.mean, 6), wide.var > distribution([0.2] * 20).var, wide.method
(4.0, True, 'exact+ward')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CountDistribution", "pmf_exact", "pmf_exact_rows", "ward_nodes", "mixture_pmf", "distribution",
           "berry_esseen_bound", "BERRY_ESSEEN_C"]  # fmt: skip

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


def pmf_exact_rows(p: np.ndarray) -> np.ndarray:
    """``[K, n+1]``: the exact pmf of each row of a ``[K, n]`` probability array, all rows in one pass."""
    probs = np.atleast_2d(np.asarray(p, dtype=np.float64))
    k, n = probs.shape
    pmf = np.zeros((k, n + 1), dtype=np.float64)
    pmf[:, 0] = 1.0
    for i in range(n):
        pi = probs[:, i : i + 1]
        pmf[:, 1 : i + 2] = pmf[:, 1 : i + 2] * (1.0 - pi) + pmf[:, : i + 1] * pi
        pmf[:, 0] *= 1.0 - probs[:, i]
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
    method: str  # "exact" | "normal", "+ward" with a ward effect
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


_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(9)
_GH_W = _GH_W / _GH_W.sum()  # standard normal nodes and weights


def ward_nodes(probs: np.ndarray, ward_sd: float, newton_steps: int = 6) -> np.ndarray:
    """``[..., K, n]``: the probabilities at each quadrature node for probabilities ``[..., n]``: log-odds
    ``logit p + c + ward_sd z_k``, where the common shift ``c`` (one per leading index; Newton's method) keeps
    the mixture's expected count at ``sum p``. Probabilities of 0 or 1 (and padding zeros) stay as they are."""
    p = np.asarray(probs, dtype=np.float64)
    inner = (p > 0.0) & (p < 1.0)
    safe = np.where(inner, p, 0.5)
    lo = np.log(safe / (1.0 - safe))[..., None, :]  # [..., 1, n]
    z = (ward_sd * _GH_Z)[:, None]  # [K, 1]
    target = np.where(inner, p, 0.0).sum(axis=-1)  # [...]
    c = np.zeros(p.shape[:-1] + (1, 1))
    keep = inner[..., None, :]
    for _ in range(newton_steps):
        q = np.where(keep, 1.0 / (1.0 + np.exp(-(lo + c + z))), 0.0)
        mean = np.tensordot(q.sum(axis=-1), _GH_W, axes=([-1], [0]))  # [...]
        slope = np.tensordot((q * (1.0 - q)).sum(axis=-1), _GH_W, axes=([-1], [0]))
        c = c - ((mean - target) / np.maximum(slope, 1e-12))[..., None, None]
    q = 1.0 / (1.0 + np.exp(-(lo + c + z)))
    return np.where(keep, q, p[..., None, :])


def mixture_pmf(nodes: np.ndarray) -> np.ndarray:
    """``[..., n+1]``: the pmf of the count mixed over the quadrature nodes of :func:`ward_nodes`."""
    shape = nodes.shape
    pmf = pmf_exact_rows(nodes.reshape(-1, shape[-1])).reshape(*shape[:-1], shape[-1] + 1)
    return np.asarray(np.tensordot(np.moveaxis(pmf, -2, -1), _GH_W, axes=([-1], [0])), dtype=np.float64)


def distribution(p: Sequence[float] | np.ndarray, exact_max: int = 200, ward_sd: float = 0.0) -> CountDistribution:
    """The count distribution of independent events with probabilities ``p``: exact for ``n <= exact_max``,
    else the refined normal approximation (exact whenever the variance is 0); with ``ward_sd`` > 0 the mixture
    over a shared log-odds effect (see the module docstring; method ``exact+ward`` / ``normal+ward``)."""
    probs = _probs(p)
    n = int(probs.size)
    mean = float(probs.sum())
    var = float(np.sum(probs * (1.0 - probs)))
    if var <= 0.0:  # every p is 0 or 1: the count is certain
        cdf = (np.arange(n + 1) >= round(mean)).astype(np.float64)
        return CountDistribution(n, mean, var, "exact", cdf)
    if ward_sd > 0.0:
        nodes = ward_nodes(probs, float(ward_sd))
        means = nodes.sum(axis=1)
        total_var = float(_GH_W @ ((nodes * (1.0 - nodes)).sum(axis=1) + (means - mean) ** 2))
        if n <= exact_max:
            cdf = np.minimum(np.cumsum(mixture_pmf(nodes)), 1.0)
            cdf[-1] = 1.0
            return CountDistribution(n, mean, total_var, "exact+ward", cdf)
        return CountDistribution(n, mean, total_var, "normal+ward", _refined_normal_cdf(probs, mean, total_var))
    if n <= exact_max:
        cdf = np.minimum(np.cumsum(pmf_exact(probs)), 1.0)
        cdf[-1] = 1.0
        return CountDistribution(n, mean, var, "exact", cdf)
    return CountDistribution(n, mean, var, "normal", _refined_normal_cdf(probs, mean, var))
