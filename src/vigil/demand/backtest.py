"""``vigil demand backtest``: replay held-out stays as concurrent wards and score the demand forecasts.

PhysioNet stays carry no absolute times, so wards are simulated. Each stay joins the ward of its ICU unit
(MICU -> ICU-MED, SICU -> ICU-SURG, unknown -> ICU-GEN, as ``vigil replay`` does). Within a ward the stays are
ordered by a hash of their patient id (deterministic, unrelated to the file order) and admitted in that order
at mean rate N / L per hour, where L is the ward's mean length of stay and N the target number of concurrent
patients (``--concurrency``), so about N patients are present (Little's law). ``--arrivals``:

* ``poisson`` (default): a Poisson process (exponential gaps, seeded from the ward name): the standard model
  of unscheduled ICU admissions; the census then varies (about N +- sqrt(N)), as a real ward's does.
* ``steady``: one admission every L / N hours, ``floor(i x L / N)``: the census hardly moves. A stress test
  for the forecast: the rolling average then only misses the patients' risk, not the census.

At every ``--every-h`` hours T of this clock, a patient admitted at A is present when its row
``r = T - A - 1`` (the last completed hour) exists; the forecast uses the calibrated probabilities of that
row (:func:`vigil.demand.aggregate.forecast`, the job's code path) over the patients in the resource's risk
set (``sepsis_onset``: not yet septic; ``news2_emergency``: everyone present). The realised count is the
number of those patients who needed it within h hours (:mod:`vigil.demand.labels`).

Scored, after a warm-up (``--warmup-h``, the ward fills up) and once the baseline has history:

* **coverage** of the central 50/90/95% intervals: the share of realised counts inside; beside it the
  probability the forecast itself gives the interval (at least the level: counts are discrete), and the
  coverage of the randomised probability integral transform (PIT; Czado, Gneiting & Held 2009), which is
  exactly the level for a calibrated discrete forecast: the fair test of "within 5 points of nominal".
* **MAE** of the expected count against a rolling-average baseline: the mean realised count of the previous
  ``--baseline-windows`` non-overlapping h-hour windows of the same ward (known at T); against a
  census-adjusted rolling rate (the same windows' realised count per patient at risk, times the patients at
  risk now: a stronger baseline that knows the census but nothing about the patients); and against the ward's
  mean over the whole period (a hindsight constant, for reference). Beside them the *noise floor*: the MAE the
  expected count would have if the forecast distribution were exactly right (``E|X - E X|``): with these
  per-patient probabilities the expected count cannot do better on average.
* **reliability** of the patient-level probabilities on the split's rows (the calibration's check on data
  it was not fitted on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.config import DemandResource
from vigil.demand.aggregate import WardSnapshot, forecast
from vigil.demand.calibration import Calibration, reliability
from vigil.demand.labels import news2_within, onset_within, recent_max
from vigil.demand.scored import ScoredRows, news2_features_of
from vigil.errors import ConfigError

__all__ = ["BacktestConfig", "Case", "ward_schedule", "simulate", "summarise", "rolling_baseline",
           "pit_coverage", "patient_reliability", "census_baseline", "ARRIVALS"]  # fmt: skip

ARRIVALS = ("poisson", "steady")


@dataclass(frozen=True)
class BacktestConfig:
    """How the held-out stays are replayed and scored (see the module docstring)."""

    concurrency: int = 20
    every_h: int = 6
    warmup_h: int = 96
    baseline_windows: int = 4
    horizons: tuple[int, ...] = (6, 12, 24)
    levels: tuple[float, ...] = (0.5, 0.9, 0.95)
    exact_max: int = 200
    arrivals: str = "poisson"
    seed: int = 0  # of the Poisson admission schedule (with the ward's name)

    def check(self) -> None:
        if self.concurrency < 1 or self.every_h < 1 or self.baseline_windows < 1 or self.warmup_h < 0:
            msg = "backtest: concurrency, every_h and baseline_windows must be >= 1, warmup_h >= 0"
            raise ConfigError(msg)
        if self.arrivals not in ARRIVALS:
            msg = f"backtest: arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}"
            raise ConfigError(msg)
        bad = [h for h in self.horizons if h % self.every_h]
        if bad:
            msg = f"backtest: horizons {bad} h are not multiples of the forecast step {self.every_h} h"
            raise ConfigError(msg)


@dataclass
class Case:
    """One forecast and what happened: ward, resource, horizon, clock time T (hours)."""

    ward: str
    resource: str
    horizon_h: int
    t_h: int
    patients: int
    expected: float
    var: float
    intervals: dict[float, tuple[int, int]]
    mass: dict[float, float]
    pit: tuple[float, float]
    observed: int
    method: str
    baseline: float | None = None
    scored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _order_key(pid: str) -> str:
    return hashlib.sha256(pid.encode()).hexdigest()


def ward_schedule(
    rows: ScoredRows, concurrency: int, arrivals: str = "poisson", seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per ward: (stay indices in admission order, admission hour of each); see the module docstring."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    from vigil.replay import ward_for

    wards = np.array([ward_for(u) for u in rows.units])
    for ward in sorted(set(wards.tolist())):
        stays = np.flatnonzero(wards == ward)
        stays = np.array(sorted(stays.tolist(), key=lambda i: _order_key(str(rows.patient_ids[i]))), dtype=np.int64)
        gap = float(rows.idx.n_rows[stays].mean()) / concurrency
        if arrivals == "steady":
            at = np.arange(stays.size) * gap
        else:
            rng = np.random.default_rng([int(seed), int(_order_key(ward)[:8], 16)])
            at = np.concatenate([[0.0], np.cumsum(rng.exponential(gap, size=stays.size - 1))])
        out[ward] = (stays, np.floor(at).astype(np.int64))
    return out


def _labels(rows: ScoredRows, horizons: Sequence[int]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(risk set, needed within h) per row for each need and horizon."""
    out = {}
    everyone = np.ones(rows.risk.shape[0], dtype=bool)
    for h in horizons:
        out["sepsis_onset", h] = onset_within(rows.idx, h)
        out["news2_emergency", h] = (everyone, news2_within(rows.idx, rows.news2, h))
    return out


