"""``vigil evaluate`` end to end: select, score, evaluate (:mod:`vigil.evaluation.report`), write the report
(:mod:`vigil.evaluation.markdown`), and optionally the policy sweep (:mod:`vigil.evaluation.sweep`) and the
measurement-habit shifts (:mod:`vigil.evaluation.shifts`). It sits above those modules, so that none of them
imports back."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil.config import AlertSettings
from vigil.evaluation.report import (
    Evaluation,
    Scored,
    default_out,
    evaluate,
    jsonable,
    record_alert_policy,
    score_rows,
    subgroup_masks,
    summary_line,
    update_card,
)
from vigil.evaluation.selection import DEFAULT_DATA, select_rows
from vigil.registry import ModelRef

__all__ = ["run_evaluation", "DEFAULT_DATA"]


def run_evaluation(
    ref: ModelRef,
    data: Path,
    *,
    policy: AlertSettings,
    split: str | None = None,
    out: Path | None = None,
    limit: int | None = None,
    card: bool = False,
    policy_sweep: bool = False,
    budget: float = 0.2,
    shifts: bool = False,
) -> tuple[Evaluation, Path, dict[str, Any]]:
    """Select, score, evaluate and write ``report.md``, ``metrics.json`` and the PNGs to ``out`` (default
    :func:`default_out`); with ``card``, also record the metrics in the model card; with ``shifts``, also
    ``shifts.md`` / ``shifts.json`` (:mod:`vigil.evaluation.shifts`). Returns the evaluation, the output folder
    and the summary line."""
    from vigil.evaluation.markdown import write_outputs
    from vigil.scoring import Scorer

    t0 = time.perf_counter()
    sel = select_rows(ref, data, split, limit)
    t_load = time.perf_counter()
    scorer = Scorer(ref, threads=max(1, min(4, os.cpu_count() or 1)))
    scored = score_rows(scorer, sel.df)
    t_score = time.perf_counter()
    ev = evaluate(ref, sel, scored, policy)
    if ref.model_card.abstention is not None:  # share abstained, PPV and sensitivity of confident vs all alerts
        from vigil.evaluation.abstention import abstention_report

        ev.metrics["abstention"] = abstention_report(ref, scorer, sel.df, scored, policy)
    ev.metrics["evaluated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    folder = Path(out) if out is not None else default_out(ref, sel.split)
    write_outputs(ev, folder)
    t_done = time.perf_counter()
    ev.metrics["timing_s"] = {"load": t_load - t0, "score": t_score - t_load, "evaluate_and_write": t_done - t_score}
    (folder / "metrics.json").write_text(json.dumps(jsonable(ev.metrics), indent=2, allow_nan=False) + "\n")
    if card:
        update_card(ref, sel.split, {k: v for k, v in ev.metrics.items() if k != "timing_s"})
    summary = summary_line(ev, time.perf_counter() - t0)
    if ev.metrics.get("abstention"):
        ab = ev.metrics["abstention"]
        summary["abstention"] = {"share_alerts_indeterminate": ab["share_alerts_indeterminate"],
                                 "ppv_all": ab["all"]["ppv_stay"], "ppv_confident": ab["confident"]["ppv_stay"],
                                 "ppv_relative_gain": ab["ppv_relative_gain"]}  # fmt: skip
    if policy_sweep:
        summary["policy_sweep"] = _policy_sweep(ref, scored, folder, sel.split, budget, policy)
        if card:
            summary["policy_sweep"]["alert_policy"] = record_alert_policy(ref, summary["policy_sweep"], policy)
    if shifts:
        from vigil.evaluation.shifts import run_shifts, write_shifts

        result = run_shifts(ref, sel, scorer, policy)
        write_shifts(result, folder, f"{ref.name}:{ref.version} on {sel.source} ({sel.split})")
        summary["shifts"] = {k: {"utility": r["utility"], "auroc": r["auroc"]} for k, r in result["shifts"].items()}
    return ev, folder, summary


def _policy_sweep(
    ref: ModelRef, scored: Scored, folder: Path, split: str, budget: float, policy: AlertSettings
) -> dict[str, Any]:
    """The model-risk rule grid on the evaluated rows (see :mod:`vigil.evaluation.sweep`): policy_sweep.md,
    policy_sweep.json and tradeoff.png in ``folder``; returns the chosen rule and its numbers."""
    from vigil.evaluation import sweep

    pts = sweep.sweep_policies(scored.probs, scored.labels, scored.stay_start, ref.threshold,
                               escalate_by=policy.model_risk.escalate_by)  # fmt: skip
    chosen = sweep.choose(pts, budget)
    # the card can carry only the raise level: persistence and refractory window are the configuration's, shared
    # by every model, so the level recorded is the best one under those
    mr = policy.model_risk
    configured = sweep.choose([p for p in pts if (p.persistence, p.refractory_h) == (mr.persistence,
                                                                                      mr.refractory_h)], budget)
    news2 = sweep.news2_point(scored.screens["news2_total"], scored.labels, scored.stay_start)
    title = f"{ref.name}:{ref.version}, set A {split} split: burden vs septic stays alerted before onset"
    sweep.plot_tradeoff(pts, chosen, news2, budget, folder / "tradeoff.png", title)
    level = ref.alert_level if configured is None else (configured.raise_at or ref.threshold)
    units = sweep.per_unit_levels(scored.probs, scored.labels, scored.stay_start,
                                  subgroup_masks(scored.static)["unit"], ref.threshold, level, mr.persistence,
                                  mr.refractory_h, mr.escalate_by, budget)  # fmt: skip
    (folder / "policy_sweep.md").write_text(sweep.markdown(pts, chosen, news2, budget, configured)
                                            + sweep.unit_markdown(units, level, budget))

    def point(p: sweep.SweepPoint | None) -> dict[str, Any] | None:
        return None if p is None else {**p.rule(), "burden": p.burden, "early": p.early,
                                       "lead_median_h": p.lead_median_h, "ppv": p.ppv}  # fmt: skip

    result = {"split": split, "budget": budget, "chosen": point(chosen), "chosen_as_configured": point(configured),
              "news2_ge5": news2, "per_unit": {"shared_level": level, "units": units},
              "points": [{**p.rule(), "burden": p.burden, "early": p.early, "lead_median_h": p.lead_median_h,
                          "ppv": p.ppv, "in_12h": p.in_12h} for p in pts]}  # fmt: skip
    (folder / "policy_sweep.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    return {k: v for k, v in result.items() if k != "points"}
