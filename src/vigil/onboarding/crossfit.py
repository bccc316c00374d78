"""The gate's cross-fitted comparison: every stay of the site sample scored by a version fitted without it.

The held-back *check* stays are 30 % of the sample; on set A's units (a 20 % sample: ~325 check stays, 7-44 septic)
the gate's verdict on them was mostly luck (docs/evaluation/onboarding.md, "The gate on every sample stay,
cross-fitted").
Here the sample's stays are cut into three parts by patient (seeded); for each part the whole labelled
procedure (:func:`vigil.onboarding.labelled.adapt_labelled` on the other parts, cut into *train* / *tune* as the
registered version's are, then the threshold with the highest utility on the stays that fix it) is fitted without
it and scores it. The candidate's scores and binary predictions over every sample stay are then compared with the
base's on the same stays: about 3.3 times the check stays at the default ``check_frac`` of 0.3. Utility adds up
over stays, so each fold's predictions at its own threshold pool exactly; AUROC does not (each fold's version has
its own scale: pooled, three recalibration layers that each rank as the base scored 0.06-0.08 below it on set A's
units), so it counts only pairs of rows scored by the same fold's version, for both
(:func:`vigil.onboarding.noise.within_group_auroc`).

What it judges is the procedure that produced the registered version (each fold's version is a sibling of it,
fitted on 2/3 of the sample where the registered one used 70 %), not that one version; the registered version's
own figures on its check stays stay in the report beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.onboarding import levels as lv
from vigil.onboarding.labelled import RECALIBRATION, adapt_labelled
from vigil.onboarding.sample import SiteSplit, frame_counts, frame_features, frame_labels
from vigil.registry import ModelRef
from vigil.training.data import split_by_patient

if TYPE_CHECKING:
    import pandas as pd

    from vigil.scoring import Scorer

__all__ = ["CrossFit", "crossfit", "MIN_SEPTIC_PER_PART"]

MIN_SEPTIC_PER_PART = 3  # septic stays each fold's train, tune and held-out part needs (as the sample's split)


@dataclass
class CrossFit:
    """Rows of every sample stay in fold order: labels, stay starts, both versions' scores and predictions."""

    labels: np.ndarray
    stay_start: np.ndarray
    cand_scores: np.ndarray
    cand_pred: np.ndarray
    base_scores: np.ndarray
    base_pred: np.ndarray
    fold: np.ndarray  # which fold's version scored the row (0, 1, 2): its scale is that version's
    folds: list[dict[str, Any]] = field(default_factory=list)  # per fold: adaptation, threshold, counts


def _septic(df: pd.DataFrame) -> int:
    return frame_counts(df)["septic_stays"]


def crossfit(base: ModelRef, base_scorer: Scorer, sample: pd.DataFrame, *, seed: int, tune_share: float,
             threads: int, min_gain: float, prefer: str = RECALIBRATION) -> CrossFit | None:  # fmt: skip
    """The cross-fitted scores (module docstring), or None when a fold's train, tune or held-out part has fewer
    than :data:`MIN_SEPTIC_PER_PART` septic stays (the gate then judges the check stays alone, and says so). Each
    fold prefers the adaptation the registered version preferred (``prefer``: the procedure judged is the same)."""
    from vigil.offline import score_frame

    cut = split_by_patient(sample["patient_id"].to_numpy(), seed + 1, (1 / 3, 1 / 3, 1 / 3))
    parts: list[tuple[SiteSplit, pd.DataFrame]] = []
    for held_mask in cut.values():
        rest = sample[~held_mask].reset_index(drop=True)
        held = sample[held_mask].reset_index(drop=True)
        m = split_by_patient(rest["patient_id"].to_numpy(), seed, (1 - tune_share, tune_share, 0.0))
        sp = SiteSplit(rest[m["train"]].reset_index(drop=True), rest[m["validation"]].reset_index(drop=True),
                       held.iloc[:0], seed, (1 - tune_share, tune_share, 0.0))  # fmt: skip
        if min(_septic(sp.train), _septic(sp.tune), _septic(held)) < MIN_SEPTIC_PER_PART:
            return None
        parts.append((sp, held))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "s", "pc", "yc", "pb", "f")}
    info = []
    for k, (sp, held) in enumerate(parts):
        p_base = {part: score_frame(base_scorer, getattr(sp, part))[0] for part in ("train", "tune")}
        ad = adapt_labelled(base, sp, p_base, f"cross-fit fold {k + 1}", seed=seed, threads=threads,
                            min_gain=min_gain, prefer=prefer)  # fmt: skip
        fix = sp.tune if ad.fit_on == "tune" else sp.fit
        pb_fix = p_base["tune"] if ad.fit_on == "tune" else np.concatenate([p_base["train"], p_base["tune"]])
        x_fix, s_fix = frame_features(fix)
        thr, _ = lv.site_threshold(ad.native(pb_fix, x_fix), frame_labels(fix), s_fix)
        x_held, s_held = frame_features(held)
        pb_held, _ = score_frame(base_scorer, held)
        pc_held = np.asarray(ad.native(pb_held, x_held), np.float64)
        out["y"].append(frame_labels(held))
        out["s"].append(s_held)
        out["pc"].append(pc_held)
        out["yc"].append(pc_held >= thr)
        out["pb"].append(np.asarray(pb_held, np.float64))
        out["f"].append(np.full(len(pb_held), k, np.int64))
        info.append({"fold": k + 1, "adaptation": ad.kind, "threshold": float(thr),
                     "fitted_on": {"train": int(sp.train["patient_id"].nunique()),
                                   "tune": int(sp.tune["patient_id"].nunique())},
                     "held_out": {"stays": int(held["patient_id"].nunique()), "septic_stays": _septic(held)}})
    pb = np.concatenate(out["pb"])
    return CrossFit(np.concatenate(out["y"]), np.concatenate(out["s"]), np.concatenate(out["pc"]),
                    np.concatenate(out["yc"]), pb, pb >= base_scorer.threshold, np.concatenate(out["f"]),
                    info)  # fmt: skip
