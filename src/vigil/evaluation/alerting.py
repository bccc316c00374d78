"""Offline alert simulation and the patient-level alert outcomes (burden, early share, lead time, PPV).

Alerts are raised on *crossings*: a rule fires on the first row its condition holds, stays silent while
the condition persists, and re-arms once the value falls below a re-arm level (the worker's
:class:`vigil.alerts.AlertRules`). :func:`crossings` is the vectorised, exact twin of that state machine
(tested against ``AlertRules`` row by row); :func:`simulate_policy` applies the configured alert policy.

Definitions used for the outcomes (one row = one scored hour, rows numbered from 0 within each stay):

* **septic stay**: any row with ``SepsisLabel == 1``. **Onset** ``t_sepsis`` = first such row + 6
  (PhysioNet 2019 labels are shifted 6 h early).
* **septic on arrival**: the first label row is row 0. Sepsis may then have begun before the ICU stay
  (the nominal onset, row 6, is an upper bound), so a lead time is meaningless; these stays are kept out
  of the early-alert share and the lead time and reported separately.
* **alerted early**: the stay's first alert row ``a`` is before onset (``a < t_sepsis``); **lead time**
  = ``t_sepsis - a`` hours. An alert at the onset row or later is not early. A first alert long before
  onset (often in the first hours of the stay) gives a long lead time without being specific, so the
  share of septic stays with an alert *raised in the 12 h before onset* (rows ``t_sepsis - 12 ..
  t_sepsis - 1``, the window the PhysioNet utility rewards) is reported too.
* **patient-day**: 24 scored rows; **alerts per patient-day** = alerts / (rows / 24).
* **PPV (stay level)**: stays with at least one alert that are septic / stays with at least one alert.

>>> v = np.array([0.1, 0.7, 0.9, 0.5, 0.7, 0.3, 0.8]); s = np.zeros(7, bool); s[0] = True
>>> crossings(v, s, on=0.6, rearm_below=0.4).astype(int).tolist()
[0, 1, 0, 0, 0, 0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from vigil.config import AlertSettings

__all__ = [
    "LABEL_SHIFT_H",
    "ROWS_PER_DAY",
    "WINDOW_H",
    "StayTable",
    "StayAlerts",
    "crossings",
    "simulate_policy",
    "stay_table",
    "stay_alerts",
    "alert_summary",
    "lead_times",
    "finite_or_none",
]

LABEL_SHIFT_H = 6  # SepsisLabel is 1 from 6 h before onset
ROWS_PER_DAY = 24
WINDOW_H = 12  # the PhysioNet utility rewards predictions from 12 h before onset
_NEVER = np.iinfo(np.int64).max // 4


def _starts(stay_start: np.ndarray, n: int) -> np.ndarray:
    """Bool [n], True at each stay's first row (row 0 always starts a stay)."""
    s = np.asarray(stay_start, dtype=bool).copy()
    if s.shape != (n,):
        raise ValueError("stay_start must be a bool array with one entry per row")
    if n:
        s[0] = True
    return s


def crossings(value: np.ndarray, stay_start: np.ndarray, *, on: float, rearm_below: float) -> np.ndarray:
    """Rows where an alert fires (bool [N]): ``value >= on`` while armed. Firing disarms the rule; a row with
    ``value < rearm_below`` (and not ``>= on``) re-arms it; rows in between change nothing. Every stay starts
    armed. Exactly :meth:`vigil.alerts.AlertRules.evaluate`'s per-rule logic, vectorised.
    """
    v = np.asarray(value, dtype=np.float64)  # compare in float64, as the worker does with Python floats
    n = v.shape[0]
    starts = _starts(stay_start, n)
    fire = v >= on
    event = np.where(fire, 1, np.where(v < rearm_below, -1, 0)).astype(np.int8)  # 1 set, -1 re-arm, 0 keep
    idx = np.arange(n, dtype=np.int64)
    last_event = np.maximum.accumulate(np.where(event != 0, idx, -1)) if n else idx
    stay_first = np.maximum.accumulate(np.where(starts, idx, 0)) if n else idx
    active = (last_event >= stay_first) & (event[np.maximum(last_event, 0)] == 1)  # state after row t
    was_active = np.zeros(n, dtype=bool)
    was_active[1:] = active[:-1]
    was_active[starts] = False
    return fire & ~was_active


