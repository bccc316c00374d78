"""``vigil onboard``: a new hospital in one measured, reversible step.

From the site's own silent-mode sample (PhysioNet-format stays):

1. the sample is named by its sha256 and split by patient (:mod:`vigil.onboarding.sample`): ``train`` and
   ``tune`` stays adapt, ``check`` stays are held back for the report and the gate;
2. **labelled** (:mod:`vigil.onboarding.labelled`): two adaptations of the base model are fitted on ``train``
   (:mod:`vigil.onboarding.adapt`: a logistic recalibration layer on the base logit, and continued boosting from
   the base margin) and judged by their normalized utility on ``tune`` (each at its own best threshold there): the
   preferred one (the layer below ``boost_from_stays`` fit stays, the site trees from there on) is kept unless the
   other gains more than ``min_gain``. Then, on the stays the kept model did not
   train on (the recalibration layer: all fit stays, refitted; the site trees: ``tune``): the threshold with the
   highest utility, the alert level that alerts the most septic stays before onset within the budget
   (:mod:`vigil.onboarding.levels`) and the onset-probability calibration (``demand_calibration.json``, the code
   of ``vigil demand calibrate``);
   **unlabelled** (``--unlabelled``; labels, if the file has them, are read only to report on ``check``): the base
   graph and threshold unchanged, the alert level at which the site's own scores on the fit stays give the
   budgeted alert rate, and the base version's calibration copied, marked not site-validated;
3. a new version is registered (ONNX checked against the framework within 1e-4; a card naming the site sample,
   the base version, what was adapted and the site metrics) and put through the promotion gate against the base
   (:mod:`vigil.onboarding.gating`: :mod:`vigil.gate`'s checks and rule; with labels on every sample stay,
   cross-fitted by :mod:`vigil.onboarding.crossfit`, else on the check stays; both comparisons bootstrapped by
   :mod:`vigil.onboarding.noise`); the report compares base and onboarded on the check stays.

Nothing serves until promoted (``promote=True`` does it when the gate passed).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.card import CARD_FILE, read_card, write_card
from vigil.config import AlertSettings, Settings
from vigil.errors import ConfigError, ModelError
from vigil.evaluation.report import jsonable
from vigil.onboarding import abstention as ob_abs
from vigil.onboarding import levels as lv
from vigil.onboarding import prior as pr
from vigil.onboarding.crossfit import MIN_SEPTIC_PER_PART, crossfit
from vigil.onboarding.gating import site_gate
from vigil.onboarding.labelled import BOOST_FROM_STAYS, Adapted, adapt_labelled, preferred_adaptation
from vigil.onboarding.markdown import report_markdown
from vigil.onboarding.onset import onset_ece
from vigil.onboarding.sample import frame_features as _features
from vigil.onboarding.sample import frame_labels as _labels
from vigil.onboarding.sample import sample_sha256, site_sample_mask, split_site
from vigil.registry import ModelRef, Registry

if TYPE_CHECKING:
    import pandas as pd

    from vigil.scoring import Scorer

__all__ = ["OnboardOptions", "onboard", "site_sample_mask", "onset_ece", "PARITY_TOL"]

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class OnboardOptions:
    budget: float = 0.2  # alerts per patient-day
    unlabelled: bool = False
    seed: int = 7
    check_frac: float = 0.3
    tune_share: float = 0.3
    headroom: float = 0.1
    prevalence: float | None = None  # unlabelled: the site's share of septic stays moves the threshold (prior)
    level_by: str = "early"  # labelled: the level maximises "early" (share alerted before onset) or "utility"
    min_gain: float = 0.01  # utility the adaptation not preferred must gain on tune over the preferred one
    boost_from_stays: int = BOOST_FROM_STAYS  # fit stays from which continued boosting is the preferred adaptation
    sample_frac: float | None = None  # use only this seeded share of the file's stays as the site sample
    name: str | None = None  # registry name of the new version (default: the base's)
    threads: int = 1
    out: Path | None = None  # report folder (default reports/onboard-<name>-<version>)
    promote: bool = False


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------ registration
def _next_version(root: Path, name: str) -> str:
    base = Path(root) / name
    have = [p.name for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return str(max((int(v) for v in have if v.isdigit()), default=0) + 1)


def _onnx_probs(proto_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(proto_path), providers=["CPUExecutionProvider"])
    if not x.shape[0]:
        return np.zeros(0, np.float32)
    return np.asarray(sess.run(["probability"], {"features": np.ascontiguousarray(x, np.float32)})[0]).reshape(-1)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _copy_calibration(base: ModelRef, target: Path, name: str, version: str) -> Path | None:
    """The base version's demand calibration relabelled for ``name:version`` (the graph is the base's)."""
    from vigil.demand.calibration import CALIBRATION_FILE, Calibration

    src = base.path / CALIBRATION_FILE
    if not src.is_file():
        return None
    cal = Calibration.load(src)
    meta = {**cal.meta, "site_validated": False,
            "copied_from": f"{base.name}:{base.version} (label-free onboarding: same graph, not refitted on site data)"}
    return replace(cal, model=name, version=version, meta=meta).save(target / CALIBRATION_FILE)


# ------------------------------------------------------------------------------------------------ the report
def _evaluate(ref: ModelRef, scorer: Scorer, df: pd.DataFrame, source: str, policy: AlertSettings,
              labelled: bool) -> dict[str, Any]:  # fmt: skip
    """Headline numbers of one version on the check stays (the alerting as the worker would raise it)."""
    from vigil.evaluation.report import evaluate, score_rows
    from vigil.evaluation.selection import Selection

    if not labelled:
        from vigil.offline import score_frame

        probs, stay_start = score_frame(scorer, df)
        pts = lv.replay_levels(probs, stay_start, policy, np.array([ref.alert_level]))
        return {"model": f"{ref.name}:{ref.version}", "threshold": ref.threshold, "alert_level": ref.alert_level,
                "alerts_per_patient_day": pts[0].burden}  # fmt: skip
    sel = Selection(df=df, source=source, split="site-check", training_data=False)
    sc = score_rows(scorer, df)
    m = evaluate(ref, sel, sc, policy).metrics
    a = m["alerting"]["model_risk"]
    return {
        "model": f"{ref.name}:{ref.version}", "threshold": ref.threshold, "alert_level": ref.alert_level,
        "utility": m["model"]["utility"], "auroc": m["model"]["auroc"], "auprc": m["model"]["auprc"],
        "alerts_per_patient_day": a["alerts_per_patient_day"],
        "share_septic_alerted_early": a["share_septic_alerted_early"],
        "septic_stays_evaluable": a["septic_stays_evaluable"], "median_lead_h": a["lead_time_h"]["median"],
        "ppv_stay": a["ppv_stay"], "onset_probability": onset_ece(sc.probs, sc.labels, sc.stay_start, ref),
        "subgroups_unit": {k: {"utility": v["utility"], "alerts_per_patient_day": v["alerts_per_patient_day"],
                               "share_septic_alerted_early": v["share_septic_alerted_early"]}
                           for k, v in m["subgroups"].get("unit", {}).items()},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the command
def onboard(settings: Settings, data: Path, base_spec: str | None = None,
            opts: OnboardOptions | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the onboarding (module docstring); returns the summary (``model``: the new ``NAME:VERSION``)."""
    import onnx

    from vigil.features import FEATURE_NAMES
    from vigil.offline import score_frame
    from vigil.progress import Progress
    from vigil.scoring import Scorer, canary_inputs
    from vigil.training.data import load_training_frame
    from vigil.training.trainer import DRIFT_FEATURES, reference_bins

    opts = opts or OnboardOptions()
    t0 = time.perf_counter()
    # one line per stage off a terminal (vigil.progress): load, score base, adapt, levels, check + gate, report
    steps = Progress(6, "onboard", "stage", interval_s=0.0)
    data = Path(data)
    if not data.exists():
        raise ConfigError(f"site sample {data} not found")
    reg = Registry(settings.models_dir)
    base = reg.get(base_spec or next(iter(reg.serving()), ""))
    if base.model_card.input.sequence or base.model_card.sequence_schema is not None:
        raise ConfigError(f"{base.name}:{base.version} reads an hourly sequence: onboarding supports feature-vector "
                          "models (logreg, mlp, gbm)")  # fmt: skip
    df = load_training_frame(data)
    if opts.sample_frac is not None:
        df = df[site_sample_mask(df["patient_id"].to_numpy(), opts.sample_frac, opts.seed)].reset_index(drop=True)
    has_labels = "SepsisLabel" in df.columns and df["SepsisLabel"].notna().all()
    if not opts.unlabelled and not has_labels:
        raise ConfigError(f"{data.name} has no SepsisLabel column: onboard it with --unlabelled")
    labelled = not opts.unlabelled
    if labelled and opts.prevalence is not None:
        raise ConfigError("--prevalence moves the threshold without labels: use it with --unlabelled (with labels "
                          "the threshold is fitted on them)")  # fmt: skip
    if opts.prevalence is not None:  # before any work: the base must say how its score maps to a posterior
        pr.check_prevalence(base.card.get("prior_shift"), f"{base.name}:{base.version}", opts.prevalence)
    sp = split_site(df, opts.seed, opts.check_frac, opts.tune_share)
    steps.update(1)  # sample loaded and split
    counts = sp.counts()
    if labelled and min(counts[k]["septic_stays"] for k in ("train", "tune", "check")) < 3:
        raise ConfigError(f"the site sample has too few septic stays to adapt and check on ({counts}); collect more "
                          "stays or onboard with --unlabelled")  # fmt: skip
    base_scorer = Scorer(base, threads=opts.threads)
    p_base, starts = {}, {}
    for k in ("train", "tune"):
        p_base[k], starts[k] = score_frame(base_scorer, getattr(sp, k))
    steps.update(1)  # the base model scored on the fit and tune stays
    name = opts.name or base.name
    version = _next_version(reg.root, name)
    doc = f"{name} v{version}: {base.name}:{base.version} onboarded at a site"

    prefer = preferred_adaptation(counts["train"]["stays"] + counts["tune"]["stays"], opts.boost_from_stays)
    if labelled:
        adapted = adapt_labelled(base, sp, p_base, doc, seed=opts.seed, threads=opts.threads, min_gain=opts.min_gain,
                                 prefer=prefer)  # fmt: skip
    else:
        adapted = Adapted("none (label-free: level and threshold only)", onnx.load(str(base.onnx_path)), None, "fit",
                           {"graph": f"the base graph of {base.name}:{base.version}, unchanged"})  # fmt: skip

    steps.update(1)  # adapted
    target = reg.root / name / version
    target.mkdir(parents=True, exist_ok=False)
    try:
        onnx.save(adapted.proto, str(target / "model.onnx"))
        # parity with the framework on held-back rows before anything else
        x_check, _ = _features(sp.check.iloc[: min(len(sp.check), 20_000)])
        diff = 0.0
        if adapted.native is not None and x_check.shape[0]:
            pb = base_scorer.predict(x_check)
            diff = float(np.max(np.abs(adapted.native(pb, x_check) - _onnx_probs(target / "model.onnx", x_check))))
            if not diff <= PARITY_TOL:
                raise ModelError(f"the onboarded graph differs from its framework by {diff:.3g} (> {PARITY_TOL})")
        # scores of the new graph on the stays that fix its threshold, level and calibration
        fix_df = sp.tune if adapted.fit_on == "tune" else sp.fit
        x_fix, s_fix = _features(fix_df)
        p_fix = _onnx_probs(target / "model.onnx", x_fix)
        policy = settings.alerts
        grid = lv.level_grid(p_fix)
        if labelled:
            y_fix = _labels(fix_df)
            thr, u_thr = lv.site_threshold(p_fix, y_fix, s_fix)
            quantile = None
            pts = lv.replay_levels(p_fix, s_fix, policy, grid, y_fix)
            chosen, pts = lv.refine_labelled(p_fix, s_fix, policy, pts, y_fix, opts.budget, opts.headroom,
                                             opts.level_by)  # fmt: skip
            crit = "normalized utility of risk >= level" if opts.level_by == "utility" else (
                "share of septic stays alerted before onset")
            rule = (f"highest {crit} among levels with <= "
                    f"{opts.budget * (1 - opts.headroom):.3g} alerts per patient-day on the site's {adapted.fit_on} "
                    f"stays (budget {opts.budget:g}, headroom {opts.headroom:g}; ties to the "
                    f"{'lower' if opts.level_by == 'utility' else 'higher'} burden; the grid refined by bisection "
                    "next to the cap)")
            thr_rule = f"maximises normalized utility on the site's {adapted.fit_on} stays"
        else:
            # the threshold (what utility and PredictedLabel read) stays the base's: without labels nothing says
            # where the site's utility peaks (matching the base's training alert rate instead moved it the wrong
            # way at a site with fewer septic stays: docs/evaluation/onboarding.md)
            rate = (base.model_card.reference or {}).get("alert_rate")
            thr, u_thr, by_prior = base.threshold, None, None
            if opts.prevalence is not None:  # the site's stated share of septic stays moves it (a prior shift)
                thr, by_prior = pr.prevalence_threshold(base.card.get("prior_shift"), f"{base.name}:{base.version}",
                                                        base.threshold, opts.prevalence, s_fix)  # fmt: skip
            chosen, pts = lv.refine_unlabelled(p_fix, s_fix, policy, lv.replay_levels(p_fix, s_fix, policy, grid),
                                               opts.budget, opts.headroom)  # fmt: skip
            rule = (f"lowest level with <= {opts.budget * (1 - opts.headroom):.3g} alerts per patient-day on the "
                    f"site's own scores of its fit stays (budget {opts.budget:g}, headroom {opts.headroom:g}; the grid "
                    "refined by bisection next to the cap); no label read")
            thr_rule = (f"the base version's ({base.name}:{base.version}) threshold, kept: no site label to move it"
                        if by_prior is None else f"the base version's ({base.name}:{base.version}) threshold moved to"
                        f" the site's stated prevalence of septic stays ({opts.prevalence:g}); no label read")
            quantile = lv.quantile_threshold(p_fix, float(rate)) if rate else None
        if chosen is None:
            raise ConfigError(f"no alert level keeps the site within {opts.budget:g} alerts per patient-day "
                              f"(levels tried: {[round(p.level, 4) for p in pts]})")  # fmt: skip
        mr = policy.model_risk
        cx, _ = canary_inputs()
        canary = _onnx_probs(target / "model.onnx", cx)
        col = {n: i for i, n in enumerate(FEATURE_NAMES)}
        x_fit_all = x_fix if adapted.fit_on == "fit" else _features(sp.fit)[0]
        p_fit_all = p_fix if adapted.fit_on == "fit" else _onnx_probs(target / "model.onnx", x_fit_all)
        sha = sample_sha256(data)
        card = copy.deepcopy(base.card)
        for k in ("evaluation", "alert_policy", "metrics", "abstention", "prior_shift"):
            card.pop(k, None)
        no_prior = None
        if labelled:  # the new graph's own score -> posterior map, on the site rows that fixed its threshold
            try:
                card["prior_shift"] = pr.fit_prior_shift(p_fix, y_fix, s_fix, f"site {adapted.fit_on} stays")
            except ConfigError as exc:  # no block (so no later --prevalence from this version), said in the card
                no_prior = str(exc)
        elif base.card.get("prior_shift") is not None:  # the same graph: the base's map still holds
            card["prior_shift"] = {**base.card["prior_shift"], "inherited_from": f"{base.name}:{base.version}"}
        # the base's abstention block, not its figures (vigil.onboarding.abstention); site figures after the check
        ab_block, ab_note = ob_abs.site_block(base, adapted.native is None, sp.fit, chosen.level)
        if ab_block is not None:
            card["abstention"] = ab_block
        card.update({
            "name": name, "version": version, "created_at": _utc(),
            "output": {"name": "probability", "kind": "probability"},
            "threshold": round(float(thr), 6), "threshold_rule": thr_rule,
            "alert_policy": {
                "raise_at": chosen.level,
                "rule": (f"model_risk raised when risk >= raise_at (persistence {mr.persistence}, clear below "
                         f"{'0.8 x raise_at' if mr.clear_below is None else mr.clear_below}, refractory "
                         f"{mr.refractory_h:g} h)"),
                "chosen_by": f"vigil onboard: {rule}",
                "site": chosen.as_dict(),
            },
            "canary": {"probabilities": [round(float(p), 7) for p in canary], "tolerance": 1e-4},
            "parity": {"reference": "lightgbm" if adapted.kind == "continued_boosting" else "numpy",
                       "max_abs_diff": diff, "rows": int(x_check.shape[0]), "tolerance": PARITY_TOL},
            "reference": {
                "split": "site fit stays",
                "features": {f: reference_bins(x_fit_all[:, col[f]]) for f in DRIFT_FEATURES},
                "score": reference_bins(p_fit_all), "alert_rate": round(float((p_fit_all >= thr).mean()), 4),
            },
            "limitations": str(base.card.get("limitations", "")) + " Onboarded at one site from a sample of its"
            " stays: the threshold, alert level and calibration are that site's (see onboarding).",
        })  # fmt: skip
        training = dict(card.get("training") or {})
        training["architecture"] = (f"{training.get('architecture', '')}; then site onboarding from "
                                    f"{base.name}:{base.version}: {adapted.kind}")  # fmt: skip
        card["training"] = training
        card["onboarding"] = {
            "base": f"{base.name}:{base.version}", "mode": "labelled" if labelled else "unlabelled",
            "site_sample": {"file": data.name, "sha256": sha, "stays": int(df["patient_id"].nunique()),
                            "rows": len(df), "sample_frac": opts.sample_frac, "labels_used": labelled},
            "split": {"seed": opts.seed, "fractions": {"train": sp.fractions[0], "tune": sp.fractions[1],
                                                       "check": sp.fractions[2]}, "by": "patient", **counts},
            "adapted": adapted.kind, "adaptation": adapted.details, "fit_on": adapted.fit_on,
            "threshold_utility_fit": u_thr,
            **({} if labelled else {"threshold_by_quantile_matching_not_used": quantile,
                                    "threshold_by_prior_shift": by_prior}),
            **({"abstention": ab_note} if ab_note else {}),
            **({"prior_shift_not_fitted": no_prior} if no_prior else {}),
            "levels_tried": [p.as_dict() for p in pts],
            "calibration": {"site_validated": labelled,
                            "fitted_on": f"site {adapted.fit_on} stays" if labelled
                            else f"copied from {base.name}:{base.version} (not site-validated)"},
        }  # fmt: skip
        write_card(target / CARD_FILE, jsonable(card))
        ref = reg.get(f"{name}:{version}")
        if labelled:
            from vigil.demand.fitting import calibrate_version

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"site-{adapted.fit_on}.parquet"
                fix_df.to_parquet(path)
                calibrate_version(ref, path, split="all", threads=opts.threads)
        else:
            _copy_calibration(base, target, name, version)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise

    steps.update(1)  # level, threshold and calibration fitted, version registered
    # held-back check stays: report and gate
    check_labelled = has_labels
    new_scorer = Scorer(ref, threads=opts.threads)
    rep_base = _evaluate(base, base_scorer, sp.check, data.name, policy, check_labelled)
    rep_new = _evaluate(ref, new_scorer, sp.check, data.name, policy, check_labelled)
    cross, why_not = None, "unlabelled onboarding fits nothing on labels to cross-fit: judged on the check stays"
    if labelled:
        cross = crossfit(base, base_scorer, df, seed=opts.seed, tune_share=opts.tune_share, threads=opts.threads,
                         min_gain=opts.min_gain, prefer=prefer)  # fmt: skip
        why_not = ("judged on the held-back check stays: the sample is too small to cross-fit (fewer than "
                   f"{MIN_SEPTIC_PER_PART} septic stays in a fold's part)")  # fmt: skip
    gate, gate_on = site_gate(ref, base, sp.check, df, data.name, settings, check_labelled, cross, why_not)
    card = read_card(target / CARD_FILE)
    for rep, (r, sc) in ((rep_base, (base, base_scorer)), (rep_new, (ref, new_scorer))):
        if (fig := ob_abs.check_figures(r, sc, sp.check, policy, check_labelled)) is not None:
            rep["abstention"] = fig  # confident vs all alerts of each version on the check stays
    if "abstention" in rep_new and "abstention" in card:
        card["abstention"]["site_evaluation"] = ob_abs.site_evaluation(
            rep_new["abstention"], labelled, f"held-back check stays of the site sample {data.name} (sha256 {sha})")
    card["onboarding"]["site_metrics"] = {"check": {"base": rep_base, "onboarded": rep_new}}
    card["onboarding"]["gate"] = {**gate.as_dict(), **gate_on}
    card["metrics"] = {"site_check": {k: rep_new.get(k) for k in ("auroc", "auprc", "utility")}}
    write_card(target / CARD_FILE, jsonable(card))
    steps.update(1)  # checked and gated on the held-back stays
    promoted = None
    if opts.promote and gate.passed:
        line = None if name == base.name else base.name
        entry = reg.switch(name, version, "promote", expect_from=reg.serving().get(line or name), replaces=line,
                           reason=f"vigil onboard (gate on the site's {gate_on['on']})",
                           gate=gate.as_dict())  # fmt: skip
        promoted = entry["to_version"]
    summary = {
        "model": f"{name}:{version}", "base": f"{base.name}:{base.version}",
        "mode": "labelled" if labelled else "unlabelled", "adaptation": adapted.kind, "budget": opts.budget,
        "headroom": opts.headroom, "threshold": card["threshold"], "alert_level": chosen.level,
        "threshold_rule": card["threshold_rule"],
        "sample": {"file": data.name, "sha256": sha, "seed": opts.seed, "split": counts},
        "calibration": ("site isotonic map fitted on the site's " + adapted.fit_on + " stays" if labelled
                        else f"not site-validated (copied from {base.name}:{base.version})"),
        "adapted": adapted.details,
        "check": {"base": rep_base, "onboarded": rep_new},
        "abstention": {k: v for k, v in (card.get("abstention") or {}).items() if k in ob_abs.SUMMARY_KEYS} or None,
        "gate": {"passed": gate.passed, "reasons": list(gate.reasons), "on": gate_on["on"],
                 "check_noise": gate_on["check_noise"], "crossfit_noise": (gate_on["crossfit"] or {}).get("noise")},
        "promoted": promoted,
    }  # fmt: skip
    out = Path(opts.out) if opts.out else Path("reports") / f"onboard-{name}-{version}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report_markdown(summary, gate.report()), encoding="utf-8")
    summary["elapsed_s"] = round(time.perf_counter() - t0, 1)
    _write_json(out / "report.json", {**summary, "gate_detail": gate.as_dict()})
    summary["report"] = str(out / "report.md")
    steps.update(1)  # report written
    steps.close()
    return jsonable(summary)

