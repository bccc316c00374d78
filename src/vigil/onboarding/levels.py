"""Choosing a site's operating threshold and alert level.

The alert level is replayed through the worker's own policy engine (:func:`vigil.evaluation.alerting.simulate_policy`)
at the configured persistence, refractory window and escalation, over a grid of candidate levels that is
scale-free: the score quantiles giving row alert rates from 0.1 % to 30 % on the rows at hand (so a model whose
scores sit low, e.g. after site recalibration, gets as fine a grid as one whose scores sit high).

* labelled (:func:`choose_level_labelled`): among levels whose alerts per patient-day stay within
  ``budget x (1 - headroom)``, the one with the highest normalized utility of ``score >= level`` (or, with
  ``by="early"``, the highest share of septic stays alerted before onset); ties go to the lower burden (``early``:
  to the higher burden within the cap);
* label-free (:func:`choose_level_unlabelled`): the lowest level whose alerts per patient-day stay within
  ``budget x (1 - headroom)``: the site's own score distribution gives the budgeted alert rate, no label used;
* threshold, label-free (:func:`quantile_threshold`): the site score at which the same share of rows is flagged
  as the base model flagged on its own training rows at its threshold (the card's ``reference.alert_rate``).

``headroom`` (default 0.1) keeps the choice below the budget because it is estimated on a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vigil.config import AlertSettings
from vigil.evaluation.alerting import alert_summary, simulate_policy, stay_alerts, stay_table
from vigil.evaluation.utility import DEFAULT_GRID, best_threshold, normalized_utility

__all__ = ["LevelPoint", "level_grid", "replay_levels", "choose_level_labelled", "choose_level_unlabelled",
           "refine_level", "refine_unlabelled", "refine_labelled", "quantile_threshold", "site_threshold",
           "model_risk_only"]  # fmt: skip

RATES = np.geomspace(0.001, 0.30, 40)


@dataclass(frozen=True, slots=True)
class LevelPoint:
    level: float
    burden: float  # alerts per patient-day
    early: float | None  # share of evaluable septic stays alerted before onset (None without labels)
    utility: float | None  # normalized utility of score >= level (None without labels)
    ppv_stay: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_risk_only(policy: AlertSettings) -> AlertSettings:
    """``policy`` with only the model-risk rule on (its persistence, refractory window, escalation) and no
    configured ``raise_at`` or per-unit override, so the level replayed is the one passed in."""
    from vigil.config import RuleSettings

    off = RuleSettings(enabled=False)
    mr = policy.model_risk.model_copy(update={"raise_at": None, "enabled": True})
    return policy.model_copy(update={"model_risk": mr, "news2_urgent": off, "news2_emergency": off,
                                     "news2_single": off, "overrides": {}})  # fmt: skip


def level_grid(scores: np.ndarray, rates: np.ndarray = RATES) -> np.ndarray:
    """Distinct candidate levels: the score quantiles flagging ``rates`` of the rows (4 significant digits)."""
    s = np.asarray(scores, dtype=np.float64)
    if not s.size:
        return np.zeros(0)
    q = np.quantile(s, 1 - np.asarray(rates))
    return np.unique(np.array([float(f"{v:.4g}") for v in q]))


def replay_levels(scores: np.ndarray, stay_start: np.ndarray, policy: AlertSettings, levels: np.ndarray,
                  labels: np.ndarray | None = None) -> list[LevelPoint]:  # fmt: skip
    """Each level replayed through the worker's policy on the rows (labels optional: burden only without)."""
    pol = model_risk_only(policy)
    zeros = np.zeros(len(scores))
    y = np.zeros(len(scores), np.int8) if labels is None else np.asarray(labels)
    stays = stay_table(y, stay_start)
    out = []
    for lv in levels:
        fired = simulate_policy(pol, risk=scores, threshold=float(lv), news2_total=zeros, stay_start=stay_start)
        s = alert_summary(stays, stay_alerts(fired["model_risk"], stays))
        util = None
        if labels is not None:
            u = normalized_utility(y, np.asarray(scores) >= lv, stay_start)
            util = u if np.isfinite(u) else None
        out.append(LevelPoint(float(lv), float(s["alerts_per_patient_day"] or 0.0),
                              s["share_septic_alerted_early"] if labels is not None else None, util,
                              s["ppv_stay"] if labels is not None else None))  # fmt: skip
    return out


