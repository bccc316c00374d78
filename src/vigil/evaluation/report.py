"""``vigil evaluate``: an honest clinical evaluation of one registered model on PhysioNet-layout data.

What is computed (rows = scored ICU hours, scored causally by the serving featurizer and ONNX model via
:func:`vigil.offline.score_frame`):

* at the model card's threshold (never re-tuned on the evaluated data): the PhysioNet 2019 normalized
  utility, row-level AUROC and AUPRC, the Brier score and a reliability table/plot;
* the alerts the worker would raise under the configured alert policy
  (:func:`vigil.evaluation.alerting.simulate_policy`) and their patient-level outcomes: alerts per
  patient-day, share of septic stays alerted before onset, lead time, stay-level PPV, share of
  non-septic stays alerted (definitions in :mod:`vigil.evaluation.alerting`);
* subgroups (age band, sex, ICU unit) and bedside comparators on the same rows: NEWS2 >= 5 and >= 7,
  partial qSOFA >= 2 (no mental status in the data), SIRS >= 2, each computed causally from the last
  observed values (the featurizer's ``news2_total``, ``qsofa_partial`` and ``sirs_count``), ranked as
  integer scores and alerting on crossings (re-armed once the score is below the threshold again).

Data selection: on the model's own training file (card ``training.source_file``) the split is rebuilt
with :func:`vigil.training.data.split_by_patient` and the card's seed (default: test); any other
PhysioNet-format data (another hospital) is evaluated whole (``all``). No patient identifier leaves
this module: outputs carry counts only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vigil.card import CARD_FILE, read_card, write_card
from vigil.config import AlertSettings
from vigil.evaluation.alerting import (
    StayAlerts,
    StayTable,
    alert_summary,
    crossings,
    lead_times,
    simulate_policy,
    stay_alerts,
    stay_table,
)
from vigil.evaluation.curves import brier, expected_calibration_error, reliability_bins
from vigil.evaluation.metrics import auprc, auroc
from vigil.evaluation.selection import DEFAULT_DATA, SPLIT_CHOICES, Selection, card_training, select_rows
from vigil.evaluation.utility import normalized_utility
from vigil.registry import ModelRef

if TYPE_CHECKING:
    import pandas as pd

    from vigil.scoring import Scorer

__all__ = [
    "DEFAULT_DATA",
    "SPLIT_CHOICES",
    "COMPARATORS",
    "Comparator",
    "Selection",
    "Scored",
    "Evaluation",
    "select_rows",
    "score_rows",
    "evaluate",
    "update_card",
    "default_out",
]

SCREEN_COLUMNS = ("news2_total", "qsofa_partial", "sirs_count")
NEWS2_PART_COLUMNS = ("news2_resp_rate", "news2_spo2", "news2_air_or_oxygen", "news2_systolic_bp", "news2_pulse",
                      "news2_temperature")  # fmt: skip
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<45", 0, 45),
    ("45-64", 45, 65),
    ("65-79", 65, 80),
    (">=80", 80, math.inf),
)


class Comparator(NamedTuple):
    """A bedside screen used as a binary rule: ``column >= threshold``."""

    name: str
    column: str
    threshold: int


COMPARATORS: tuple[Comparator, ...] = (
    Comparator("NEWS2>=5", "news2_total", 5),
    Comparator("NEWS2>=7", "news2_total", 7),
    Comparator("qSOFA>=2", "qsofa_partial", 2),
    Comparator("SIRS>=2", "sirs_count", 2),
)


# ------------------------------------------------------------------------------------------- scoring
class Scored(NamedTuple):
    """Per-row arrays of the evaluated rows: model probability, stay start, label, bedside screens; and
    per-stay static context (``static``: Age, Gender, Unit1, Unit2 of each stay's first row)."""

    probs: np.ndarray
    stay_start: np.ndarray
    labels: np.ndarray
    screens: dict[str, np.ndarray]
    static: dict[str, np.ndarray]


def screen_scores(df: pd.DataFrame, chunk_rows: int = 131_072) -> dict[str, np.ndarray]:
    """NEWS2 total, partial qSOFA and SIRS count of every row (int16), from the featurizer's columns
    (causal: last observed values up to the row); chunked, so memory stays bounded."""
    from vigil.features import FEATURE_NAMES, featurize, frame_chunks

    cols = [FEATURE_NAMES.index(c) for c in SCREEN_COLUMNS]
    parts = [FEATURE_NAMES.index(c) for c in NEWS2_PART_COLUMNS]
    stay_start, chunks = frame_chunks(df, chunk_rows)
    out = np.empty((stay_start.shape[0], len(cols) + 1), dtype=np.int16)
    for a, b, inp in chunks:
        x = featurize(inp)
        out[a:b, :-1] = np.rint(x[:, cols])
        out[a:b, -1] = np.rint(x[:, parts].max(axis=1))
    return {c: out[:, j] for j, c in enumerate((*SCREEN_COLUMNS, "news2_max_part"))}


def _static(df: pd.DataFrame, stay_start: np.ndarray) -> dict[str, np.ndarray]:
    first = np.flatnonzero(stay_start)
    out: dict[str, np.ndarray] = {}
    for col in ("Age", "Gender", "Unit1", "Unit2"):
        vals = df[col].to_numpy(dtype=np.float64, na_value=np.nan) if col in df.columns else np.full(len(df), np.nan)
        out[col] = vals[first]
    return out


def score_rows(scorer: Scorer, df: pd.DataFrame) -> Scored:
    """Score every row with :func:`vigil.offline.score_frame` and attach labels, screens and static context."""
    from vigil.offline import score_frame

    probs, stay_start = score_frame(scorer, df)
    stay_start = stay_start.copy()
    if stay_start.size:
        stay_start[0] = True
    labels = df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
    return Scored(probs, stay_start, labels, screen_scores(df), _static(df, stay_start))


# ------------------------------------------------------------------------------------------- metrics
def _ranking(labels: np.ndarray, scores: np.ndarray, binary: np.ndarray, stay_start: np.ndarray) -> dict[str, Any]:
    return {
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "utility": normalized_utility(labels, binary, stay_start),
        "positive_rate_rows": float(np.mean(binary)) if binary.size else None,
    }


def row_units(static: dict[str, np.ndarray], n_rows: np.ndarray) -> np.ndarray:
    """Each row's ICU unit as the replay names it (``"MICU"`` if Unit1, else ``"SICU"`` if Unit2, else None), so
    the per-unit ``alerts.overrides`` apply offline as in the worker.

    >>> row_units({"Unit1": np.array([1.0, 0, np.nan]), "Unit2": np.array([0.0, 1, np.nan])}, np.array([2, 1, 1]))
    array(['MICU', 'MICU', 'SICU', None], dtype=object)
    """
    micu, sicu = static["Unit1"] == 1, static["Unit2"] == 1
    per_stay = np.where(micu, "MICU", np.where(sicu, "SICU", None)).astype(object)
    return np.repeat(per_stay, n_rows)


def subgroup_masks(static: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Stay masks per subgroup: age band (unknown age as its own band when present), sex (Gender 1 male,
    0 female), ICU unit (Unit1 = MICU, else Unit2 = SICU, else unknown). Empty groups are dropped."""
    age, sex = static["Age"], static["Gender"]
    micu, sicu = static["Unit1"] == 1, static["Unit2"] == 1
    groups: dict[str, dict[str, np.ndarray]] = {
        "age": {name: (age >= lo) & (age < hi) for name, lo, hi in AGE_BANDS} | {"unknown": np.isnan(age)},
        "sex": {"male": sex == 1, "female": sex == 0, "unknown": ~np.isin(sex, (0, 1))},
        "unit": {"MICU": micu, "SICU": ~micu & sicu, "unknown": ~micu & ~sicu},
    }
    return {g: {k: m for k, m in d.items() if m.any()} for g, d in groups.items()}


def _subgroup(sc: Scored, stays: StayTable, alerts: StayAlerts, pred: np.ndarray, m: np.ndarray) -> dict[str, Any]:
    rows = np.repeat(m, stays.n_rows)
    summary = alert_summary(stays, alerts, m)
    return {
        "stays": int(m.sum()),
        "septic_stays": int((m & stays.septic).sum()),
        "rows": int(rows.sum()),
        "auroc": auroc(sc.labels[rows], sc.probs[rows]),
        "utility": normalized_utility(sc.labels[rows], pred[rows], sc.stay_start[rows]),
        "alerts_per_patient_day": summary["alerts_per_patient_day"],
        "share_septic_alerted_early": summary["share_septic_alerted_early"],
    }


def _comparator(sc: Scored, stays: StayTable, comp: Comparator) -> tuple[dict[str, Any], np.ndarray]:
    score = sc.screens[comp.column]
    binary = score >= comp.threshold
    fired = crossings(score, sc.stay_start, on=comp.threshold, rearm_below=comp.threshold)
    sa = stay_alerts(fired, stays)
    block = {**_ranking(sc.labels, score, binary, sc.stay_start), "alerting": alert_summary(stays, sa)}
    return block, lead_times(stays, sa)


def _calibration_note(ref: ModelRef) -> str | None:
    training = card_training(ref)
    limitations = ref.model_card.limitations or ""
    if training.get("class_weight") or "not calibrated" in limitations:
        return (
            "trained with class weights (card training.class_weight): probabilities are inflated and not "
            "calibrated; read them as a ranking"
        )
    return None


@dataclass
class Evaluation:
    """Everything computed: ``metrics`` (JSON-ready apart from NaN) plus the arrays the plots need."""

    metrics: dict[str, Any]
    scored: Scored
    leads: dict[str, np.ndarray]


def _data_block(sel: Selection, sc: Scored, stays: StayTable) -> dict[str, Any]:
    return {
        "file": sel.source,
        "split": sel.split,
        "training_data": sel.training_data,
        "stays": int(stays.first.size),
        "rows": int(sc.labels.size),
        "patient_days": round(sc.labels.size / 24, 3),
        "septic_stays": int(stays.septic.sum()),
        "septic_on_arrival": int(stays.on_arrival.sum()),
        "positive_rows": int(sc.labels.sum()),
        "median_stay_h": float(np.median(stays.n_rows)) if stays.n_rows.size else None,
    }


def _model_block(ref: ModelRef, sc: Scored, pred: np.ndarray) -> dict[str, Any]:
    bins = reliability_bins(sc.labels, sc.probs)
    return {
        "name": ref.name,
        "version": ref.version,
        "threshold": ref.threshold,
        "threshold_rule": ref.model_card.threshold_rule or "not recorded in the model card",
        **_ranking(sc.labels, sc.probs, pred, sc.stay_start),
        "brier": brier(sc.labels, sc.probs),
        "calibration": {"bins": bins, "ece": expected_calibration_error(bins), "note": _calibration_note(ref)},
    }


def evaluate(ref: ModelRef, sel: Selection, sc: Scored, policy: AlertSettings) -> Evaluation:
    """All metrics of one model on the selected, scored rows (see the module docstring)."""
    stays = stay_table(sc.labels, sc.stay_start)
    pred = sc.probs.astype(np.float64) >= ref.threshold
    fired = simulate_policy(
        policy, risk=sc.probs, threshold=ref.alert_level, news2_total=sc.screens["news2_total"],
        stay_start=sc.stay_start, news2_max_part=sc.screens["news2_max_part"], model=ref.name,
        unit=row_units(sc.static, stays.n_rows),
    )  # fmt: skip
    per_type = {k: stay_alerts(v, stays) for k, v in fired.items()}
    everything = per_type["model_risk"]
    for k in ("news2_urgent", "news2_emergency", "news2_single"):
        everything = everything | per_type[k]
    streams = {**per_type, "policy_all": everything}
    leads = {"model": lead_times(stays, per_type["model_risk"])}
    comparators: dict[str, Any] = {}
    for comp in COMPARATORS:
        comparators[comp.name], leads[comp.name] = _comparator(sc, stays, comp)
    model_alerts = per_type["model_risk"]
    subgroups = {
        g: {k: _subgroup(sc, stays, model_alerts, pred, m) for k, m in groups.items()}
        for g, groups in subgroup_masks(sc.static).items()
    }
    from vigil.onboarding.onset import onset_ece

    model_block = _model_block(ref, sc, pred)
    # the calibration of the onset probability alerts quote (the version's own map; a site's after vigil onboard)
    model_block["onset_probability"] = onset_ece(sc.probs, sc.labels, sc.stay_start, ref)
    metrics = {
        "model": model_block,
        "data": _data_block(sel, sc, stays),
        "alerting": {
            "policy": policy.model_dump(),
            **{k: alert_summary(stays, v) for k, v in streams.items()},
        },
        "subgroups": subgroups,
        "comparators": comparators,
        "notes": list(sel.notes),
    }
    return Evaluation(metrics=metrics, scored=sc, leads=leads)


# ------------------------------------------------------------------------------------------- outputs
def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars/arrays as Python values and NaN/inf as ``None`` (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def default_out(ref: ModelRef, split: str) -> Path:
    """``reports/<name>-<version>-<split>`` in the working directory."""
    return Path("reports") / f"{ref.name}-{ref.version}-{split}"


def update_card(ref: ModelRef, split: str, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` into the model card under ``evaluation.<split>`` atomically (temporary file in the
    same folder, then rename), keeping every other field as it is."""
    card = read_card(ref.path / CARD_FILE)
    evaluation = card.get("evaluation") if isinstance(card.get("evaluation"), dict) else {}
    evaluation[split] = jsonable(metrics)
    card["evaluation"] = evaluation
    return _write_card(ref, card)


def record_alert_policy(ref: ModelRef, sweep_result: dict[str, Any], policy: AlertSettings) -> dict[str, Any] | None:
    """Record the rule a validation ``--policy-sweep`` chose as the card's ``alert_policy`` (its ``raise_at`` is
    the model's default alert level, :attr:`vigil.registry.ModelRef.alert_level`); None when no rule fitted the
    budget (the card is left alone). The persistence and refractory window are the configuration's
    (``alerts.model_risk``), shared by all models, so the rule recorded is the sweep's best at those
    (``chosen_as_configured``), not necessarily its best overall (``chosen``)."""
    chosen = sweep_result.get("chosen_as_configured")
    if sweep_result.get("split") != "validation" or not chosen:
        return None
    mr = policy.model_risk
    raise_at = chosen["raise_at"] if chosen["raise_at"] is not None else ref.threshold
    escalation = f", one escalation at +{mr.escalate_by:g}" if mr.escalate_by else ""
    entry: dict[str, Any] = {
        "raise_at": raise_at,
        "rule": (f"model_risk raised when risk >= raise_at (persistence {chosen['persistence']}, clear below "
                 f"{'0.8 x raise_at' if mr.clear_below is None else mr.clear_below}, refractory "
                 f"{chosen['refractory_h']:g} h{escalation})"),
        "chosen_by": (f"vigil evaluate --split validation --policy-sweep --budget {sweep_result['budget']:g}: the "
                      f"highest share of septic stays alerted before onset among rules with <= "
                      f"{sweep_result['budget']:g} alerts per patient-day (escalations counted) and a median lead "
                      f">= 6 h, at the configured persistence and refractory window; ties to the lower burden"),
        "validation": {"alerts_per_patient_day": round(chosen["burden"], 4),
                       "share_septic_alerted_early": round(chosen["early"], 4),
                       "median_lead_h": chosen["lead_median_h"],
                       "ppv_stay": None if chosen["ppv"] is None else round(chosen["ppv"], 4)},
    }  # fmt: skip
    card = read_card(ref.path / CARD_FILE)
    card["alert_policy"] = entry
    _write_card(ref, card)
    return entry


def _write_card(ref: ModelRef, card: dict[str, Any]) -> Path:
    return write_card(ref.path / CARD_FILE, card)


def summary_line(ev: Evaluation, elapsed_s: float) -> dict[str, Any]:
    """The one-line stdout summary: headline model metrics and NEWS2 >= 5 on the same rows."""
    m, a, n5 = ev.metrics["model"], ev.metrics["alerting"]["model_risk"], ev.metrics["comparators"]["NEWS2>=5"]

    def short(block: dict[str, Any], al: dict[str, Any]) -> dict[str, Any]:
        return {
            "auroc": block["auroc"],
            "auprc": block["auprc"],
            "utility": block["utility"],
            "alerts_per_patient_day": al["alerts_per_patient_day"],
            "share_septic_alerted_early": al["share_septic_alerted_early"],
            "median_lead_h": al["lead_time_h"]["median"],
            "ppv_stay": al["ppv_stay"],
        }

    d = ev.metrics["data"]
    return jsonable(
        {
            "model": f"{m['name']}:{m['version']}",
            "data": d["file"],
            "split": d["split"],
            "stays": d["stays"],
            "rows": d["rows"],
            "threshold": m["threshold"],
            **short(m, a),
            "brier": m["brier"],
            "news2_ge5": short(n5, n5["alerting"]),
            "elapsed_s": round(elapsed_s, 2),
        }
    )
