"""The backtest's outputs: ``metrics.json``, ``report.md`` and ``calibration.png`` / ``timeline.png``.

:func:`run_backtest` scores the split, simulates the wards (:mod:`vigil.demand.backtest`) at the chosen
concurrency and arrival process and, for sensitivity, at half and double the concurrency and with the other
arrival process, then writes the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from vigil.config import DemandResource
from vigil.demand.backtest import ARRIVALS, BacktestConfig, Case, patient_reliability, simulate, summarise
from vigil.demand.calibration import Calibration, utc_now
from vigil.demand.fitting import score_split
from vigil.registry import ModelRef

__all__ = ["run_backtest", "GOAL_COVERAGE_POINTS", "GOAL_MAE_REDUCTION", "goals"]

GOAL_COVERAGE_POINTS = 0.05  # interval coverage within 5 points of nominal
GOAL_MAE_REDUCTION = 0.25  # expected-count MAE >= 25% below the rolling average at 12 h
GOAL_HORIZON = 12


def goals(metrics: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, per resource: PIT coverage within 5 points at every level and horizon; MAE at 12 h at
    least 25% below the rolling-average baseline."""
    out: dict[str, Any] = {}
    for res, by_h in metrics.items():
        worst = max(abs(c["pit"] - c["nominal"]) for b in by_h.values() for c in b["coverage"].values())
        worst_raw = max(abs(c["observed"] - c["forecast_mass"]) for b in by_h.values() for c in b["coverage"].values())
        red = (by_h.get(str(GOAL_HORIZON)) or {}).get("mae_reduction_vs_baseline")
        out[res] = {
            "coverage_max_abs_gap_pit": worst, "coverage_met": worst <= GOAL_COVERAGE_POINTS,
            "interval_hit_rate_max_gap_vs_forecast_mass": worst_raw,
            "mae_reduction_12h": red, "mae_met": red is not None and red >= GOAL_MAE_REDUCTION,
        }  # fmt: skip
    return out