def simulate(
    rows: ScoredRows, calibration: Calibration, resources: Sequence[DemandResource], cfg: BacktestConfig,
    *, keep_probabilities: bool = False,
) -> list[Case]:  # fmt: skip
    """Every forecast on the clock grid with its realised count (baselines and scoring: :func:`summarise`);
    ``keep_probabilities``: each case keeps its patients' probabilities in ``extra["p"]`` (for fitting)."""
    cfg.check()
    calibration.check(cfg.horizons)
    labels = _labels(rows, cfg.horizons)
    window = calibration.history_window_h
    news2_max = None if window is None else recent_max(rows.idx, rows.news2, window)
    features = news2_features_of(rows) if calibration.news2_model else None
    from vigil.progress import iterate

    cases: list[Case] = []
    schedule = ward_schedule(rows, cfg.concurrency, cfg.arrivals, cfg.seed)
    for ward, (stays, admit) in iterate(schedule.items(), len(schedule), "backtest wards", unit="ward"):
        first, n_rows = rows.idx.first[stays], rows.idx.n_rows[stays]
        for t in range(cfg.every_h, int(admit[-1]) + 1, cfg.every_h):
            r = t - admit - 1
            present = np.flatnonzero((r >= 0) & (r < n_rows))
            at = first[present] + r[present]  # global row of each present patient
            for res in resources:
                for h in cfg.horizons:
                    risk_set, need = labels[res.need, h]
                    sel = at[risk_set[at]]
                    snap = WardSnapshot(ward, rows.risk[sel], rows.news2[sel],
                                        news2_max=None if news2_max is None else news2_max[sel],
                                        news2_features=None if features is None else features[sel])
                    f = forecast(snap, res, h, calibration, levels=cfg.levels, exact_max=cfg.exact_max)
                    y = int(need[sel].sum())
                    cases.append(Case(
                        ward=ward, resource=res.name, horizon_h=h, t_h=t, patients=int(sel.size), expected=f.expected,
                        var=f.dist.var, intervals=f.intervals,
                        mass={lv: f.dist.mass(lo, hi) for lv, (lo, hi) in f.intervals.items()},
                        pit=f.dist.pit(y), observed=y, method=f.dist.method,
                        extra={"mad": _mean_abs_dev(f.dist.pmf(), f.expected),
                               **({"p": f.probabilities, "need": res.need} if keep_probabilities else {})},
                    ))  # fmt: skip
    return cases