def choose_level_labelled(points: list[LevelPoint], budget: float, headroom: float = 0.1,
                          by: str = "utility") -> LevelPoint | None:  # fmt: skip
    """Highest utility (``by="early"``: highest share of septic stays alerted before onset, the criterion of
    ``vigil evaluate --policy-sweep``) within ``budget x (1 - headroom)``.

    Ties: ``utility`` to the lower burden; ``early`` to the *higher* burden (the lower level) within the cap. On a
    sample of a few dozen septic stays the share alerted early is a step function of the level, flat over a wide
    range; on the site's population it keeps rising as the level falls, so among levels that tie on the sample the
    one that spends the budget alerts more septic stays early (docs/notes/s7-onboarding.md: the old tie rule once
    chose 0.09 alerts per patient-day and 36.5 % early where the cap allowed 0.18).

    >>> pts = [LevelPoint(0.2, 0.17, 0.8, 0.40, 0.2), LevelPoint(0.3, 0.10, 0.8, 0.45, 0.3)]
    >>> choose_level_labelled(pts, 0.2, by="early").level, choose_level_labelled(pts, 0.2).level
    (0.2, 0.3)
    """
    if by not in ("utility", "early"):
        raise ValueError(f"by must be utility or early, got {by!r}")
    cap = budget * (1 - headroom)
    ok = [p for p in points if p.burden <= cap and getattr(p, by) is not None]
    if not ok:
        return None
    sign = 1.0 if by == "early" else -1.0
    return max(ok, key=lambda p: (round(getattr(p, by) or 0.0, 6), sign * p.burden))


def choose_level_unlabelled(points: list[LevelPoint], budget: float, headroom: float = 0.1) -> LevelPoint | None:
    """The lowest level (most alerts) within ``budget x (1 - headroom)``.

    >>> pts = [LevelPoint(0.3, 0.5, None, None, None), LevelPoint(0.5, 0.17, None, None, None),
    ...        LevelPoint(0.7, 0.05, None, None, None)]
    >>> choose_level_unlabelled(pts, 0.2).level
    0.5
    """
    cap = budget * (1 - headroom)
    ok = [p for p in points if p.burden <= cap]
    return min(ok, key=lambda p: p.level) if ok else None


def refine_level(scores: np.ndarray, stay_start: np.ndarray, policy: AlertSettings, points: list[LevelPoint],
                 choose: Callable[[list[LevelPoint]], LevelPoint | None], cap: float,
                 labels: np.ndarray | None = None, steps: int = 6,
                 ) -> tuple[LevelPoint | None, list[LevelPoint]]:  # fmt: skip
    """``choose`` on ``points``, refined: the grid's steps are ~20 % apart in alerts per patient-day, so a choice at
    the cap's edge can stop well short of it (0.158 for a cap of 0.18 on one site's sample). When the next lower
    grid level is over ``cap``, six bisection steps between the two (each a replay through the policy, with the
    labels when given) find the lowest level within the cap, and ``choose`` picks again among every point tried.
    Returns the chosen point and every point tried, in level order (each tried level is replayed: the burden need
    not be strictly monotone in the level)."""
    chosen = choose(points)
    tried = list(points)
    if chosen is None:
        return None, tried
    over = [p.level for p in points if p.level < chosen.level and p.burden > cap]
    lo, hi = (max(over), chosen.level) if over else (None, chosen.level)
    for _ in range(steps if lo is not None else 0):
        mid = float(f"{(lo + hi) / 2:.4g}")
        if not lo < mid < hi:
            break
        pt = replay_levels(scores, stay_start, policy, np.array([mid]), labels)[0]
        tried.append(pt)
        if pt.burden <= cap:
            hi = mid
        else:
            lo = mid
    tried.sort(key=lambda p: p.level)
    return choose(tried), tried


def refine_unlabelled(scores: np.ndarray, stay_start: np.ndarray, policy: AlertSettings, points: list[LevelPoint],
                      budget: float, headroom: float = 0.1) -> tuple[LevelPoint | None, list[LevelPoint]]:
    """:func:`choose_level_unlabelled` refined up to the cap (:func:`refine_level`)."""
    return refine_level(scores, stay_start, policy, points,
                        lambda pts: choose_level_unlabelled(pts, budget, headroom), budget * (1 - headroom))


def refine_labelled(scores: np.ndarray, stay_start: np.ndarray, policy: AlertSettings, points: list[LevelPoint],
                    labels: np.ndarray, budget: float, headroom: float = 0.1,
                    by: str = "utility") -> tuple[LevelPoint | None, list[LevelPoint]]:  # fmt: skip
    """:func:`choose_level_labelled` refined next to the cap (:func:`refine_level`)."""
    return refine_level(scores, stay_start, policy, points,
                        lambda pts: choose_level_labelled(pts, budget, headroom, by), budget * (1 - headroom), labels)


def quantile_threshold(scores: np.ndarray, reference_rate: float) -> float:
    """The score above which ``reference_rate`` of ``scores`` lie (4 significant digits).

    >>> quantile_threshold(np.linspace(0, 1, 101), 0.2)
    0.8
    """
    return float(f"{float(np.quantile(np.asarray(scores, np.float64), 1 - reference_rate)):.4g}")


def site_threshold(scores: np.ndarray, labels: np.ndarray, stay_start: np.ndarray) -> tuple[float, float]:
    """(threshold, utility) maximising the normalized utility on the rows, over the default grid joined with the
    score quantiles (so a low-lying score scale still gets a fine grid)."""
    grid = np.unique(np.concatenate([DEFAULT_GRID, level_grid(scores, np.geomspace(0.001, 0.6, 60))]))
    return best_threshold(scores, labels, stay_start, grid)
