"""The promotion gate: a candidate model version may replace the serving version of the same name only if
it is not worse on the same validation data.

Both versions are scored with :func:`vigil.offline.score_frame` (the serving featurizer and ONNX Runtime)
on the same rows, each at its own card threshold. The candidate passes if

* it loads in :class:`~vigil.scoring.Scorer` (feature-schema hash, ONNX file) and reproduces its card's
  canary probabilities, exactly the checks a worker makes before it hot-swaps, and gives finite
  probabilities on every row;
* ``utility >= serving utility - margin_utility`` and ``AUROC >= serving AUROC - margin_auroc``.

The rows: the validation split of ``data`` (:func:`~vigil.training.data.split_by_patient` with the
candidate card's seed) when ``data`` is the file the candidate was trained on (same file name as the card's
``training.source_file``), else every row of ``data``. With no serving version the metric comparison is
skipped; ``force`` skips it too (the candidate must still load and give finite probabilities).

The candidate's folder must also hold its resource-demand calibration (``demand_calibration.json`` for this
name and version, written by ``vigil train`` or ``vigil demand calibrate``): without it the demand job
cannot use the new version's scores. ``demand_check=False`` (``--no-demand-check``) skips only that check;
``force`` does not skip it.

>>> verdict(ModelScore("m:2", 0.5, 0.40, 0.80, 0.1, 0.2), ModelScore("m:1", 0.5, 0.42, 0.80, 0.1, 0.2),
...         margin_utility=0.01, margin_auroc=0.01)
['utility 0.4000 < serving 0.4200 - margin 0.0100']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.errors import ConfigError, ModelError
from vigil.registry import ModelRef, Registry

if TYPE_CHECKING:
    import pandas as pd

    from vigil.scoring import Scorer

__all__ = [
    "ModelScore", "GateData", "GateResult", "run_gate", "gate_rows", "score_model", "scored", "verdict", "load_checked",
    "demand_calibration_problem",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelScore:
    """One model's metrics on the gate rows, at its own card threshold."""

    model: str  # NAME:VERSION
    threshold: float
    utility: float
    auroc: float
    auprc: float
    alert_rate: float


@dataclass(frozen=True, slots=True)
class GateData:
    """Which rows the gate scored (counts only: no patient identifiers)."""

    path: str
    subset: str  # "validation split (seed 7)" or "all rows"
    rows: int
    stays: int
    septic_stays: int
    positive_rows: int

    def describe(self) -> str:
        return (
            f"{self.path}, {self.subset}: {self.rows} rows, {self.stays} stays ({self.septic_stays} septic, "
            f"{self.positive_rows} positive rows)"
        )


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's verdict with everything needed to explain it (CLI output, history line, automation)."""

    passed: bool
    candidate: str  # NAME:VERSION
    serving: str | None  # NAME:VERSION compared against; None on a first promotion
    reasons: tuple[str, ...]  # why it was refused (empty when passed)
    notes: tuple[str, ...] = ()  # worth knowing, not a refusal (seed differs, other data file, forced)
    candidate_metrics: ModelScore | None = None
    serving_metrics: ModelScore | None = None
    data: GateData | None = None
    margin_utility: float = 0.0
    margin_auroc: float = 0.0
    forced: bool = False

    @property
    def rows(self) -> int:
        return self.data.rows if self.data else 0

    @property
    def stays(self) -> int:
        return self.data.stays if self.data else 0

    @property
    def serving_version(self) -> str | None:
        return self.serving.partition(":")[2] if self.serving else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN metrics become None)."""
        from vigil.evaluation.report import jsonable

        out: dict[str, Any] = jsonable(asdict(self))
        return out

    def report(self) -> str:
        """Both models' numbers, the rule, the data and the verdict, as text."""
        lines = [f"promotion gate: {self.candidate} vs serving {self.serving or '(none)'}"]
        if self.data:
            lines.append(f"data: {self.data.describe()}")
        lines += [f"note: {n}" for n in self.notes]
        rows = [("candidate", self.candidate_metrics), ("serving", self.serving_metrics)]
        if any(m for _, m in rows):
            lines.append(f"  {'':<10}{'model':<24}{'threshold':>10}{'utility':>10}{'AUROC':>10}{'AUPRC':>10}"
                         f"{'alerts':>10}")  # fmt: skip
            for label, m in rows:
                if m is not None:
                    lines.append(f"  {label:<10}{m.model:<24}{m.threshold:>10.4g}{m.utility:>10.4f}{m.auroc:>10.4f}"
                                 f"{m.auprc:>10.4f}{m.alert_rate:>10.4f}")  # fmt: skip
        if self.serving_metrics is not None and not self.forced:
            lines.append(f"rule: candidate utility >= serving - {self.margin_utility:g} and AUROC >= serving - "
                         f"{self.margin_auroc:g}")  # fmt: skip
        lines.append("PASSED" + (" (forced: metric comparison skipped)" if self.forced else "") if self.passed
                     else "REFUSED: " + "; ".join(self.reasons))  # fmt: skip
        return "\n".join(lines)


