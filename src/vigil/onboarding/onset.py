"""How well a version's quoted onset probability is calibrated on labelled rows (``vigil onboard``'s report and
``vigil evaluate``'s ``model.onset_probability``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vigil.registry import ModelRef

__all__ = ["ONSET_H", "onset_ece"]

ONSET_H = 12  # the horizon alerts quote (vigil.scoring.ONSET_HORIZON_H)


def onset_ece(probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, ref: ModelRef) -> dict[str, Any] | None:
    """ECE (10 equal-count bins) of ``ref``'s onset probability (its ``demand_calibration.json`` map at 12 h) on
    rows not yet septic, against onset within 12 h; None when the version has no usable map."""
    from vigil.demand.calibration import CALIBRATION_FILE, Calibration, reliability
    from vigil.demand.labels import onset_within, stay_index

    path = ref.path / CALIBRATION_FILE
    if not path.is_file():
        return None
    cal = Calibration.load(path)
    if ONSET_H not in cal.sepsis:
        return None
    at_risk, y = onset_within(stay_index(stay_start, labels), ONSET_H)
    p = cal.sepsis[ONSET_H](np.asarray(probs, np.float64)[at_risk])
    r = reliability(p, y[at_risk].astype(np.float64))
    return {"ece": r["ece"], "mean_predicted": r["mean_predicted"], "observed": r["observed"], "rows": r["rows"],
            "horizon_h": ONSET_H}  # fmt: skip
