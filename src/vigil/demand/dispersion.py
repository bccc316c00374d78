"""The shared ward effect: how much more a ward's count varies than independent patients would make it vary.

Replayed as wards, the validation split's counts of NEWS2 >= 7 spread 8-24 % more than the Poisson-binomial
of the patients' calibrated probabilities allows (the variance ratio; sepsis onsets: about 1.0), because the
errors of one ward's patients do not cancel: a unit differs from the pooled calibration (in the replay ICU-SURG
runs higher), and in a hospital case mix and staffing move a ward's patients together.
Intervals that ignore this under-cover, more so in large wards.

:func:`fit_ward_effect` fits, per need and horizon, the standard deviation ``s`` of a shared log-odds effect
(:func:`vigil.demand.poisson_binomial.distribution` with ``ward_sd``) by maximum likelihood of the realised
counts: the validation split is replayed as wards with Poisson admissions (:mod:`vigil.demand.backtest`, at
20 and 40 patients per ward), each scored forecast contributes ``log P(X = y | p, s)``, and ``s`` is found by
golden-section search on [0, 2]. The fitted effect widens the intervals and leaves the expected count as it is.

>>> rng = np.random.default_rng(0)
>>> probs = [rng.uniform(0.05, 0.4, 20) for _ in range(300)]
>>> shocks = rng.normal(0.0, 0.8, 300)  # a real shared effect
>>> def draw(p, z):
...     return int((rng.uniform(size=p.size) < 1 / (1 + np.exp(-(np.log(p / (1 - p)) + z)))).sum())
>>> ys = [draw(p, z) for p, z in zip(probs, shocks)]
>>> 0.4 < ward_sd_mle(probs, ys) < 1.2, ward_sd_mle(probs, [int(rng.binomial(1, p).sum()) for p in probs]) < 0.25
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from vigil.config import DemandResource
from vigil.demand.calibration import Calibration
from vigil.demand.poisson_binomial import mixture_pmf, pmf_exact_rows, ward_nodes
from vigil.demand.scored import ScoredRows

__all__ = ["ward_sd_mle", "fit_ward_effect", "FIT_CONCURRENCY"]

FIT_CONCURRENCY = (20, 40)  # ward sizes replayed for the fit
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _padded(probs: Sequence[np.ndarray]) -> np.ndarray:
    """``[C, n_max]`` with zeros after each case's patients (a probability of 0 adds nothing to a count)."""
    width = max((int(np.size(p)) for p in probs), default=0)
    out = np.zeros((len(probs), max(width, 1)))
    for i, p in enumerate(probs):
        out[i, : np.size(p)] = p
    return out


def _log_lik(padded: np.ndarray, ys: np.ndarray, sd: float) -> float:
    """``sum log P(X = y | p, sd)`` over the cases, all at once."""
    if sd > 0.0:
        pmf = mixture_pmf(ward_nodes(padded, sd))
    else:
        pmf = pmf_exact_rows(padded)
    return float(np.log(np.maximum(pmf[np.arange(ys.size), ys], 1e-300)).sum())


def ward_sd_mle(probs: Sequence[np.ndarray], ys: Sequence[int], upper: float = 2.0, tol: float = 0.01) -> float:
    """The ward-effect standard deviation that maximises the likelihood of the counts ``ys`` given each
    forecast's probabilities (golden-section search on ``[0, upper]``; 0 when the boundary is best)."""
    if not probs:
        return 0.0
    padded, y = _padded(probs), np.asarray(ys, dtype=np.int64)
    a, b = 0.0, float(upper)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = _log_lik(padded, y, c), _log_lik(padded, y, d)
    while b - a > tol:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = _log_lik(padded, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = _log_lik(padded, y, d)
    best = 0.5 * (a + b)
    return 0.0 if _log_lik(padded, y, 0.0) >= _log_lik(padded, y, best) else round(best, 3)


def fit_ward_effect(
    rows: ScoredRows, calibration: Calibration, resources: Sequence[DemandResource], horizons: Sequence[int],
    concurrency: Sequence[int] = FIT_CONCURRENCY, warmup_h: int = 96,
) -> dict[str, dict[int, float]]:  # fmt: skip
    """Per need and horizon: the ward effect fitted on ``rows`` (the validation split) replayed as wards
    (see the module docstring). One resource per need is used (the first configured)."""
    from vigil.demand.backtest import BacktestConfig, simulate, summarise

    per_need = {r.need: r for r in reversed(list(resources))}
    step = math.gcd(*(int(h) for h in horizons))
    base = replace(calibration, ward_effect={})
    cases = []
    for n in concurrency:
        cfg = BacktestConfig(concurrency=int(n), every_h=step, warmup_h=warmup_h, horizons=tuple(horizons),
                             arrivals="poisson", exact_max=10**6)  # fmt: skip
        cases += summarise(simulate(rows, base, list(per_need.values()), cfg, keep_probabilities=True), cfg)[1]
    out: dict[str, dict[int, float]] = {}
    for need in per_need:
        for h in horizons:
            mine = [c for c in cases if c.extra["need"] == need and c.horizon_h == int(h)]
            out.setdefault(need, {})[int(h)] = ward_sd_mle([c.extra["p"] for c in mine], [c.observed for c in mine])
    return out
