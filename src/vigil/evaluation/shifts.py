"""Measurement-habit shifts: how a model holds up when a hospital charts differently (``vigil evaluate --shifts``).

The challenge's top entries all scored below 0 on a hospital they had not seen (``clinical.md``), and
missingness patterns are the usual suspect: sites order labs at other rates, chart vitals hourly or every 4 h,
and interface some devices and not others. Without another hospital's data we can still measure how much the
model leans on *this* hospital's habits: each :class:`Shift` rewrites the evaluated stays the way another site
might record them (seeded, deterministic), and the same model, threshold and alert policy are evaluated on
the result beside NEWS2 >= 5 on the same rows.

What this does not test: case mix, how sepsis onset was charted (the label), treatment practice and device
calibration. A model can pass every shift here and still fail at another hospital; a large drop here is a
warning that it will.

>>> [s.name for s in SHIFTS][:3]
['none', 'labs_half', 'labs_none']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vigil.variables import LABS, VITALS

if TYPE_CHECKING:
    from vigil.config import AlertSettings
    from vigil.evaluation.selection import Selection
    from vigil.registry import ModelRef
    from vigil.scoring import Scorer

__all__ = ["SHIFTS", "Shift", "apply_shift", "run_shifts", "shift_markdown", "write_shifts"]

SEED = 2019


@dataclass(frozen=True)
class Shift:
    """One way another hospital might record the same stays."""

    name: str
    what: str
    rewrite: Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]


def _blank(df: pd.DataFrame, cols: tuple[str, ...], mask: np.ndarray | None = None) -> pd.DataFrame:
    """``df`` with ``cols`` set to NaN (on the rows of ``mask``; everywhere without one)."""
    out = df.copy()
    for c in cols:
        if c not in out.columns:
            continue
        v = out[c].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        v[slice(None) if mask is None else mask] = np.nan
        out[c] = v
    return out


def _thin(cols: tuple[str, ...], keep: float) -> Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]:
    def rewrite(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        out = df.copy()
        for c in cols:
            if c in out.columns:
                out = _blank(out, (c,), rng.random(len(out)) >= keep)
        return out

    return rewrite


def _every(cols: tuple[str, ...], hours: int) -> Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]:
    def rewrite(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        iculos = df["ICULOS"].to_numpy(dtype=np.float64, na_value=np.nan)
        return _blank(df, cols, ~(np.nan_to_num(iculos, nan=0.0) % hours == 0))

    return rewrite


def _late_start(hours: int) -> Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]:
    def rewrite(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        iculos = df["ICULOS"].to_numpy(dtype=np.float64, na_value=np.nan)
        return df.loc[np.nan_to_num(iculos, nan=0.0) > hours].reset_index(drop=True)

    return rewrite


SHIFTS: tuple[Shift, ...] = (
    Shift("none", "as recorded (the reference row)", lambda df, rng: df),
    Shift("labs_half", "each lab result kept with probability 1/2: a site that orders half as many labs",
          _thin(LABS, 0.5)),
    Shift("labs_none", "no lab results at all: the lab feed is down, or a vitals-only deployment "
          "(FiO2 is a lab column here, so NEWS2 loses its oxygen item too)", lambda df, rng: _blank(df, LABS)),
    Shift("vitals_q2h", "vitals charted every 2 h (even ICU hours) instead of hourly", _every(VITALS, 2)),
    Shift("vitals_q4h", "vitals charted every 4 h, as on many general wards", _every(VITALS, 4)),
    Shift("no_resp_devices", "EtCO2, FiO2 and SaO2 never recorded: ventilator and blood gas not interfaced",
          lambda df, rng: _blank(df, ("EtCO2", "FiO2", "SaO2"))),
    Shift("no_admin", "hospital-to-ICU time and ICU unit unknown: ADT fields not mapped",
          lambda df, rng: _blank(df, ("HospAdmTime", "Unit1", "Unit2"))),
    Shift("late_start_12h", "the feed starts 12 h into the ICU stay (transfers in, a late interface); ICU hours "
          "kept. Changes the cohort: onsets in the first 12 h leave, so compare with NEWS2 on the same rows",
          _late_start(12)),
)  # fmt: skip


def apply_shift(shift: Shift, df: pd.DataFrame, seed: int = SEED) -> pd.DataFrame:
    """The stays of ``df`` as ``shift`` records them (deterministic for a given seed and frame).

    >>> df = pd.DataFrame({"patient_id": ["a"] * 4, "ICULOS": [1, 2, 3, 4], "HR": [80.0, 81, 82, 83]})
    >>> apply_shift(SHIFTS[3], df)["HR"].tolist()
    [nan, 81.0, nan, 83.0]
    >>> len(apply_shift(SHIFTS[-1], df.assign(ICULOS=[11, 12, 13, 14])))
    2
    """
    return shift.rewrite(df, np.random.default_rng(seed))


def _row(metrics: dict[str, Any]) -> dict[str, Any]:
    model, data, al = metrics["model"], metrics["data"], metrics["alerting"]["model_risk"]
    news2 = metrics["comparators"]["NEWS2>=5"]
    return {
        "stays": data["stays"], "septic_stays": data["septic_stays"], "rows": data["rows"],
        "utility": model["utility"], "auroc": model["auroc"], "positive_rate_rows": model["positive_rate_rows"],
        "alerts_per_patient_day": al["alerts_per_patient_day"],
        "share_septic_alerted_early": al["share_septic_alerted_early"], "lead_time_h": al["lead_time_h"]["median"],
        "news2_utility": news2["utility"], "news2_auroc": news2["auroc"],
        "news2_alerts_per_patient_day": news2["alerting"]["alerts_per_patient_day"],
    }  # fmt: skip


def run_shifts(
    ref: ModelRef, sel: Selection, scorer: Scorer, policy: AlertSettings, shifts: tuple[Shift, ...] = SHIFTS,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``ref`` (its threshold and the alert ``policy``) on ``sel`` rewritten by every shift.

    Returns ``{"seed", "shifts": {name: {"what", stays, utility, auroc, alert burden, NEWS2 >= 5, ...}}}``;
    the differences to ``none`` are added as ``delta_utility`` and ``delta_auroc``.
    """
    from vigil.evaluation.report import evaluate, score_rows

    out: dict[str, Any] = {}
    for shift in shifts:
        df = apply_shift(shift, sel.df)
        ev = evaluate(ref, replace(sel, df=df), score_rows(scorer, df), policy)
        out[shift.name] = {"what": shift.what, **_row(ev.metrics)}
    base = out.get("none")
    for row in out.values():
        for k in ("utility", "auroc"):
            row[f"delta_{k}"] = None if base is None or row[k] is None else row[k] - base[k]
    return {"seed": SEED, "shifts": out}


