"""Labelled adaptation of the base model at a site (``vigil onboard``; :mod:`vigil.onboarding.run`).

Two adaptations are fitted on the site's *train* stays (:mod:`vigil.onboarding.adapt`: a logistic recalibration
layer on the base logit, and continued boosting from the base margin) and the one with the higher normalized
utility on *tune* (each at its own best threshold there) is kept: the recalibration layer unless the site trees
gain more than ``min_gain``; the layer is then refitted on every fit stay. Used for the registered version and for
each fold of the gate's cross-fitted comparison (:mod:`vigil.onboarding.crossfit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.evaluation.metrics import auroc
from vigil.onboarding import levels as lv
from vigil.onboarding.sample import SiteSplit
from vigil.onboarding.sample import frame_features as _features
from vigil.onboarding.sample import frame_labels as _labels
from vigil.registry import ModelRef

__all__ = ["Adapted", "adapt_labelled"]


@dataclass
class Adapted:
    kind: str  # "recalibration", "continued_boosting" or "none"
    proto: Any
    native: Any  # callable (p_base, x) -> probabilities, the parity reference (None: the base graph unchanged)
    fit_on: str  # which stays fix the threshold, level and calibration
    details: dict[str, Any]


def adapt_labelled(base: ModelRef, sp: SiteSplit, p_base: dict[str, np.ndarray], doc: str, *, seed: int,
                   threads: int, min_gain: float) -> Adapted:  # fmt: skip
    """Both adaptations fitted on ``sp.train`` and judged on ``sp.tune`` (module docstring); the kept one."""
    import onnx

    from vigil.features import FEATURE_NAMES
    from vigil.onboarding import adapt

    xs = {k: _features(getattr(sp, k)) for k in ("train", "tune")}
    ys = {k: _labels(getattr(sp, k)) for k in ("train", "tune")}
    pw = float((base.model_card.training.get("class_weight") or {}).get("1", 0)) or None
    # (b) recalibration layer, fitted on train, judged on tune
    rec = adapt.fit_recalibration(p_base["train"], ys["train"], positive_weight=pw)
    p_rec = rec(p_base["tune"])
    # (a) continued boosting from the base margin, early-stopped on tune
    boost = adapt.fit_boost(xs["train"][0], ys["train"].astype(np.float32), p_base["train"], xs["tune"][0],
                            ys["tune"].astype(np.float32), p_base["tune"], seed=seed, threads=threads)
    p_boost = boost(p_base["tune"], xs["tune"][0])
    s_tune = xs["tune"][1]
    thr_r, u_r = lv.site_threshold(p_rec, ys["tune"], s_tune)
    thr_b, u_b = lv.site_threshold(p_boost, ys["tune"], s_tune)
    compared = {
        "on": "tune stays (utility at each candidate's best threshold there)",
        "recalibration": {"utility": u_r, "auroc": auroc(ys["tune"], p_rec), "threshold": thr_r},
        "continued_boosting": {"utility": u_b, "auroc": auroc(ys["tune"], p_boost), "threshold": thr_b,
                               "rounds": boost.rounds},
        "rule": f"continued boosting only if it gains more than {min_gain:g} utility on tune",
    }  # fmt: skip
    base_proto = onnx.load(str(base.onnx_path))
    n = len(FEATURE_NAMES)
    if np.isfinite(u_b) and np.isfinite(u_r) and u_b > u_r + min_gain:
        proto = adapt.boosted_onnx(base_proto, boost, n, doc)
        details = {"compared": compared, "site_trees": boost.info, "base_margin": "init_score = logit(base risk)"}
        return Adapted("continued_boosting", proto, boost, "tune", details)
    # keep the recalibration layer, refitted on every fit stay (2 parameters)
    p_fit = np.concatenate([p_base["train"], p_base["tune"]])
    rec = adapt.fit_recalibration(p_fit, np.concatenate([ys["train"], ys["tune"]]), positive_weight=pw)
    proto = adapt.recalibrated_onnx(base_proto, rec, n, doc)
    details = {"compared": compared, "layer": {"a": rec.a, "b": rec.b, "positive_weight": rec.positive_weight,
                                               "form": "sigmoid(a * logit(base risk) + b)"}}  # fmt: skip
    return Adapted("recalibration", proto, lambda p, _x: rec(p), "fit", details)