def simulate_policy(
    policy: AlertSettings,
    *,
    risk: np.ndarray,
    threshold: float,
    news2_total: np.ndarray,
    stay_start: np.ndarray,
    news2_max_part: np.ndarray | None = None,
    model: str = "model",
    unit: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Alert rows (bool [N]) per alert type under the configured alert policy, exactly as the worker
    raises them: the worker's own :class:`vigil.alerting.AlertStage` stepped row by row through each stay
    (row t at event time t hours; no acknowledgements offline). A row counts when a ``raised`` or
    ``escalated`` alert goes out. Types that are disabled give all-False rows. ``unit``: each row's ICU unit
    (``"MICU"``, ``"SICU"`` or None), so per-unit ``alerts.overrides`` apply as in the worker.

    The one place evaluation simulates alerting.
    """
    from vigil.alerting import AlertStage, AlertState

    stage = AlertStage(policy, identify=False)  # nothing is published offline: no alert ids
    pol = stage.policy
    n = int(np.asarray(risk).shape[0])
    starts = _starts(stay_start, n)
    r = np.asarray(risk, dtype=np.float64)
    total = np.asarray(news2_total, dtype=np.float64)
    single = np.asarray(news2_max_part, dtype=np.float64) if news2_max_part is not None else None
    out = {k: np.zeros(n, dtype=bool) for k in ("model_risk", "news2_urgent", "news2_emergency", "news2_single")}
    enabled = {k: pol.rule(k).enabled for k in out}
    if single is None:
        enabled["news2_single"] = False
    state = AlertState()
    row = 0
    units = [None] * n if unit is None else [None if u is None or u == "" else str(u) for u in unit]
    if unit is not None:  # a type switched on for one unit only must still be stepped
        for scope in {u for u in units if u is not None}:
            for k in out:
                on = pol.rule(k, unit=scope).enabled and (k != "news2_single" or single is not None)
                enabled[k] = enabled[k] or on
    for i in range(n):
        if starts[i]:
            state, row = AlertState(), 0
        t = row * 3600.0
        u = units[i]
        if enabled["model_risk"]:
            out["model_risk"][i] = _fires(stage.rule(state, "model_risk", model, r[i], t, row, threshold=threshold,
                                                     unit=u))  # fmt: skip
        if enabled["news2_emergency"]:
            out["news2_emergency"][i] = _fires(stage.rule(state, "news2_emergency", None, total[i], t, row, unit=u))
        if enabled["news2_urgent"]:
            covered = stage.news2_covered(total[i], unit=u)  # as the worker's AlertStage.news2
            urgent = stage.rule(state, "news2_urgent", None, total[i], t, row, unit=u, can_raise=not covered)
            out["news2_urgent"][i] = _fires(urgent)
        if enabled["news2_single"] and single is not None:
            out["news2_single"][i] = _fires(stage.rule(state, "news2_single", None, single[i], t, row, unit=u))
        row += 1
    return out


def _fires(decisions: list[Any]) -> bool:
    """A raised or escalated alert goes out (resolutions are messages, not alerts)."""
    return any(d.event in ("raised", "escalated") for d in decisions)


class StayTable(NamedTuple):
    """Per-stay facts (S stays): ``first`` row index, ``n_rows``, ``septic``, ``on_arrival`` (first label
    row is 0), ``onset`` row (``_NEVER`` if not septic)."""

    first: np.ndarray
    n_rows: np.ndarray
    septic: np.ndarray
    on_arrival: np.ndarray
    onset: np.ndarray

    @property
    def stay_of_row(self) -> np.ndarray:
        """Stay index of every row."""
        return np.repeat(np.arange(self.first.shape[0]), self.n_rows)

    @property
    def row_in_stay(self) -> np.ndarray:
        """Row number within its stay (0 = first scored hour)."""
        return np.arange(int(self.n_rows.sum())) - np.repeat(self.first, self.n_rows)


def stay_table(labels: np.ndarray, stay_start: np.ndarray) -> StayTable:
    """Per-stay onset facts from per-row ``SepsisLabel`` of stays concatenated in time order."""
    y = np.asarray(labels).astype(bool)
    n = y.shape[0]
    first = np.flatnonzero(_starts(stay_start, n))
    n_rows = np.diff(np.r_[first, n]).astype(np.int64)
    t = np.arange(n) - np.repeat(first, n_rows)
    first_label = np.minimum.reduceat(np.where(y, t, _NEVER), first) if n else np.zeros(0, np.int64)
    septic = first_label < _NEVER
    onset = np.where(septic, first_label + LABEL_SHIFT_H, _NEVER)
    return StayTable(first, n_rows, septic, septic & (first_label == 0), onset)


class StayAlerts(NamedTuple):
    """Per-stay alert facts: ``count`` of alerts, ``first`` alert row (``_NEVER`` if none) and ``in_window``:
    an alert was raised in the :data:`WINDOW_H` hours before onset (rows ``t_sepsis - 12 .. t_sepsis - 1``)."""

    count: np.ndarray
    first: np.ndarray
    in_window: np.ndarray

    @property
    def alerted(self) -> np.ndarray:
        return self.first < _NEVER

    def __or__(self, other: object) -> StayAlerts:
        """The alerts of both streams together (counts add up)."""
        if not isinstance(other, StayAlerts):
            return NotImplemented
        return StayAlerts(
            self.count + other.count, np.minimum(self.first, other.first), self.in_window | other.in_window
        )


def stay_alerts(alert_rows: np.ndarray, stays: StayTable) -> StayAlerts:
    """Reduce alert rows (bool [N]) to per-stay counts, first alert rows and alerts in the pre-onset window."""
    a = np.asarray(alert_rows, dtype=bool)
    if a.shape[0] == 0:
        return StayAlerts(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    t = stays.row_in_stay
    onset = np.repeat(stays.onset, stays.n_rows)
    window = a & (t >= onset - WINDOW_H) & (t < onset)
    count = np.add.reduceat(a.astype(np.int64), stays.first)
    first = np.minimum.reduceat(np.where(a, t, _NEVER), stays.first)
    return StayAlerts(count, first, np.logical_or.reduceat(window, stays.first))


def lead_times(stays: StayTable, alerts: StayAlerts, mask: np.ndarray | None = None) -> np.ndarray:
    """Lead times in hours (``onset - first alert``) of the septic stays, not septic on arrival, whose first
    alert came before onset (optionally only stays in ``mask``)."""
    early = _early(stays, alerts)
    if mask is not None:
        early &= mask
    return (stays.onset[early] - alerts.first[early]).astype(np.float64)


def _early(stays: StayTable, alerts: StayAlerts) -> np.ndarray:
    return stays.septic & ~stays.on_arrival & alerts.alerted & (alerts.first < stays.onset)


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def _quantiles(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"median": None, "q25": None, "q75": None}
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75)}


@dataclass(frozen=True, slots=True)
class _Counts:
    """Stay-level counts behind :func:`alert_summary`."""

    stays: int
    rows: int
    alerts: int
    alerted: int
    alerted_septic: int
    nonseptic: int
    alerted_nonseptic: int
    eligible: int
    early: int
    in_window: int
    on_arrival: int
    on_arrival_alerted: int


def _counts(stays: StayTable, alerts: StayAlerts, m: np.ndarray) -> _Counts:
    eligible = m & stays.septic & ~stays.on_arrival
    early = _early(stays, alerts) & m
    arrival = m & stays.on_arrival
    alerted = m & alerts.alerted
    return _Counts(
        stays=int(m.sum()),
        rows=int(stays.n_rows[m].sum()),
        alerts=int(alerts.count[m].sum()),
        alerted=int(alerted.sum()),
        alerted_septic=int((alerted & stays.septic).sum()),
        nonseptic=int((m & ~stays.septic).sum()),
        alerted_nonseptic=int((alerted & ~stays.septic).sum()),
        eligible=int(eligible.sum()),
        early=int(early.sum()),
        in_window=int((eligible & alerts.in_window).sum()),
        on_arrival=int(arrival.sum()),
        on_arrival_alerted=int((arrival & alerts.alerted).sum()),
    )


def alert_summary(stays: StayTable, alerts: StayAlerts, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Alert outcomes of one alert stream over the stays in ``mask`` (default all); see the module
    docstring for the definitions. Shares are ``None`` where their denominator is 0."""
    m = np.ones(stays.first.shape[0], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    c = _counts(stays, alerts, m)
    days = c.rows / ROWS_PER_DAY
    lead = lead_times(stays, alerts, m)
    return {
        "alerts": c.alerts,
        "patient_days": round(days, 3),
        "alerts_per_patient_day": c.alerts / days if days else None,
        "stays_alerted": c.alerted,
        "share_stays_alerted": _share(c.alerted, c.stays),
        "septic_stays_evaluable": c.eligible,
        "share_septic_alerted_early": _share(c.early, c.eligible),
        "share_septic_alerted_12h_before_onset": _share(c.in_window, c.eligible),
        "share_septic_alerted_any_time": _share(
            int((m & stays.septic & alerts.alerted).sum()), int((m & stays.septic).sum())
        ),
        "lead_time_h": {**_quantiles(lead), "n": int(lead.size)},
        "ppv_stay": _share(c.alerted_septic, c.alerted),
        "share_nonseptic_alerted": _share(c.alerted_nonseptic, c.nonseptic),
        "septic_on_arrival": {"stays": c.on_arrival, "share_alerted": _share(c.on_arrival_alerted, c.on_arrival)},
    }


def finite_or_none(x: float | None) -> float | None:
    """``None`` for NaN/inf (JSON has no NaN), else the float."""
    return None if x is None or not math.isfinite(x) else float(x)
