"""Abstention, evaluated offline (issue 16, item 4; **not wired into the worker or the score records yet**).

A score is *indeterminate* when its input lies outside what the model was trained on. Two measures, fitted on
reference rows (the model's training rows) by :func:`fit_abstention`:

* **coverage**: the share of the 34 measured variables seen within the last 72 h (the featurizer's
  ``*_hours_since`` < 72); abstain below the reference's ``q`` quantile;
* **out-of-range share**: the share of the 134 features outside the reference's [0.5 %, 99.5 %] range; abstain
  above the reference's ``1 - q`` quantile.

:func:`evaluate_abstention` replays the alert policy on all rows and splits the alerts into *confident* (the row
was not abstained) and *indeterminate*; it reports the share of rows and alerts abstained, and stay-level PPV and
sensitivity (septic stays alerted before onset) of confident alerts against all alerts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vigil.evaluation.alerting import StayAlerts, alert_summary, stay_alerts, stay_table

__all__ = ["Abstention", "fit_abstention", "evaluate_abstention", "HOURS_SENTINEL"]

HOURS_SENTINEL = 72.0  # the featurizer's "not measured in the last 72 h" value of *_hours_since


def _coverage_cols() -> np.ndarray:
    from vigil.features import FEATURE_NAMES

    return np.array([i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")])


@dataclass(frozen=True)
class Abstention:
    lo: list[float]
    hi: list[float]
    min_coverage: float
    max_out_of_range: float
    q: float

    def measures(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov = (x[:, _coverage_cols()] < HOURS_SENTINEL).mean(axis=1)
        lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
        oor = ((x < lo) | (x > hi)).mean(axis=1)
        return cov, oor

    def indeterminate(self, x: np.ndarray) -> np.ndarray:
        cov, oor = self.measures(x)
        return (cov < self.min_coverage) | (oor > self.max_out_of_range)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_abstention(x_ref: np.ndarray, q: float = 0.05) -> Abstention:
    """The two cut-offs at the reference rows' ``q`` tails (about ``2q`` of reference rows abstain at most)."""
    x = np.asarray(x_ref, np.float32)
    lo, hi = np.quantile(x, 0.005, axis=0), np.quantile(x, 0.995, axis=0)
    tmp = Abstention(lo.tolist(), hi.tolist(), 0.0, 1.0, q)
    cov, oor = tmp.measures(x)
    return Abstention(lo.tolist(), hi.tolist(), float(np.quantile(cov, q)), float(np.quantile(oor, 1 - q)), q)


def _stay_ppv_sens(stays: Any, sa: StayAlerts) -> dict[str, Any]:
    s = alert_summary(stays, sa)
    return {"alerts": s["alerts"], "alerts_per_patient_day": s["alerts_per_patient_day"], "ppv_stay": s["ppv_stay"],
            "share_septic_alerted_early": s["share_septic_alerted_early"], "stays_alerted": s["stays_alerted"]}


def evaluate_abstention(alert_rows: np.ndarray, indeterminate: np.ndarray, labels: np.ndarray,
                        stay_start: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """All alerts vs confident alerts (alerts on rows that were not indeterminate).

    >>> y = np.array([0, 0, 0, 0, 1, 1, 0, 0]); s = np.array([1, 0, 0, 0, 0, 0, 1, 0], bool)
    >>> a = np.array([0, 1, 0, 0, 0, 0, 1, 0], bool); ind = np.array([0, 0, 0, 0, 0, 0, 1, 0], bool)
    >>> r = evaluate_abstention(a, ind, y, s); r["all"]["ppv_stay"], r["confident"]["ppv_stay"]
    (0.5, 1.0)
    """
    stays = stay_table(labels, stay_start)
    a = np.asarray(alert_rows, bool)
    ind = np.asarray(indeterminate, bool)
    everything = _stay_ppv_sens(stays, stay_alerts(a, stays))
    confident = _stay_ppv_sens(stays, stay_alerts(a & ~ind, stays))
    ppv_all, ppv_conf = everything["ppv_stay"], confident["ppv_stay"]
    return {
        "share_rows_indeterminate": float(ind.mean()) if ind.size else None,
        "share_alerts_indeterminate": float((a & ind).sum() / a.sum()) if a.sum() else None,
        "all": everything, "confident": confident,
        "ppv_relative_gain": (ppv_conf / ppv_all - 1) if ppv_all and ppv_conf is not None else None,
    }  # fmt: skip
