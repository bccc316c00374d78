"""Choosing the default alert policy on validation data: the burden vs early-detection trade-off.

``vigil evaluate --policy-sweep`` replays a grid of model-risk rules (raise level, persistence, refractory
window; hysteresis at 0.8 x the raise level) through the worker's own policy engine on the evaluated rows,
and reports for each: alerts per patient-day, the share of septic stays (not septic on arrival) alerted
before onset, the median lead time, and the stay-level PPV. The recommended rule is the one with the
highest early share among those within the burden budget (default 0.2 alerts per patient-day) and a
median lead time of at least 6 h; ties go to the lower burden. Run it on the **validation** split; read
the chosen rule's numbers on the test split (``vigil evaluate --split test``) — never tune on test.

The plot (``tradeoff.png``) shows every rule, the Pareto frontier, the budget, the chosen rule and the
NEWS2 >= 5 rule (crossing, re-arm below it) on the same rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vigil.config import AlertSettings, RuleSettings
from vigil.evaluation.alerting import alert_summary, crossings, simulate_policy, stay_alerts, stay_table

__all__ = ["SweepPoint", "sweep_policies", "choose", "plot_tradeoff", "GRID", "per_unit_levels", "unit_markdown"]

GRID: dict[str, tuple[Any, ...]] = {
    # None = the card threshold; levels below it are skipped (a model's threshold sets its scale: 0.58 for the
    # TCN, 0.37 for the gradient-boosted trees, whose useful levels lie in between)
    "raise_at": (None, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90),
    "persistence": (1, 2, 3, 4),
    "refractory_h": (0.0, 12.0, 24.0, 48.0, 72.0),
}


@dataclass(frozen=True, slots=True)
class SweepPoint:
    raise_at: float | None
    persistence: int
    refractory_h: float
    burden: float  # alerts per patient-day
    early: float  # share of evaluable septic stays alerted before onset
    lead_median_h: float | None
    ppv: float | None
    in_12h: float | None  # share with an alert in the 12 h before onset

    def rule(self) -> dict[str, Any]:
        return {"raise_at": self.raise_at, "persistence": self.persistence, "refractory_h": self.refractory_h}


def _policy(raise_at: float | None, persistence: int, refractory_h: float, escalate_by: float | None) -> AlertSettings:
    off = RuleSettings(enabled=False)
    return AlertSettings(
        model_risk=RuleSettings(raise_at=raise_at, persistence=persistence, refractory_h=refractory_h,
                                escalate_by=escalate_by, severity="high"),  # fmt: skip
        news2_urgent=off, news2_emergency=off, news2_single=off,
    )


def sweep_policies(
    probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, threshold: float,
    grid: dict[str, tuple[Any, ...]] | None = None, escalate_by: float | None = None,
) -> list[SweepPoint]:  # fmt: skip
    """Every model-risk rule of ``grid`` replayed through :func:`simulate_policy` on the same rows
    (escalations, with ``escalate_by``, count as alerts)."""
    g = grid or GRID
    stays = stay_table(labels, stay_start)
    zeros = np.zeros(probs.shape[0])
    points = []
    for raise_at, persistence, refractory in itertools.product(g["raise_at"], g["persistence"], g["refractory_h"]):
        if raise_at is not None and raise_at < threshold:
            continue
        pol = _policy(raise_at, persistence, refractory, escalate_by)
        fired = simulate_policy(pol, risk=probs, threshold=threshold, news2_total=zeros,
                                stay_start=stay_start)["model_risk"]  # fmt: skip
        s = alert_summary(stays, stay_alerts(fired, stays))
        points.append(SweepPoint(raise_at, persistence, refractory, float(s["alerts_per_patient_day"] or 0.0),
                                 float(s["share_septic_alerted_early"] or 0.0), s["lead_time_h"]["median"],
                                 s["ppv_stay"], s["share_septic_alerted_12h_before_onset"]))  # fmt: skip
    return points


def news2_point(news2_total: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, level: int = 5) -> dict[str, Any]:
    """The NEWS2 >= ``level`` rule (crossing, re-arm below it) on the same rows, as a comparison point."""
    stays = stay_table(labels, stay_start)
    fired = crossings(news2_total, stay_start, on=level, rearm_below=level)
    s = alert_summary(stays, stay_alerts(fired, stays))
    return {"rule": f"NEWS2>={level}", "burden": s["alerts_per_patient_day"], "early": s["share_septic_alerted_early"],
            "lead_median_h": s["lead_time_h"]["median"], "ppv": s["ppv_stay"]}  # fmt: skip


def choose(points: list[SweepPoint], budget: float = 0.2, min_lead_h: float = 6.0) -> SweepPoint | None:
    """The highest early share within the burden budget with a median lead >= ``min_lead_h`` (ties: lower
    burden, then fewer rows of persistence). None when no rule fits the budget."""
    ok = [p for p in points if p.burden <= budget and (p.lead_median_h or 0.0) >= min_lead_h]
    if not ok:
        return None
    return max(ok, key=lambda p: (round(p.early, 4), -p.burden, -p.persistence))


def pareto(points: list[SweepPoint]) -> list[SweepPoint]:
    """Rules no other rule beats on both burden (lower) and early share (higher), by burden."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.burden, -p.early)):
        if p.early > best:
            front.append(p)
            best = p.early
    return front


