"""The promotion gate of a site version (``vigil onboard``), against the base, on the site's own stays.

:mod:`vigil.gate`'s checks (the candidate loads, reproduces its card's canaries, gives finite scores; its demand
calibration is usable) and rule (utility at each version's threshold and AUROC, each refused when more than the
registry's margin worse), on:

* with labels and enough septic stays in every part, **every stay of the sample, cross-fitted**
  (:mod:`vigil.onboarding.crossfit`: each stay scored by a version fitted without it), about 3.3 times the
  held-back check stays; utility pooled over the folds, AUROC within each fold (both versions on the same pairs);
* otherwise the held-back **check stays**, as before;
* without labels: no metric comparison (the candidate loads and reproduces its card).

Both comparisons that can be made are bootstrapped (:mod:`vigil.onboarding.noise`) and given as notes; the
registered version's own figures on the check stays are in the report either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.errors import ModelError
from vigil.onboarding.noise import paired_check_noise, within_group_auroc
from vigil.onboarding.sample import frame_counts

if TYPE_CHECKING:
    import pandas as pd

    from vigil.config import Settings
    from vigil.gate import GateResult, ModelScore
    from vigil.onboarding.crossfit import CrossFit
    from vigil.registry import ModelRef

__all__ = ["site_gate"]


def _score(model: str, cross: CrossFit, scores: np.ndarray, pred: np.ndarray, threshold: float) -> ModelScore:
    """Utility pooled over the folds; AUROC within folds; AUPRC the mean of the folds' (each fold's version has its
    own scale)."""
    from vigil.evaluation.metrics import auprc
    from vigil.evaluation.utility import normalized_utility
    from vigil.gate import ModelScore

    y = cross.labels
    per_fold = [auprc(y[cross.fold == k], scores[cross.fold == k]) for k in np.unique(cross.fold)]
    return ModelScore(model=model, threshold=threshold, utility=normalized_utility(y, pred, cross.stay_start),
                      auroc=within_group_auroc(y, scores, cross.fold), auprc=float(np.mean(per_fold)),
                      alert_rate=float(np.mean(pred)) if pred.size else 0.0)  # fmt: skip


def _counts(df: pd.DataFrame) -> tuple[int, int, int, int]:
    c = frame_counts(df)
    return c["rows"], c["stays"], c["septic_stays"], c["positive_rows"]


def site_gate(cand: ModelRef, base: ModelRef, check: pd.DataFrame, sample: pd.DataFrame, data_name: str,
              settings: Settings, labelled: bool, cross: CrossFit | None,
              why_not: str) -> tuple[GateResult, dict[str, Any]]:  # fmt: skip
    """The verdict (module docstring) and what it rests on: ``{"on": ..., "check_noise": ..., "crossfit": ...}``;
    ``why_not`` is the note when there is no cross-fit to judge on."""
    from vigil.gate import GateData, GateResult, demand_calibration_problem, load_checked, scored, verdict
    from vigil.offline import score_frame

    mu, ma = settings.registry.margin_utility, settings.registry.margin_auroc
    common: dict[str, Any] = {"candidate": f"{cand.name}:{cand.version}", "serving": f"{base.name}:{base.version}",
                              "margin_utility": mu, "margin_auroc": ma}  # fmt: skip
    check_desc = GateData(f"{data_name} (site sample, held-back check stays)", "site check split", *_counts(check))
    extra: dict[str, Any] = {"on": "check stays", "check_noise": None, "crossfit": None}
    try:
        cs = load_checked(cand)
    except ModelError as exc:
        return GateResult(False, reasons=(f"the candidate cannot serve: {exc}",), data=check_desc, **common), extra
    if not labelled:
        note = ("no labels at the site: the metric comparison cannot be made (the candidate loads and reproduces its "
                "card)")
        return GateResult(True, reasons=(), notes=(note,), data=check_desc, **common), extra
    bs = load_checked(base)
    (pc, st), (pb, _) = score_frame(cs, check), score_frame(bs, check)
    labels = check["SepsisLabel"].to_numpy()
    cm, bm = scored(cs, pc, labels, st), scored(bs, pb, labels, st)
    check_noise = paired_check_noise(labels, st, pc, pc >= cs.threshold, pb, pb >= bs.threshold, margin_utility=mu,
                                     margin_auroc=ma)  # fmt: skip
    extra["check_noise"] = check_noise.as_dict()
    notes = [f"the registered version on the check stays: {check_noise.describe()}"]
    desc = check_desc
    if cross is None:
        notes.insert(0, why_not)
    else:
        y, s = cross.labels, cross.stay_start
        cm = _score(f"{cand.name}:{cand.version} (cross-fitted)", cross, cross.cand_scores, cross.cand_pred,
                    float("nan"))  # fmt: skip
        bm = _score(f"{base.name}:{base.version}", cross, cross.base_scores, cross.base_pred, bs.threshold)
        cn = paired_check_noise(y, s, cross.cand_scores, cross.cand_pred, cross.base_scores, cross.base_pred,
                                margin_utility=mu, margin_auroc=ma, on="sample stays (cross-fitted)",
                                groups=cross.fold)  # fmt: skip
        extra.update(on="every sample stay, cross-fitted", crossfit={"folds": cross.folds, "noise": cn.as_dict()})
        rows, stays, septic, pos = _counts(sample)
        desc = GateData(f"{data_name} (site sample, every stay scored by a version fitted without it)",
                        f"cross-fitted, {len(cross.folds)} folds by patient", rows, stays, septic, pos)  # fmt: skip
        notes.insert(0, f"judged on every sample stay, cross-fitted (each fold's version fitted as the registered "
                        f"one was, without that fold): {cn.describe()}")  # fmt: skip
    reasons = verdict(cm, bm, margin_utility=mu, margin_auroc=ma)
    if problem := demand_calibration_problem(cand):
        reasons.append(problem)
    return GateResult(not reasons, reasons=tuple(reasons), notes=tuple(notes), candidate_metrics=cm,
                      serving_metrics=bm, data=desc, **common), extra  # fmt: skip
