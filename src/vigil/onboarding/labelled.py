"""Labelled adaptation of the base model at a site (``vigil onboard``; :mod:`vigil.onboarding.run`).

Two adaptations are fitted on the site's *train* stays (:mod:`vigil.onboarding.adapt`: a logistic recalibration
layer on the base logit, and continued boosting from the base margin) and judged by their normalized utility on
*tune* (each at its own best threshold there). Which one is *preferred* depends on how many stays the site gave
(:func:`preferred_adaptation`): below :data:`BOOST_FROM_STAYS` fit stays the recalibration layer, from there on the
site trees; the other is kept only if it gains more than ``min_gain`` on tune (:func:`choose_adaptation`). A kept
layer is refitted on every fit stay. Used for the registered version and for each fold of the gate's cross-fitted
comparison (:mod:`vigil.onboarding.crossfit`, with the registered version's preference).

Why the size decides the preference (docs/evaluation/onboarding.md, "Which adaptation: the sample's size decides"):
on set A's units as two sites the tune split picked the better adaptation about half the time. With 20 % samples
(~760 fit stays) the site trees were worse than the layer on the other stays in 9 of 21 runs by more than 0.01
(better in 3); with 35 % (~1,330) the old rule (the layer unless the trees gain more than ``min_gain`` on tune) did
best; with 50 % (~1,900) the trees were better in 10 of 12 runs (up to +0.058) and the old rule kept the layer in 4
of them. So the sample's size sets the default and tune only overrides a clear loss.
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

__all__ = ["Adapted", "adapt_labelled", "BOOST_FROM_STAYS", "BOOSTING", "RECALIBRATION", "preferred_adaptation",
           "choose_adaptation"]

BOOST_FROM_STAYS = 1500  # fit stays from which the site trees are preferred (between ~1,330 and ~1,900 measured)
RECALIBRATION, BOOSTING = "recalibration", "continued_boosting"


@dataclass
class Adapted:
    kind: str  # "recalibration", "continued_boosting" or "none"
    proto: Any
    native: Any  # callable (p_base, x) -> probabilities, the parity reference (None: the base graph unchanged)
    fit_on: str  # which stays fix the threshold, level and calibration
    details: dict[str, Any]


def preferred_adaptation(fit_stays: int, boost_from: int = BOOST_FROM_STAYS) -> str:
    """The adaptation kept unless the other clearly wins on tune: the site trees from ``boost_from`` fit stays.

    >>> preferred_adaptation(760), preferred_adaptation(2800)
    ('recalibration', 'continued_boosting')
    """
    return BOOSTING if fit_stays >= boost_from else RECALIBRATION


def choose_adaptation(u_rec: float, u_boost: float, prefer: str, min_gain: float) -> str:
    """``prefer`` unless the other adaptation's tune utility exceeds it by more than ``min_gain``. The site trees are
    never kept without a finite tune utility (their threshold is fixed on tune); the layer is the fallback.

    >>> choose_adaptation(0.30, 0.305, "recalibration", 0.01), choose_adaptation(0.30, 0.32, "recalibration", 0.01)
    ('recalibration', 'continued_boosting')
    >>> [choose_adaptation(u, 0.30, "continued_boosting", 0.01) for u in (0.305, 0.32)]
    ['continued_boosting', 'recalibration']
    >>> choose_adaptation(float("nan"), float("nan"), "continued_boosting", 0.01)
    'recalibration'
    """
    if prefer not in (RECALIBRATION, BOOSTING):
        raise ValueError(f"prefer must be {RECALIBRATION} or {BOOSTING}, got {prefer!r}")
    if not np.isfinite(u_boost):
        return RECALIBRATION
    if prefer == BOOSTING:
        return RECALIBRATION if np.isfinite(u_rec) and u_rec > u_boost + min_gain else BOOSTING
    return BOOSTING if np.isfinite(u_rec) and u_boost > u_rec + min_gain else RECALIBRATION


def adapt_labelled(base: ModelRef, sp: SiteSplit, p_base: dict[str, np.ndarray], doc: str, *, seed: int,
                   threads: int, min_gain: float, prefer: str = RECALIBRATION) -> Adapted:  # fmt: skip
    """Both adaptations fitted on ``sp.train`` and judged on ``sp.tune``; the kept one (:func:`choose_adaptation`
    with ``prefer``, module docstring)."""
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
        "preferred": prefer,
        "rule": (f"{prefer.replace('_', ' ')} (preferred) unless the other gains more than {min_gain:g} utility on "
                 "tune; the site trees need a finite tune utility"),
    }  # fmt: skip
    base_proto = onnx.load(str(base.onnx_path))
    n = len(FEATURE_NAMES)
    if choose_adaptation(u_r, u_b, prefer, min_gain) == BOOSTING:
        proto = adapt.boosted_onnx(base_proto, boost, n, doc)
        details = {"compared": compared, "site_trees": boost.info, "base_margin": "init_score = logit(base risk)"}
        return Adapted(BOOSTING, proto, boost, "tune", details)
    # keep the recalibration layer, refitted on every fit stay (2 parameters)
    p_fit = np.concatenate([p_base["train"], p_base["tune"]])
    rec = adapt.fit_recalibration(p_fit, np.concatenate([ys["train"], ys["tune"]]), positive_weight=pw)
    proto = adapt.recalibrated_onnx(base_proto, rec, n, doc)
    details = {"compared": compared, "layer": {"a": rec.a, "b": rec.b, "positive_weight": rec.positive_weight,
                                               "form": "sigmoid(a * logit(base risk) + b)"}}  # fmt: skip
    return Adapted(RECALIBRATION, proto, lambda p, _x: rec(p), "fit", details)