def _f(x: Any, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def shift_markdown(result: dict[str, Any], title: str) -> str:
    """``shifts.md``: one table, the definitions and what the test cannot show."""
    head = ["shift", "stays (septic)", "utility", "change", "AUROC", "change", "alerts / patient-day",
            "septic alerted early", "NEWS2 >= 5 utility", "NEWS2 >= 5 AUROC"]  # fmt: skip
    lines = [f"# Measurement-habit shifts: {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["shifts"].items():
        lines.append("| " + " | ".join([
            f"`{name}`", f"{r['stays']:,} ({r['septic_stays']:,})", _f(r["utility"], ".3f"),
            _f(r["delta_utility"], "+.3f"), _f(r["auroc"], ".3f"), _f(r["delta_auroc"], "+.3f"),
            _f(r["alerts_per_patient_day"], ".3f"), _f(r["share_septic_alerted_early"], ".1%"),
            _f(r["news2_utility"], ".3f"), _f(r["news2_auroc"], ".3f"),
        ]) + " |")  # fmt: skip
    lines += ["", "Shifts (seeded, deterministic; the model, its threshold and the alert policy are unchanged):", ""]
    lines += [f"* `{name}`: {r['what']}." for name, r in result["shifts"].items()]
    lines += [
        "",
        "Each shift rewrites the same stays the way another hospital might record them. A small change means the",
        "model does not lean on this hospital's habit; it does not mean it will work elsewhere: case mix, how",
        "sepsis onset is charted (the label), treatment and device differences are not tested here, and those are",
        "where the PhysioNet 2019 entries failed on the unseen hospital. Evaluate on local data before use",
        "(`vigil evaluate --data`).",
        "",
    ]
    return "\n".join(lines)


def write_shifts(result: dict[str, Any], folder: Path, title: str) -> None:
    """``shifts.json`` and ``shifts.md`` in ``folder``."""
    from vigil.evaluation.report import jsonable

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shifts.json").write_text(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    (folder / "shifts.md").write_text(shift_markdown(result, title))