def _split_seed(ref: ModelRef) -> int | None:
    return ref.model_card.split_seed


def gate_rows(
    data: Path, candidate: ModelRef, serving: ModelRef | None = None
) -> tuple[pd.DataFrame, GateData, list[str]]:
    """(frame, description, notes): the rows both models are scored on (see the module docstring)."""
    from vigil.training.data import load_training_frame, split_by_patient

    data = Path(data)
    if not data.exists():
        msg = f"gate data {data} not found (--data or VIGIL_REGISTRY__GATE_DATA)"
        raise ConfigError(msg)
    df = load_training_frame(data)
    notes: list[str] = []
    source = candidate.model_card.source_file
    seed = _split_seed(candidate)
    if source and data.name == source and seed is not None:
        if serving is not None and _split_seed(serving) not in (None, seed):
            notes.append(f"split seeds differ (candidate {seed}, serving {_split_seed(serving)}): using the "
                         f"candidate's; some rows may be in the serving model's training split")  # fmt: skip
        mask = split_by_patient(df["patient_id"].to_numpy(), seed)["validation"]
        df = df[mask].reset_index(drop=True)
        subset = f"validation split (seed {seed})"
    else:
        subset = "all rows"
        notes.append(f"{data.name} is not the candidate's training file ({source or 'not recorded'}): every row "
                     "is used; some stays may have been in a model's training split")  # fmt: skip
    if df.empty:
        msg = f"gate data {data} ({subset}) has no rows"
        raise ConfigError(msg)
    labels = df["SepsisLabel"].to_numpy()
    septic = df.groupby("patient_id", sort=False)["SepsisLabel"].max()
    desc = GateData(path=str(data), subset=subset, rows=len(df), stays=len(septic), septic_stays=int(septic.sum()),
                    positive_rows=int(labels.sum()))  # fmt: skip
    return df, desc, notes


def score_model(scorer: Scorer, df: pd.DataFrame) -> ModelScore:
    """Metrics of ``scorer`` on ``df`` at its card threshold; :class:`ModelError` on non-finite output."""
    from vigil.offline import score_frame

    probs, stay_start = score_frame(scorer, df)
    return scored(scorer, probs, df["SepsisLabel"].to_numpy(), stay_start)


def scored(scorer: Scorer, probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray) -> ModelScore:
    """:func:`score_model` from scores already computed (``score_frame``'s order); :class:`ModelError` on
    non-finite ones."""
    from vigil.evaluation.metrics import auprc, auroc
    from vigil.evaluation.utility import normalized_utility

    bad = int((~np.isfinite(probs)).sum())
    if bad:
        msg = f"{scorer.name}:{scorer.version} gave {bad} non-finite probabilities on the gate data"
        raise ModelError(msg)
    pred = probs >= scorer.threshold
    return ModelScore(
        model=f"{scorer.name}:{scorer.version}", threshold=scorer.threshold,
        utility=normalized_utility(labels, pred, stay_start), auroc=auroc(labels, probs),
        auprc=auprc(labels, probs), alert_rate=float(pred.mean()),
    )  # fmt: skip


def verdict(candidate: ModelScore, serving: ModelScore, *, margin_utility: float, margin_auroc: float) -> list[str]:
    """Why ``candidate`` may not replace ``serving`` (empty: it may). NaN metrics (no septic stay or one
    class only in the data) are a refusal: nothing can be compared."""
    reasons = []
    for name, c, s, margin in (("utility", candidate.utility, serving.utility, margin_utility),
                               ("AUROC", candidate.auroc, serving.auroc, margin_auroc)):  # fmt: skip
        if not (math.isfinite(c) and math.isfinite(s)):
            reasons.append(f"{name} is undefined on the gate data (candidate {c}, serving {s}): it needs septic "
                           "and non-septic stays")  # fmt: skip
        elif c < s - margin:
            reasons.append(f"{name} {c:.4f} < serving {s:.4f} - margin {margin:.4f}")
    return reasons


def load_checked(ref: ModelRef) -> Scorer:
    """A CPU scorer that passed a worker's own checks before a hot swap (feature-schema hash, loadable ONNX,
    canary rows against the card); :class:`ModelError` otherwise."""
    from vigil.scoring import Scorer

    scorer = Scorer(ref)
    scorer.check_canary()
    return scorer