def run_backtest(
    ref: ModelRef, data: Path, calibration: Calibration, resources: Sequence[DemandResource], *,
    split: str | None = None, out: Path, cfg: BacktestConfig | None = None, sensitivity: Sequence[int] | None = None,
    replicates: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """Score ``split``, backtest, write the outputs to ``out``; returns a short summary. With Poisson admissions
    the schedule is random: ``replicates`` schedules (seeds ``cfg.seed``, ``cfg.seed + 1``, ...) are scored at
    every ward size and summarised beside the first one's tables."""
    cfg = cfg or BacktestConfig()
    t0 = time.perf_counter()
    rows = score_split(ref, data, split)
    t_score = time.perf_counter()
    cases = simulate(rows, calibration, resources, cfg)
    metrics, scored = summarise(cases, cfg)
    sens: dict[str, Any] = {}
    for n in sensitivity if sensitivity is not None else (max(1, cfg.concurrency // 2), cfg.concurrency * 2):
        alt = replace(cfg, concurrency=n)
        sens[str(n)] = summarise(simulate(rows, calibration, resources, alt), alt)[0]
    other: dict[str, Any] = {}
    for arrivals in (a for a in ARRIVALS if a != cfg.arrivals):
        for n in sorted({max(1, cfg.concurrency // 2), cfg.concurrency, cfg.concurrency * 2}):
            alt = replace(cfg, arrivals=arrivals, concurrency=n)
            other.setdefault(arrivals, {})[str(n)] = summarise(simulate(rows, calibration, resources, alt), alt)[0]
    reps: dict[str, Any] = {}
    if cfg.arrivals == "poisson" and replicates > 1:
        for n in sorted({max(1, cfg.concurrency // 2), cfg.concurrency, cfg.concurrency * 2}):
            runs = []
            for k in range(replicates):
                alt = replace(cfg, concurrency=n, seed=cfg.seed + k)
                runs.append(goals(summarise(simulate(rows, calibration, resources, alt), alt)[0]))
            reps[str(n)] = _replicate_summary(runs)
    reliab = patient_reliability(rows, calibration, resources, cfg.horizons)
    doc = {
        "created_at": utc_now(),
        "model": {"name": ref.name, "version": ref.version},
        "calibration": {k: calibration.meta.get(k) for k in ("fitted_on", "created_at")},
        "data": {"file": rows.source, "split": rows.split, "stays": int(rows.idx.first.size),
                 "rows": int(rows.risk.size), "notes": rows.notes},
        "config": {**asdict(cfg), "resources": [r.model_dump() for r in resources]},
        "wards": _ward_facts(cases, scored),
        "forecasts": metrics, "goals": goals(metrics), "sensitivity_concurrency": sens,
        "sensitivity_arrivals": other, "replicates": {"seeds": replicates if reps else 1, "by_concurrency": reps},
        "goals_other_arrivals": {a: goals(by_n[str(cfg.concurrency)]) for a, by_n in other.items()},
        "patient_reliability": reliab,
    }  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _calibration_png(scored, reliab, cfg, out / "calibration.png")
    _timeline_png(cases, cfg, out / "timeline.png")
    doc["timing_s"] = {"load_and_score": t_score - t0, "backtest_and_write": time.perf_counter() - t_score}
    (out / "metrics.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render(doc), encoding="utf-8")
    return {
        "report": str(out / "report.md"),
        "goals": doc["goals"],
        "timing_s": doc["timing_s"],
        "mae_reduction": {r: {h: b["mae_reduction_vs_baseline"] for h, b in m.items()} for r, m in metrics.items()},
        "goals_other_arrivals": doc["goals_other_arrivals"], "replicates": doc["replicates"],
    }


def _replicate_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per resource over the replicate schedules: MAE reduction at 12 h and the largest PIT coverage gap (mean,
    min, max), and in how many of them each goal was met."""
    out: dict[str, Any] = {}
    for res in runs[0]:
        red = np.array([r[res]["mae_reduction_12h"] for r in runs], dtype=np.float64)
        gap = np.array([r[res]["coverage_max_abs_gap_pit"] for r in runs], dtype=np.float64)
        out[res] = {
            "mae_reduction_12h": {"mean": float(red.mean()), "min": float(red.min()), "max": float(red.max())},
            "coverage_max_abs_gap_pit": {"mean": float(gap.mean()), "min": float(gap.min()), "max": float(gap.max())},
            "mae_met": int(sum(r[res]["mae_met"] for r in runs)), "coverage_met": int(sum(r[res]["coverage_met"]
                                                                                       for r in runs)),
            "runs": len(runs),
        }  # fmt: skip
    return out


def _ward_facts(cases: list[Case], scored: list[Case]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in sorted({c.ward for c in cases}):
        mine = [c for c in scored if c.ward == w and c.horizon_h == min(x.horizon_h for x in cases)]
        ccr = [c.patients for c in mine if c.resource == "critical_care_review"] or [c.patients for c in mine]
        out[w] = {"clock_h": max(c.t_h for c in cases if c.ward == w),
                  "scored_forecast_times": len({c.t_h for c in mine}),
                  "mean_present": float(np.mean(ccr)) if ccr else None}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ figures
def _figure(ncols: int, nrows: int) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(5.0 * ncols, 4.0 * nrows), dpi=100)


def _calibration_png(scored: list[Case], reliab: dict[str, Any], cfg: BacktestConfig, path: Path) -> Path:
    """Per resource: ward-level expected vs realised count (equal-count bins), patient-level reliability, and
    the randomised PIT histogram (flat for a calibrated forecast)."""
    resources = sorted(reliab)
    fig = _figure(3, len(resources))
    axes = np.atleast_2d(fig.subplots(len(resources), 3))
    for i, res in enumerate(resources):
        ax_w, ax_p, ax_h = axes[i]
        top = 0.0
        for h in cfg.horizons:
            block = [c for c in scored if c.resource == res and c.horizon_h == h]
            if not block:
                continue
            exp = np.array([c.expected for c in block])
            obs = np.array([c.observed for c in block], dtype=np.float64)
            order = np.argsort(exp, kind="stable")
            pts = [(exp[ch].mean(), obs[ch].mean()) for ch in np.array_split(order, min(10, len(order)))]
            ax_w.plot(*zip(*pts, strict=True), "o-", label=f"{h} h")
            top = max(top, *(max(p) for p in pts))
            bins = reliab[res][str(h)]["bins"]
            ax_p.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", label=f"{h} h")
            pit = np.array([c.pit for c in block])
            u = np.random.default_rng(0).uniform(pit[:, 0], pit[:, 1])
            ax_h.hist(u, bins=10, range=(0, 1), histtype="step", label=f"{h} h")
        ax_w.plot([0, top], [0, top], ls="--", color="0.6", lw=1)
        ax_w.set(title=f"{res}: ward forecasts", xlabel="expected count", ylabel="mean realised count")
        preds = [b["mean_predicted"] for h in cfg.horizons for b in reliab[res][str(h)]["bins"]]
        lim = max(max(preds, default=1.0), 0.05)
        ax_p.plot([0, lim], [0, lim], ls="--", color="0.6", lw=1)
        ax_p.set(title=f"{res}: patient probabilities (test)", xlabel="mean predicted", ylabel="observed frequency")
        ax_h.axhline(len([c for c in scored if c.resource == res]) / len(cfg.horizons) / 10, ls="--", color="0.6", lw=1)
        ax_h.set(title=f"{res}: randomised PIT", xlabel="PIT", ylabel="forecasts")
        for ax in (ax_w, ax_p, ax_h):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _timeline_png(cases: list[Case], cfg: BacktestConfig, path: Path, days: int = 30) -> Path:
    """The first ``days`` of the busiest ward at 12 h (or the first horizon): expected, 90% interval, realised."""
    h = GOAL_HORIZON if GOAL_HORIZON in cfg.horizons else cfg.horizons[0]
    ward = max({c.ward for c in cases}, key=lambda w: sum(c.ward == w for c in cases))
    resources = sorted({c.resource for c in cases})
    fig = _figure(2, len(resources))
    axes = np.atleast_1d(fig.subplots(len(resources), 1))
    lv = 0.9 if 0.9 in cfg.levels else cfg.levels[-1]
    for ax, res in zip(axes, resources, strict=True):
        block = sorted((c for c in cases if c.ward == ward and c.resource == res and c.horizon_h == h
                        and cfg.warmup_h <= c.t_h < cfg.warmup_h + 24 * days), key=lambda c: c.t_h)  # fmt: skip
        t = np.array([c.t_h for c in block]) / 24.0
        ax.fill_between(t, [c.intervals[lv][0] for c in block], [c.intervals[lv][1] for c in block], step="mid",
                        alpha=0.25, label=f"{lv:g} interval")  # fmt: skip
        ax.plot(t, [c.expected for c in block], label="expected")
        ax.plot(t, [c.observed for c in block], "k.", ms=4, label="realised")
        ax.plot(t, [c.baseline for c in block], color="0.5", lw=1, label="rolling average")
        ax.set(title=f"{ward}, {res}, next {h} h", xlabel="simulated day", ylabel="patients")
        ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# ------------------------------------------------------------------------------------------------ report
def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(doc: dict[str, Any]) -> str:
    """``report.md``: the numbers of ``metrics.json`` as tables (the method notes live in docs/demand/README.md)."""
    d, cfg = doc["data"], doc["config"]
    fit = doc["calibration"]["fitted_on"] or {}
    lines = [
        f"# Resource-demand backtest: {doc['model']['name']}:{doc['model']['version']}",
        "",
        f"<!-- Generated by `vigil demand backtest` on {doc['created_at']}; do not edit by hand. -->",
        "",
        f"Data: {d['file']}, {d['split']} split ({d['stays']} stays, {d['rows']} rows), replayed as concurrent wards "
        f"of about {cfg['concurrency']} patients with {cfg['arrivals']} admissions; a forecast every "
        f"{cfg['every_h']} h after a {cfg['warmup_h']} h warm-up. Calibration fitted on {fit.get('data', '-')}, "
        f"{fit.get('split', '-')} split. Baselines: the mean realised count of the previous "
        f"{cfg['baseline_windows']} windows of the same ward (rolling average: the goal's baseline), and the same "
        "windows' count per patient at risk times the patients at risk now (census-adjusted). Method: "
        "[README.md](README.md).",
        "",
        "| ward | simulated hours | scored forecast times | mean patients present |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {w} | {v['clock_h']} | {v['scored_forecast_times']} | {_f(v['mean_present'], 1)} |"
              for w, v in doc["wards"].items()]  # fmt: skip
    for res, by_h in doc["forecasts"].items():
        lines += ["", f"## {res}", "", "Expected count vs realised (pooled over wards):", "",
                  "| horizon | forecasts | mean expected | mean realised | MAE model | MAE rolling avg | reduction "
                  "| MAE census-adjusted | reduction | MAE hindsight mean | noise floor |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for h, b in by_h.items():
            lines.append(f"| {h} h | {b['forecasts']} | {_f(b['mean_expected'])} | {_f(b['mean_observed'])} | "
                         f"{_f(b['mae_model'])} | {_f(b['mae_rolling_baseline'])} | "
                         f"{_pct(b['mae_reduction_vs_baseline'])} | {_f(b['mae_census_baseline'])} | "
                         f"{_pct(b['mae_reduction_vs_census_baseline'])} | {_f(b['mae_hindsight_mean'])} | "
                         f"{_f(b['mae_noise_floor'])} |")  # fmt: skip
        lines += ["", "Interval coverage: share of realised counts inside the interval, the probability the forecast "
                  "gives that interval, and the randomised-PIT coverage (nominal when calibrated):", "",
                  "| horizon | level | inside | forecast mass | PIT coverage | mean width |",
                  "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for h, b in by_h.items():
            for lv, c in b["coverage"].items():
                lines.append(f"| {h} h | {lv} | {_pct(c['observed'])} | {_pct(c['forecast_mass'])} | {_pct(c['pit'])} "
                             f"| {_f(c['mean_width'], 2)} |")  # fmt: skip
        lines += ["", "Per ward (MAE model / rolling average; 90% PIT coverage):", "",
                  "| horizon | " + " | ".join(next(iter(by_h.values()))["wards"]) + " |",
                  "|---:|" + "---|" * len(next(iter(by_h.values()))["wards"])]  # fmt: skip
        for h, b in by_h.items():
            cells = [f"{_f(w['mae_model'], 2)} / {_f(w['mae_rolling_baseline'], 2)}"
                     + (f"; {_pct(w['coverage']['0.9']['pit'])}" if "0.9" in w["coverage"] else "")
                     for w in b["wards"].values()]  # fmt: skip
            lines.append(f"| {h} h | " + " | ".join(cells) + " |")
        rel = doc["patient_reliability"][res]
        lines += ["", "Patient-level probabilities on this split (risk-set rows):", "",
                  "| horizon | rows | mean predicted | observed | ECE |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
        for h, r in rel.items():
            lines.append(f"| {h} h | {r['rows']} | {_f(r['mean_predicted'], 4)} | {_f(r['observed'], 4)} | "
                         f"{_f(r['ece'], 4)} |")  # fmt: skip
            if r.get("rule_group"):
                g = r["rule_group"]
                lines.append(f"| {h} h, NEWS2 rule group | {g['rows']} | {_f(g['p'], 4)} | {_f(g['observed'], 4)} | |")
    lines += ["", "## Goals", "",
              "| admissions | resource | max PIT coverage gap | coverage goal (<= 5 points) | MAE reduction at 12 h "
              "| MAE goal (>= 25%) |", "|---|---|---:|---|---:|---|"]  # fmt: skip
    for arrivals, by_res in {cfg["arrivals"]: doc["goals"], **doc.get("goals_other_arrivals", {})}.items():
        for res, g in by_res.items():
            lines.append(f"| {arrivals} | {res} | {100 * g['coverage_max_abs_gap_pit']:.1f} points | "
                         f"{'met' if g['coverage_met'] else 'NOT met'} | {_pct(g['mae_reduction_12h'])} | "
                         f"{'met' if g['mae_met'] else 'NOT met'} |")  # fmt: skip
    reps = doc.get("replicates", {}).get("by_concurrency") or {}
    if reps:
        lines += ["", f"## Replicate admission schedules ({cfg['arrivals']}, seeds {cfg['seed']}.."
                      f"{cfg['seed'] + doc['replicates']['seeds'] - 1})", "",
                  "The tables above are one random schedule; over several:", "",
                  "| concurrency | resource | MAE reduction at 12 h: mean [min, max] | MAE goal met | "
                  "max PIT coverage gap: mean [min, max] | coverage goal met |",
                  "|---:|---|---|---:|---|---:|"]  # fmt: skip
        for n in sorted(reps, key=int):
            for res, r in reps[n].items():
                red, gap = r["mae_reduction_12h"], r["coverage_max_abs_gap_pit"]
                lines.append(f"| {n} | {res} | {_pct(red['mean'])} [{_pct(red['min'])}, {_pct(red['max'])}] | "
                             f"{r['mae_met']} of {r['runs']} | {100 * gap['mean']:.1f} [{100 * gap['min']:.1f}, "
                             f"{100 * gap['max']:.1f}] points | {r['coverage_met']} of {r['runs']} |")  # fmt: skip
    lines += ["", "## Sensitivity to ward size and admission process", "",
              "| admissions | concurrency | resource | horizon | MAE reduction | vs census-adjusted | "
              "90% PIT coverage | 90% inside |", "|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    runs = [(cfg["arrivals"], n, m) for n, m in {str(cfg["concurrency"]): doc["forecasts"],
                                                  **doc["sensitivity_concurrency"]}.items()]  # fmt: skip
    runs += [(a, n, m) for a, by_n in doc.get("sensitivity_arrivals", {}).items() for n, m in by_n.items()]
    for arrivals, n, by_res in sorted(runs, key=lambda r: (r[0] != cfg["arrivals"], r[0], int(r[1]))):
        for res, by_h in by_res.items():
            for h, b in by_h.items():
                c = b["coverage"].get("0.9")
                lines.append(f"| {arrivals} | {n} | {res} | {h} h | {_pct(b['mae_reduction_vs_baseline'])} | "
                             f"{_pct(b.get('mae_reduction_vs_census_baseline'))} | "
                             f"{_pct(c['pit'] if c else None)} | {_pct(c['observed'] if c else None)} |")  # fmt: skip
    lines += ["", "![calibration](calibration.png)", "", "![timeline](timeline.png)", "",
              f"Timing: {doc['timing_s']['load_and_score']:.1f} s to load and score, "
              f"{doc['timing_s']['backtest_and_write']:.1f} s to backtest and write."]  # fmt: skip
    return "\n".join(lines) + "\n"