def _mean_abs_dev(pmf: np.ndarray, mean: float) -> float:
    """``E|X - mean|`` under the forecast: the MAE its own expected count would have if it were exactly right."""
    return float(np.sum(pmf * np.abs(np.arange(pmf.size) - mean)))


def rolling_baseline(observed: dict[int, int], t: int, horizon_h: int, windows: int) -> float | None:
    """Mean realised count of the ``windows`` previous non-overlapping ``horizon_h`` windows ending at or before
    ``t`` (None while that history is incomplete).

    >>> rolling_baseline({0: 1, 6: 3, 12: 2, 18: 0}, 18, 6, 2), rolling_baseline({12: 2}, 18, 6, 2)
    (2.5, None)
    """
    prev = [observed.get(t - j * horizon_h) for j in range(1, windows + 1)]
    if any(v is None for v in prev):
        return None
    return float(np.mean(np.asarray(prev, dtype=np.float64)))


def census_baseline(
    observed: dict[int, int], at_risk: dict[int, int], t: int, horizon_h: int, windows: int,
) -> float | None:  # fmt: skip
    """The same windows' realised count per patient at risk, times the patients at risk at ``t``.

    >>> census_baseline({0: 1, 6: 3}, {0: 10, 6: 10, 12: 30}, 12, 6, 2)  # 4 in 20 patient-windows, 30 now
    6.0
    """
    prev = [(observed.get(t - j * horizon_h), at_risk.get(t - j * horizon_h)) for j in range(1, windows + 1)]
    if any(y is None or n is None for y, n in prev) or t not in at_risk:
        return None
    n_prev = sum(n for _, n in prev if n is not None)
    rate = sum(y for y, _ in prev if y is not None) / n_prev if n_prev else 0.0
    return float(rate * at_risk[t])


def pit_coverage(pit: np.ndarray, level: float) -> float:
    """Expected share of randomised PIT values in the central ``level`` band ``[(1-L)/2, (1+L)/2]``: for each
    case the PIT is uniform on ``[F(y-1), F(y)]``.

    >>> pit_coverage(np.array([[0.0, 0.5], [0.5, 1.0]]), 0.5)
    0.5
    """
    a, b = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo, hi = pit[:, 0], pit[:, 1]
    width = hi - lo
    inside = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
    share = np.where(width > 1e-15, inside / np.maximum(width, 1e-15), ((lo >= a) & (lo <= b)).astype(float))
    return float(share.mean())


def _score_block(cases: list[Case], levels: Sequence[float]) -> dict[str, Any]:
    exp = np.array([c.expected for c in cases])
    obs = np.array([c.observed for c in cases], dtype=np.float64)
    base = np.array([c.baseline for c in cases], dtype=np.float64)
    hind = np.array([c.extra["hindsight"] for c in cases], dtype=np.float64)
    cens = np.array([c.extra["census_baseline"] for c in cases], dtype=np.float64)
    pit = np.array([c.pit for c in cases], dtype=np.float64)
    mae_m, mae_b = float(np.abs(exp - obs).mean()), float(np.abs(base - obs).mean())
    mae_c = float(np.abs(cens - obs).mean())
    cov: dict[str, Any] = {}
    for lv in levels:
        hit = np.array([c.intervals[lv][0] <= c.observed <= c.intervals[lv][1] for c in cases])
        cov[f"{lv:g}"] = {
            "nominal": lv, "observed": float(hit.mean()), "forecast_mass": float(np.mean([c.mass[lv] for c in cases])),
            "pit": pit_coverage(pit, lv), "mean_width": float(np.mean([c.intervals[lv][1] - c.intervals[lv][0]
                                                                        for c in cases])),
        }  # fmt: skip
    return {
        "forecasts": len(cases), "mean_patients": float(np.mean([c.patients for c in cases])),
        "mean_expected": float(exp.mean()), "mean_observed": float(obs.mean()),
        "mae_model": mae_m, "mae_rolling_baseline": mae_b, "mae_hindsight_mean": float(np.abs(hind - obs).mean()),
        "mae_census_baseline": mae_c, "mae_noise_floor": float(np.mean([c.extra["mad"] for c in cases])),
        "mae_reduction_vs_baseline": 1.0 - mae_m / mae_b if mae_b > 0 else None,
        "mae_reduction_vs_census_baseline": 1.0 - mae_m / mae_c if mae_c > 0 else None,
        "coverage": cov, "methods": {m: sum(c.method == m for c in cases) for m in sorted({c.method for c in cases})},
    }  # fmt: skip