def demand_calibration_problem(ref: ModelRef) -> str | None:
    """Why ``ref``'s folder has no usable demand calibration (missing, unreadable, or fitted for another
    name/version), with the command that fits it; ``None`` when it has one."""
    from vigil.demand.calibration import CALIBRATION_FILE, Calibration

    spec = f"{ref.name}:{ref.version}"
    path = ref.path / CALIBRATION_FILE
    source = ref.model_card.source_file
    fix = f"fit it with `vigil demand calibrate --model {spec}`" + (
        f" (--data: its training file, {source})" if source else "")  # fmt: skip
    if not path.is_file():
        return f"{spec} has no demand calibration ({path} missing): the demand job could not use its scores; {fix}"
    try:
        cal = Calibration.load(path)
    except ConfigError as exc:
        return f"{spec}'s demand calibration cannot be read ({exc}); {fix.replace('fit it', 'refit it')}"
    if (cal.model, cal.version) != (ref.name, ref.version):
        return (f"{path} calibrates {cal.model}:{cal.version}, not {spec} (copied from another version?); "
                f"{fix.replace('fit it', 'refit it')}")  # fmt: skip
    return None


def run_gate(
    registry: Registry,
    candidate: str,
    data: Path,
    *,
    margin_utility: float,
    margin_auroc: float,
    force: bool = False,
    against: str | None = None,
    demand_check: bool = True,
) -> GateResult:
    """Judge ``candidate`` (``NAME:VERSION``) against the serving version of its name on ``data`` — or,
    with ``against``, against the serving version of that other model line (a new family replacing it) —
    and, unless ``demand_check`` is false, require its demand calibration (``force`` does not skip that).

    Raises :class:`ModelError` if the candidate is not in the registry and :class:`ConfigError` if the data
    is missing or empty; every other failure is a refusal in the returned :class:`GateResult`.
    """
    result = _metric_gate(registry, candidate, data, margin_utility=margin_utility, margin_auroc=margin_auroc,
                          force=force, against=against)  # fmt: skip
    problem = demand_calibration_problem(registry.get(candidate))
    if problem is None:
        return result
    if not demand_check:
        note = f"demand calibration check skipped (--no-demand-check): {problem}"
        return replace(result, notes=(*result.notes, note))
    return replace(result, passed=False, reasons=(*result.reasons, problem))


def _metric_gate(
    registry: Registry,
    candidate: str,
    data: Path,
    *,
    margin_utility: float,
    margin_auroc: float,
    force: bool,
    against: str | None,
) -> GateResult:
    """:func:`run_gate` without the demand-calibration check: loads, scores and compares."""
    cand_ref = registry.get(candidate)
    spec = f"{cand_ref.name}:{cand_ref.version}"
    line = against or cand_ref.name
    serving_version = registry.serving().get(line)
    serving_ref = registry.get(f"{line}:{serving_version}") if serving_version else None
    base: dict[str, Any] = {
        "candidate": spec, "serving": f"{line}:{serving_version}" if serving_version else None,
        "margin_utility": margin_utility, "margin_auroc": margin_auroc, "forced": force,
    }  # fmt: skip
    try:
        cand_scorer = load_checked(cand_ref)
    except ModelError as exc:
        return GateResult(passed=False, reasons=(f"the candidate cannot serve: {exc}",), **base)
    if force and not Path(data).exists():  # an emergency promotion needs no training data
        note = f"gate data {data} not found: forced without the metric comparison (the candidate loads)"
        return GateResult(True, reasons=(), notes=(note,), **base)
    df, desc, notes = gate_rows(data, cand_ref, serving_ref)
    try:
        cand = score_model(cand_scorer, df)
    except ModelError as exc:
        return GateResult(passed=False, reasons=(str(exc),), notes=tuple(notes), data=desc, **base)
    if serving_ref is None:
        notes.append("no serving version yet: the candidate loads and gives finite probabilities")
        return GateResult(True, reasons=(), notes=tuple(notes), candidate_metrics=cand, data=desc, **base)
    try:
        serv: ModelScore | None = score_model(load_checked(serving_ref), df)
    except ModelError as exc:
        serv = None
        problem = f"the serving version cannot be scored by this vigil ({exc})"
        if not force:
            reason = f"{problem}: nothing to compare against; promote with --force --reason if intended"
            return GateResult(False, reasons=(reason,), notes=tuple(notes), candidate_metrics=cand, data=desc,
                              **base)  # fmt: skip
        notes.append(problem)
    reasons = verdict(cand, serv, margin_utility=margin_utility, margin_auroc=margin_auroc) if serv else []
    if force:
        notes += [f"forced past: {r}" for r in reasons]
        reasons = []
    return GateResult(not reasons, reasons=tuple(reasons), notes=tuple(notes), candidate_metrics=cand,
                      serving_metrics=serv, data=desc, **base)  # fmt: skip
