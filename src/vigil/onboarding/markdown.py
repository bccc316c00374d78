"""``report.md`` of ``vigil onboard`` (:mod:`vigil.onboarding.run`): the check stays' table, the gate, the
adaptation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vigil.evaluation.report import jsonable

__all__ = ["report_markdown"]


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if pct:
        return f"{100 * x:.1f} %"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def report_markdown(summary: dict[str, Any], gate_text: str) -> str:
    """``report.md`` of ``vigil onboard`` from its summary and the gate's report text."""
    b, o = summary["check"]["base"], summary["check"]["onboarded"]
    s = summary["sample"]
    lines = [
        f"# Site onboarding: {summary['model']} from {summary['base']}",
        "",
        f"Site sample `{s['file']}` (sha256 `{s['sha256'][:16]}...`), split by patient with seed {s['seed']}: "
        f"{s['split']['train']['stays']} train, {s['split']['tune']['stays']} tune, {s['split']['check']['stays']} "
        f"check stays ({s['split']['check']['septic_stays']} septic). Mode: **{summary['mode']}**; adaptation: "
        f"**{summary['adaptation']}**; budget {summary['budget']:g} alerts per patient-day (chosen within "
        f"{summary['budget'] * (1 - summary['headroom']):.3g}).",
        "",
        f"Threshold {summary['threshold']:g}: {summary.get('threshold_rule', '-')}.",
        "",
        "Held-back check stays (never used to fit anything):",
        "",
        "| | threshold | alert level | utility | AUROC | alerts / patient-day | septic alerted before onset | "
        "median lead h | PPV (stays) | onset-probability ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in (("base " + b["model"], b), ("onboarded " + o["model"], o)):
        ece = (r.get("onset_probability") or {}).get("ece")
        lines.append(f"| {label} | {_fmt(r['threshold'])} | {_fmt(r['alert_level'])} | {_fmt(r.get('utility'))} | "
                     f"{_fmt(r.get('auroc'))} | {_fmt(r.get('alerts_per_patient_day'))} | "
                     f"{_fmt(r.get('share_septic_alerted_early'), True)} | {_fmt(r.get('median_lead_h'))} | "
                     f"{_fmt(r.get('ppv_stay'), True)} | {_fmt(ece)} |")  # fmt: skip
    lines += _abstention(summary)
    lines += ["", f"Calibration of the onset probability: {summary['calibration']}", "",
              f"## Promotion gate (against the base, on {summary['gate'].get('on', 'the check stays')})", "", "```",
              gate_text, "```", "",
              "## How the adaptation was chosen", "", "```json",
              json.dumps(jsonable(summary["adapted"]), indent=2), "```", ""]  # fmt: skip
    return "\n".join(lines)


def _abstention(summary: dict[str, Any]) -> list[str]:
    """The abstention table (each version's block, graph and alert level on the check stays), or nothing."""
    b, o = summary["check"]["base"].get("abstention"), summary["check"]["onboarded"].get("abstention")
    if b is None and o is None:
        return []
    ab = summary.get("abstention") or {}
    src = (f"the onboarded card's block: measure `{ab.get('measure')}`, cut-off {_fmt(ab.get('cutoff'))}, "
           f"{ab.get('cutoff_rule') or ''}; the base's own figures are under `base_evaluation`, the site's under "
           "`site_evaluation`" if ab else "the onboarded version has no abstention block")  # fmt: skip
    lines = ["", f"Abstention on the check stays (confident vs all model-risk alerts at each version's level; {src}):",
             "", "| | measure, cut-off | stays | rows indeterminate | alerts indeterminate | alerts (all / confident) "
             "| PPV (stays), all | confident | relative gain | septic alerted before onset, all | confident |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, r in (("base", b), ("onboarded", o)):
        if r is None:
            lines.append(f"| {label} | no block | | | | | | | | | |")
            continue
        a, c = r.get("all") or {}, r.get("confident") or {}
        hist = f", or < {r['min_history_h']:g} h of the stay" if r.get("min_history_h") else ""
        lines.append(f"| {label} {r['model']} | `{r['measure']}` {_fmt(r['cutoff'])}{hist} | {r['stays']} | "
                     f"{_fmt(r.get('share_rows_indeterminate'), True)} | "
                     f"{_fmt(r.get('share_alerts_indeterminate'), True)} | {a.get('alerts')} / {c.get('alerts')} | "
                     f"{_fmt(a.get('ppv_stay'), True)} | {_fmt(c.get('ppv_stay'), True)} | "
                     f"{_fmt(r.get('ppv_relative_gain'), True)} | {_fmt(a.get('share_septic_alerted_early'), True)} | "
                     f"{_fmt(c.get('share_septic_alerted_early'), True)} |")  # fmt: skip
    if not (o or b or {}).get("labels_read", True):
        lines += ["", "No label read: shares and alert counts only (PPV and sensitivity need labels)."]
    return lines