def summarise(cases: list[Case], cfg: BacktestConfig) -> tuple[dict[str, Any], list[Case]]:
    """Attach baselines, keep the scored cases (after the warm-up, with a complete baseline history) and
    score them per resource x horizon (pooled over wards, and per ward)."""
    series: dict[tuple[str, str, int], dict[int, int]] = {}
    at_risk: dict[tuple[str, str, int], dict[int, int]] = {}
    for c in cases:
        series.setdefault((c.ward, c.resource, c.horizon_h), {})[c.t_h] = c.observed
        at_risk.setdefault((c.ward, c.resource, c.horizon_h), {})[c.t_h] = c.patients
    for c in cases:
        key = (c.ward, c.resource, c.horizon_h)
        c.baseline = rolling_baseline(series[key], c.t_h, c.horizon_h, cfg.baseline_windows)
        c.extra["census_baseline"] = census_baseline(series[key], at_risk[key], c.t_h, c.horizon_h,
                                                     cfg.baseline_windows)  # fmt: skip
        c.scored = c.baseline is not None and c.t_h >= cfg.warmup_h
    scored = [c for c in cases if c.scored]
    means: dict[tuple[str, str, int], float] = {}
    for key in series:
        vals = [c.observed for c in scored if (c.ward, c.resource, c.horizon_h) == key]
        means[key] = float(np.mean(vals)) if vals else 0.0
    for c in scored:
        c.extra["hindsight"] = means[c.ward, c.resource, c.horizon_h]
    out: dict[str, Any] = {}
    for res in sorted({c.resource for c in scored}):
        out[res] = {}
        for h in cfg.horizons:
            block = [c for c in scored if c.resource == res and c.horizon_h == h]
            if not block:
                continue
            out[res][str(h)] = _score_block(block, cfg.levels)
            out[res][str(h)]["wards"] = {
                w: _score_block([c for c in block if c.ward == w], cfg.levels) for w in sorted({c.ward for c in block})
            }  # fmt: skip
    return out, scored


def patient_reliability(
    rows: ScoredRows, calibration: Calibration, resources: Sequence[DemandResource], horizons: Sequence[int],
) -> dict[str, Any]:  # fmt: skip
    """Reliability of the patient-level probabilities over the risk-set rows of ``rows``, per resource and horizon."""
    labels = _labels(rows, horizons)
    window = calibration.history_window_h
    news2_max = None if window is None else recent_max(rows.idx, rows.news2, window)
    features = news2_features_of(rows) if calibration.news2_model else None
    out: dict[str, Any] = {}
    for res in resources:
        out[res.name] = {}
        for h in horizons:
            risk_set, need = labels[res.need, h]
            p = calibration.probabilities(res.need, h, risk=rows.risk[risk_set], news2=rows.news2[risk_set],
                                          news2_max=None if news2_max is None else news2_max[risk_set],
                                          news2_features=None if features is None else features[risk_set],
                                          rule_at=res.rule_news2_at, rule_p=res.rule_p)  # fmt: skip
            rel = reliability(p, need[risk_set])
            if res.rule_news2_at is not None:
                rule = rows.news2[risk_set] >= res.rule_news2_at
                hit = need[risk_set][rule]
                rel["rule_group"] = {"rows": int(rule.sum()), "p": float(p[rule].mean()) if rule.any() else None,
                                     "observed": float(hit.mean()) if rule.any() else None}  # fmt: skip
            out[res.name][str(h)] = rel
    return out