def plot_tradeoff(points: list[SweepPoint], chosen: SweepPoint | None, news2: dict[str, Any], budget: float,
                  path: Path, title: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([p.burden for p in points], [p.early for p in points], s=12, alpha=0.5, label="model-risk rules")
    front = pareto(points)
    ax.plot([p.burden for p in front], [p.early for p in front], "-", lw=1.5, label="Pareto frontier")
    if news2.get("burden") is not None:
        ax.scatter([news2["burden"]], [news2["early"]], marker="s", s=50, color="tab:red", label=news2["rule"])
    if chosen is not None:
        ax.scatter([chosen.burden], [chosen.early], marker="*", s=180, color="tab:green", label="chosen default")
    ax.axvline(budget, ls="--", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("alerts per patient-day (log scale)")
    ax.set_ylabel("septic stays alerted before onset")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(points: list[SweepPoint], chosen: SweepPoint | None, news2: dict[str, Any], budget: float,
             configured: SweepPoint | None = None) -> str:  # fmt: skip
    def fmt(x: float | None, pct: bool = False) -> str:
        if x is None:
            return "-"
        return f"{100 * x:.1f} %" if pct else f"{x:.3g}"

    rows = ["| raise at | persistence | refractory h | alerts/patient-day | septic alerted early | median lead h |"
            " PPV (stays) | alerted in 12 h before onset |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pareto(points):
        mark = " **(chosen)**" if p == chosen else ""
        rows.append(f"| {'card' if p.raise_at is None else p.raise_at}{mark} | {p.persistence} | {p.refractory_h:g} | "
                    f"{p.burden:.3f} | {fmt(p.early, True)} | {fmt(p.lead_median_h)} | {fmt(p.ppv, True)} | "
                    f"{fmt(p.in_12h, True)} |")  # fmt: skip
    head = (f"## Alert policy sweep\n\n{len(points)} model-risk rules replayed through the policy engine; the "
            f"Pareto frontier below (no rule beats these on both burden and early share). Budget {budget:g} "
            f"alerts per patient-day, median lead >= 6 h.\n\n")  # fmt: skip
    pick = (f"Chosen: raise at {'the card threshold' if chosen.raise_at is None else chosen.raise_at}, persistence "
            f"{chosen.persistence}, refractory {chosen.refractory_h:g} h.\n\n" if chosen else
            "No rule fits the budget.\n\n")  # fmt: skip
    if configured is not None and configured != chosen:
        pick += (f"At the configured persistence ({configured.persistence}) and refractory window "
                 f"({configured.refractory_h:g} h), which the card cannot change: raise at "
                 f"{'the card threshold' if configured.raise_at is None else configured.raise_at} "
                 f"({configured.burden:.3f} alerts per patient-day, {fmt(configured.early, True)} alerted early): "
                 f"the level `--update-card` records.\n\n")  # fmt: skip
    comp = (f"{news2['rule']} on the same rows: {fmt(news2['burden'])} alerts per patient-day, "
            f"{fmt(news2['early'], True)} alerted early, median lead {fmt(news2['lead_median_h'])} h.\n\n")
    return head + pick + comp + "\n".join(rows) + "\n\n![Trade-off](tradeoff.png)\n"


def per_unit_levels(
    probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, unit_stays: dict[str, np.ndarray],
    threshold: float, level: float, persistence: int, refractory_h: float, escalate_by: float | None,
    budget: float = 0.2,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each ICU unit's own best raise level (same persistence and refractory window, the unit's stays only) beside
    the shared ``level``: a unit with fewer septic patients gets few alerts and catches fewer of them under one
    level for all, while a busier unit exceeds the budget. ``unit_stays``: stay masks per unit (``unknown`` is
    skipped: no override can address it). The levels go to ``alerts.overrides.<unit>.model_risk.raise_at``."""
    n_rows = np.diff(np.append(np.flatnonzero(stay_start), stay_start.size))
    grid = {"raise_at": tuple(sorted({*(x for x in GRID["raise_at"] if x is not None), level})),
            "persistence": (persistence,), "refractory_h": (refractory_h,)}  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for unit, stays in unit_stays.items():
        if unit == "unknown" or not stays.any():
            continue
        rows = np.repeat(stays, n_rows)
        pts = sweep_policies(probs[rows], labels[rows], stay_start[rows], threshold, grid, escalate_by)
        shared = next((p for p in pts if p.raise_at == level), None)
        own = choose(pts, budget)
        first = np.flatnonzero(stay_start[rows])
        septic = int(np.add.reduceat(labels[rows], first).astype(bool).sum()) if first.size else 0
        out[unit] = {"stays": int(stays.sum()), "septic_stays": septic,
                     "at_shared_level": None if shared is None else _as_dict(shared),
                     "own": None if own is None else _as_dict(own)}  # fmt: skip
    return out


def _as_dict(p: SweepPoint) -> dict[str, Any]:
    return {**p.rule(), "burden": p.burden, "early": p.early, "lead_median_h": p.lead_median_h, "ppv": p.ppv}


def unit_markdown(units: dict[str, dict[str, Any]], level: float, budget: float) -> str:
    """The per-unit section of ``policy_sweep.md``, with the ``alerts.overrides`` that would apply it."""
    if not units:
        return ""

    def cell(p: dict[str, Any] | None) -> str:
        if p is None:
            return "- | - | -"
        ppv = "-" if p["ppv"] is None else f"{100 * p['ppv']:.1f} %"
        return f"{p['burden']:.3f} | {100 * p['early']:.1f} % | {ppv}"

    rows = [f"| unit | stays (septic) | alerts/patient-day at {level:g} | early | PPV | own level | alerts/patient-day "
            f"| early | PPV |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    yaml = ["alerts:", "  overrides:"]
    for unit, u in units.items():
        own = u["own"]
        rows.append(f"| {unit} | {u['stays']:,} ({u['septic_stays']:,}) | {cell(u['at_shared_level'])} | "
                    f"{'none fits' if own is None else own['raise_at']} | {cell(own)} |")  # fmt: skip
        if own is not None:
            yaml.append(f"    {unit}: {{model_risk: {{raise_at: {own['raise_at']}}}}}")
    text = (f"\n## Per ICU unit\n\nOne level for every unit spends the alert budget unevenly. Each unit's own best "
            f"level within {budget:g} alerts per patient-day (same persistence and refractory window; its stays "
            f"only):\n\n" + "\n".join(rows) + "\n")  # fmt: skip
    if len(yaml) > 2:
        text += ("\nTo apply them (configuration, per unit; the card's level stays the default):\n\n```yaml\n"
                 + "\n".join(yaml) + "\n```\n")  # fmt: skip
    return text

