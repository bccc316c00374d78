"""The evaluation report: ``report.md`` (tables, definitions, caveats) and its PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.alerting import ALERT_TYPES
from vigil.evaluation.curves import pr_curve, roc_curve, thin
from vigil.evaluation.plots import Curve, lead_time_plot, reliability_plot, roc_pr_plot

if TYPE_CHECKING:
    from vigil.evaluation.report import Evaluation

__all__ = ["write_outputs", "render_markdown", "FIGURES"]

FIGURES = {"reliability": "reliability.png", "roc_pr": "roc_pr.png", "lead_time": "lead_time.png"}
_SCREENS = {"NEWS2": ("news2_total", (5, 7)), "qSOFA": ("qsofa_partial", (2,)), "SIRS": ("sirs_count", (2,))}


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _lead(al: dict[str, Any]) -> str:
    lt = al["lead_time_h"]
    if lt["median"] is None:
        return "n/a"
    return f"{lt['median']:.0f} h ({lt['q25']:.0f}-{lt['q75']:.0f})"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ------------------------------------------------------------------------------------------- figures
def _point(labels: np.ndarray, scores: np.ndarray, thr: float, name: str) -> tuple[str, float, float, float, float]:
    pred = scores >= thr
    tp = float(np.sum(pred & (labels == 1)))
    fp = float(np.sum(pred & (labels == 0)))
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((labels == 0).sum()), 1)
    return name, fp / n_neg, tp / n_pos, tp / n_pos, tp / max(tp + fp, 1.0)


def _curves(ev: Evaluation) -> dict[str, Curve]:
    sc, m = ev.scored, ev.metrics
    y = sc.labels
    probs = sc.probs.astype(np.float64)
    thr = float(m["model"]["threshold"])
    out: dict[str, Curve] = {}
    rankings = {"model": (probs, [(f">= {thr:g}", thr)])}
    for name, (col, cuts) in _SCREENS.items():
        rankings[name] = (sc.screens[col].astype(np.float64), [(f">= {c}", float(c)) for c in cuts])
    for name, (score, ops) in rankings.items():
        fpr, tpr = thin(*roc_curve(y, score))
        rec, prec = thin(*pr_curve(y, score))
        block = m["model"] if name == "model" else m["comparators"][f"{name}>={ops[0][1]:g}"]
        points = [_point(y, score, t, f"{name} {label}") for label, t in ops]
        out[name] = Curve(fpr, tpr, rec, prec, block["auroc"], block["auprc"], points)
    return out


def write_figures(ev: Evaluation, folder: Path) -> dict[str, Path]:
    """Write the three PNGs; returns their paths by key of :data:`FIGURES`."""
    m = ev.metrics
    title = f"{m['model']['name']}:{m['model']['version']} on {m['data']['file']} ({m['data']['split']})"
    note = m["model"]["calibration"]["note"] or ""
    prevalence = m["data"]["positive_rows"] / max(m["data"]["rows"], 1)
    leads = {"model": ev.leads["model"], "NEWS2>=5": ev.leads["NEWS2>=5"], "qSOFA>=2": ev.leads["qSOFA>=2"]}
    return {
        "reliability": reliability_plot(
            m["model"]["calibration"]["bins"],
            folder / FIGURES["reliability"],
            title=f"Reliability - {title}",
            note=note,
        ),
        "roc_pr": roc_pr_plot(_curves(ev), folder / FIGURES["roc_pr"], prevalence=prevalence, title=title),
        "lead_time": lead_time_plot(leads, folder / FIGURES["lead_time"], title=f"Lead time - {title}"),
    }


# ------------------------------------------------------------------------------------------- sections
def _summary(m: dict[str, Any]) -> str:
    mod, al, n5 = m["model"], m["alerting"]["model_risk"], m["comparators"]["NEWS2>=5"]
    head = [
        "",
        "AUROC",
        "AUPRC",
        "utility",
        "alerts / patient-day",
        "septic alerted early",
        "median lead (IQR)",
        "PPV (stays)",
    ]
    rows = [
        [
            f"model (risk >= {mod['threshold']:g})",
            _f(mod["auroc"]),
            _f(mod["auprc"]),
            _f(mod["utility"]),
            _f(al["alerts_per_patient_day"]),
            _pct(al["share_septic_alerted_early"]),
            _lead(al),
            _pct(al["ppv_stay"]),
        ],
        [
            "NEWS2 >= 5",
            _f(n5["auroc"]),
            _f(n5["auprc"]),
            _f(n5["utility"]),
            _f(n5["alerting"]["alerts_per_patient_day"]),
            _pct(n5["alerting"]["share_septic_alerted_early"]),
            _lead(n5["alerting"]),
            _pct(n5["alerting"]["ppv_stay"]),
        ],
    ]
    return "## Summary\n\n" + _table(head, rows)


def _data(m: dict[str, Any]) -> str:
    d = m["data"]
    split = d["split"]
    how = (
        f"the **{split}** split of the model's training file, rebuilt by patient with the card's seed"
        if d["training_data"] and split != "all"
        else f"**all** stays of `{d['file']}`"
    )
    rows = [
        ["stays", _f(d["stays"])],
        ["hourly rows", _f(d["rows"])],
        ["patient-days (rows / 24)", _f(d["patient_days"], 1)],
        ["septic stays", f"{_f(d['septic_stays'])} ({_pct(d['septic_stays'] / max(d['stays'], 1))})"],
        ["of which septic on arrival (first label at row 0)", _f(d["septic_on_arrival"])],
        ["rows with SepsisLabel = 1", f"{_f(d['positive_rows'])} ({_pct(d['positive_rows'] / max(d['rows'], 1))})"],
        ["median stay length", f"{_f(d['median_stay_h'], 0)} h"],
    ]
    return (
        f"## Data\n\nEvaluated: {how} (file `{d['file']}`). Counts only; no patient identifiers are "
        f"reported.\n\n" + _table(["", "value"], rows)
    )


def _threshold(m: dict[str, Any]) -> str:
    mod = m["model"]
    return (
        f"## Operating threshold\n\nRisk >= **{mod['threshold']:g}**, from the model card "
        f"(rule: {mod['threshold_rule']}). It is **not** re-tuned on the evaluated data; every binary "
        f"metric of the model below uses it. Rows at or above it: {_pct(mod['positive_rate_rows'])}."
    )


def _discrimination(m: dict[str, Any]) -> str:
    rows = [
        [
            "model (probability; utility at the card threshold)",
            _f(m["model"]["auroc"]),
            _f(m["model"]["auprc"]),
            _f(m["model"]["utility"]),
            _pct(m["model"]["positive_rate_rows"]),
        ]
    ]
    for name, c in m["comparators"].items():
        rows.append(
            [
                f"{name} (integer score as a ranking; utility of the rule)",
                _f(c["auroc"]),
                _f(c["auprc"]),
                _f(c["utility"]),
                _pct(c["positive_rate_rows"]),
            ]
        )
    return (
        "## Discrimination and utility (row level)\n\n"
        + _table(["", "AUROC", "AUPRC", "normalized utility", "rows positive"], rows)
        + f"\n\n![ROC and precision-recall curves]({FIGURES['roc_pr']})\n\n"
        "NEWS2 >= 5 and >= 7 share one ranking (the NEWS2 total), hence one AUROC/AUPRC."
    )


def _calibration(m: dict[str, Any]) -> str:
    cal = m["model"]["calibration"]
    rows = [
        [f"{b['lo']:.1f}-{b['hi']:.1f}", _f(b["n"]), _f(b["mean_predicted"]), _f(b["observed_rate"])]
        for b in cal["bins"]
    ]
    note = f"\n\n**The model was {cal['note']}.**" if cal["note"] else ""
    return (
        f"## Calibration\n\nBrier score {_f(m['model']['brier'], 4)}; expected calibration error "
        f"{_f(cal['ece'], 4)} (10 equal-width bins, row-weighted).{note}\n\n"
        + _table(["predicted", "rows", "mean predicted", "observed rate"], rows)
        + f"\n\n![Reliability]({FIGURES['reliability']})"
    )


def _alert_row(name: str, al: dict[str, Any]) -> list[str]:
    return [
        name,
        _f(al["alerts"]),
        _f(al["alerts_per_patient_day"]),
        _pct(al["share_stays_alerted"]),
        _pct(al["share_septic_alerted_early"]),
        _pct(al["share_septic_alerted_12h_before_onset"]),
        _pct(al["share_septic_alerted_any_time"]),
        _lead(al),
        _pct(al["ppv_stay"]),
        _pct(al["share_nonseptic_alerted"]),
        _pct(al["septic_on_arrival"]["share_alerted"]),
    ]


_ALERT_HEAD = [
    "alert stream",
    "alerts",
    "alerts / patient-day",
    "stays alerted",
    "septic alerted before onset",
    "alert raised in the 12 h before onset",
    "septic alerted at any time",
    "median lead (IQR)",
    "PPV (stays)",
    "non-septic stays alerted",
    "septic-on-arrival stays alerted",
]


def _rule_text(r: dict[str, Any]) -> str:
    at = "the card alert level" if r["raise_at"] is None else f"{r['raise_at']:g}"
    clear = "0.8 x raise" if r["clear_below"] is None else f"{r['clear_below']:g}"
    return f">= {at} for {r['persistence']} row(s), clear < {clear}, refractory {r['refractory_h']:g} h"


def _alerting(m: dict[str, Any]) -> str:
    a = m["alerting"]
    p = a["policy"]
    rows = [_alert_row(f"{kind} ({_rule_text(p[kind])})", a[kind]) for kind in ALERT_TYPES if p[kind]["enabled"]]
    rows += [
        _alert_row("whole policy (every enabled type)", a["policy_all"]),
    ] + [_alert_row(f"{name} (crossing, re-arm below it)", c["alerting"]) for name, c in m["comparators"].items()]
    n_eval = a["model_risk"]["septic_stays_evaluable"]
    return (
        f"## Alerting\n\nThe configured alert policy replayed row by row per stay, exactly as the worker "
        f"raises alerts (alerts fire on crossings, not on every row above the threshold). Early share and "
        f"lead time are over the {n_eval} septic stays not septic on arrival.\n\n"
        + _table(_ALERT_HEAD, rows)
        + f"\n\n![Lead time]({FIGURES['lead_time']})"
    )


def _abstention(m: dict[str, Any]) -> str | None:
    """The abstention section (None without the card's ``abstention`` block): confident vs all model-risk alerts."""
    ab = m.get("abstention")
    if not ab:
        return None
    pairs = (("all model-risk alerts", ab["all"]), ("confident alerts only", ab["confident"]))
    rows = [[name, _f(r["alerts"]), _f(r["stays_alerted"]), _pct(r["ppv_stay"]), _pct(r["share_septic_alerted_early"])]
            for name, r in pairs]  # fmt: skip
    gain = "n/a" if ab["ppv_relative_gain"] is None else f"{100 * ab['ppv_relative_gain']:+.0f} %"
    return (
        f"## Abstention\n\nThe card's `abstention` block (measure `{ab['measure']}`, cut-off {_f(ab['cutoff'])}"
        + (f", or fewer than {ab['min_history_h']:g} h of the stay behind the row" if ab.get("min_history_h") else "")
        + "): "
        f"{_pct(ab['share_rows_indeterminate'])} of the scored rows and {_pct(ab['share_alerts_indeterminate'])} of "
        "the model-risk alerts are indeterminate (still raised, flagged). Stay-level PPV of confident alerts "
        f"relative to all alerts: {gain}.\n\n"
        + _table(["alerts", "count", "stays alerted", "PPV (stays)", "septic alerted before onset"], rows)
    )


def _subgroups(m: dict[str, Any]) -> str:
    rows = []
    for group, parts in m["subgroups"].items():
        for name, s in parts.items():
            rows.append(
                [
                    f"{group}: {name}",
                    _f(s["stays"]),
                    _f(s["septic_stays"]),
                    _f(s["auroc"]),
                    _f(s["utility"]),
                    _f(s["alerts_per_patient_day"]),
                    _pct(s["share_septic_alerted_early"]),
                ]
            )
    return (
        "## Subgroups (model)\n\nAge bands in years; sex from Gender (1 male, 0 female); ICU unit from "
        "Unit1 (MICU) / Unit2 (SICU), unknown when neither is recorded. Small groups give unstable "
        "numbers.\n\n"
        + _table(
            ["subgroup", "stays", "septic stays", "AUROC", "utility", "alerts / patient-day", "septic alerted early"],
            rows,
        )
    )


_DEFINITIONS = """## Definitions

- **Row**: one scored ICU hour; every row is scored causally (it sees only its own stay's rows up to it) by the
  serving featurizer and ONNX model.
- **Septic stay**: any row with SepsisLabel = 1. **Onset** t_sepsis = first such row + 6 h (the PhysioNet 2019
  labels are shifted 6 h early). **Septic on arrival**: the first label row is row 0, so sepsis may predate the
  ICU stay; these stays are left out of the early share and lead time and reported in their own column.
- **Alerted before onset (early)**: the stay's first alert row is before t_sepsis. **Lead time** = t_sepsis minus
  that row, in hours; median and interquartile range over the early-alerted stays. A first alert early in the
  stay gives a long lead time without being specific: the column *alert raised in the 12 h before onset*
  (rows t_sepsis-12 .. t_sepsis-1, the window the utility rewards) shows how many alerts are timely. A rule
  whose condition has persisted since an earlier alert raises no new one, so that column favours scores that
  oscillate across their threshold (and raise more alerts).
- **Alerts per patient-day**: alerts / (scored rows / 24).
- **PPV (stays)**: stays with at least one alert that are septic (at any time) / stays with at least one alert.
- **Normalized utility**: the PhysioNet/CinC 2019 score (Reyna et al., Crit Care Med 2020): 1 = best, 0 = no
  alerts, negative = worse than no alerts.
- **Comparators**: NEWS2 (RCP 2017; consciousness unknown, scored as alert), partial qSOFA (SBP <= 100, RR >= 22;
  no mentation in the data, so its maximum is 2), SIRS (temperature, heart rate, respiration/PaCO2, WBC), each
  from the last observed values up to the row (never measured = criterion not met)."""


def _caveats(m: dict[str, Any]) -> str:
    items = list(m["notes"])
    cal = m["model"]["calibration"]["note"]
    if cal:
        items.append(f"The model was {cal}.")
    items += [
        "Labels are retrospective Sepsis-3 criteria; an alert on a septic stay after onset counts as a true "
        "positive for the stay-level PPV but not as early.",
        "Patient-days are scored ICU hours / 24; the data holds ICU stays only (no ward patients), so burdens "
        "are ICU burdens.",
        "NEWS2, qSOFA and SIRS are computed from last-observed values, including stale ones; at the bedside they "
        "would be charted at observation times.",
        "PPV and alert burden depend on prevalence; compare them only on the same rows.",
    ]
    return "## Caveats\n\n" + "\n".join(f"- {c}" for c in items)


def render_markdown(ev: Evaluation) -> str:
    """The report text (sections: Summary, Data, Operating threshold, Discrimination and utility,
    Calibration, Alerting, Abstention (when the card has a block), Subgroups, Definitions, Caveats)."""
    m = ev.metrics
    mod, d = m["model"], m["data"]
    head = (
        f"# Evaluation of {mod['name']}:{mod['version']} on {d['file']} ({d['split']})\n\n"
        f"Generated by `vigil evaluate` at {m.get('evaluated_at', 'n/a')}."
    )
    parts = [
        head,
        _summary(m),
        _data(m),
        _threshold(m),
        _discrimination(m),
        _calibration(m),
        _alerting(m),
        *([s] if (s := _abstention(m)) else []),
        _subgroups(m),
        _DEFINITIONS,
        _caveats(m),
    ]
    return "\n\n".join(parts) + "\n"


def write_outputs(ev: Evaluation, folder: Path) -> Path:
    """Create ``folder`` and write the figures and ``report.md`` into it; returns the report path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_figures(ev, folder)
    path = folder / "report.md"
    path.write_text(render_markdown(ev), encoding="utf-8")
    return path
