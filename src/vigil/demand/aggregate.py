"""From a ward's patients to its demand forecast: per-patient probabilities -> the count's distribution.

:func:`forecast` is the one place a forecast is computed: the streaming job and the backtest both call it.
:func:`forecast_record` renders it as a ``resource-demand`` value (``streams/schemas/resource-demand.schema.json``);
records name wards and resources, never patients. :class:`CapacityAlerts` turns P(demand > capacity) into
raised / resolved capacity alerts with hysteresis.

>>> from vigil.demand.calibration import Calibration
>>> from vigil.config import DemandResource
>>> snap = WardSnapshot("W1", risk=np.array([0.2, 0.6, np.nan]), news2=np.array([3, 8, -1]), beds=4)
>>> f = forecast(snap, DemandResource(name="sepsis_bundle", need="sepsis_onset"), 12, Calibration.synthetic())
>>> f.probabilities.round(2).tolist(), round(f.expected, 2), f.capacity, f.intervals[0.9], round(f.p_exceed, 4)
([0.1, 0.3, 0.05], 0.45, 1, (0, 1), 0.047)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.config import DemandResource
from vigil.demand.calibration import Calibration
from vigil.demand.census import free_beds
from vigil.demand.poisson_binomial import CountDistribution, distribution

__all__ = ["WardSnapshot", "Forecast", "forecast", "patient_probabilities", "forecast_record", "forecast_id",
           "CapacityAlerts", "level_key"]  # fmt: skip

DEFAULT_LEVELS = (0.5, 0.9, 0.95)


@dataclass(frozen=True)
class WardSnapshot:
    """The patients present in one ward at one time: model risk (NaN = not scored yet), NEWS2 total
    (-1 = unknown) and highest NEWS2 total of the calibration's history window (-1 = unknown; None: not
    tracked) of each, the ward's configured beds (None = unknown), which patients are out of the
    ``sepsis_onset`` risk set because their sepsis alert was acknowledged as treated (None: nobody), and the
    model version that scored each (to pick its calibration)."""

    ward: str
    risk: np.ndarray
    news2: np.ndarray
    beds: int | None = None
    news2_max: np.ndarray | None = None
    news2_features: np.ndarray | None = None  # [n, features] of vigil.demand.news2_model (NaN rows = unknown)
    treated: np.ndarray | None = None
    versions: np.ndarray | None = None  # the model version of each patient's score (None: the calibration's)
    patients: tuple[str, ...] | None = None  # who they are (for live verification; never in a record)

    @property
    def occupied(self) -> int:
        return int(self.risk.shape[0])

    @property
    def scored(self) -> int:
        return int(np.isfinite(self.risk).sum())

    @property
    def free_beds(self) -> int | None:
        return None if self.beds is None else free_beds({self.ward: self.beds}, self.ward, self.occupied)


@dataclass(frozen=True)
class Forecast:
    """The demand for one resource in one ward over one horizon."""

    ward: str
    resource: str
    horizon_h: int
    probabilities: np.ndarray
    dist: CountDistribution
    intervals: dict[float, tuple[int, int]]
    capacity: int | None
    p_exceed: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expected(self) -> float:
        return self.dist.mean


def capacity_of(resource: DemandResource, snap: WardSnapshot) -> int | None:
    """The capacity the demand is compared with: the ward's free beds, a configured number, or None."""
    if resource.capacity is None:
        return None
    if resource.capacity == "free_beds":
        return snap.free_beds
    value = resource.capacity.get(snap.ward)
    return None if value is None else int(value)


def patient_probabilities(
    snap: WardSnapshot, resource: DemandResource, horizon_h: int, calibration: Calibration,
    by_version: Mapping[str, Calibration] | None = None,
) -> np.ndarray:  # fmt: skip
    """Per patient of ``snap`` in the resource's risk set: P(needs it within ``horizon_h``). A patient scored by
    another version in ``by_version`` goes through that version's calibration; the rest (and unscored patients)
    through ``calibration``. For ``sepsis_onset`` the patients marked ``treated`` are left out."""

    def probs(cal: Calibration, sel: np.ndarray | slice) -> np.ndarray:
        return cal.probabilities(
            resource.need, horizon_h, risk=snap.risk[sel], news2=snap.news2[sel],
            news2_max=None if snap.news2_max is None else snap.news2_max[sel],
            news2_features=None if snap.news2_features is None else snap.news2_features[sel],
            rule_at=resource.rule_news2_at, rule_p=resource.rule_p,
        )  # fmt: skip

    p = probs(calibration, slice(None))
    if snap.versions is not None and by_version:
        for version in set(snap.versions.tolist()) - {calibration.version}:
            cal = by_version.get(version)
            if cal is not None:
                sel = (snap.versions == version) & np.isfinite(snap.risk)
                p[sel] = probs(cal, sel)
    if resource.need == "sepsis_onset" and snap.treated is not None:
        p = p[~snap.treated]  # already being treated: not a future demand
    return p


def forecast(
    snap: WardSnapshot, resource: DemandResource, horizon_h: int, calibration: Calibration, *,
    levels: Sequence[float] = DEFAULT_LEVELS, exact_max: int = 200, probabilities: np.ndarray | None = None,
    by_version: Mapping[str, Calibration] | None = None,
) -> Forecast:  # fmt: skip
    """Forecast ``resource`` in ``snap``'s ward over ``horizon_h`` hours (``probabilities`` given: use them
    instead of the calibration, e.g. a backtest's risk set; see :func:`patient_probabilities`)."""
    extra: dict[str, Any] = {}
    if probabilities is None:
        probabilities = patient_probabilities(snap, resource, horizon_h, calibration, by_version)
        extra["treated"] = snap.occupied - int(probabilities.shape[0])
    dist = distribution(probabilities, exact_max=exact_max, ward_sd=calibration.ward_sd(resource.need, horizon_h))
    cap = capacity_of(resource, snap)
    return Forecast(
        ward=snap.ward, resource=resource.name, horizon_h=int(horizon_h), probabilities=probabilities, dist=dist,
        intervals={float(lv): dist.interval(lv) for lv in levels}, capacity=cap, p_exceed=dist.p_exceed(cap),
        extra=extra,
    )  # fmt: skip


def level_key(level: float) -> str:
    """The JSON key of an interval level (``0.9`` -> ``"0.9"``).

    >>> level_key(0.5), level_key(0.95)
    ('0.5', '0.95')
    """
    return f"{level:g}"


def forecast_id(ward: str, resource: str, horizon_h: int, time_iso: str, model: str) -> str:
    """Deterministic id of a forecast: the same ward, resource, horizon, time and model give the same id."""
    raw = f"{ward}\x1f{resource}\x1f{horizon_h}\x1f{time_iso}\x1f{model}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def forecast_record(f: Forecast, snap: WardSnapshot, *, time_iso: str, model: tuple[str, str],
                    emitted_at: str) -> dict[str, Any]:  # fmt: skip
    """The ``resource-demand`` value of a forecast (no patient identifiers)."""
    return {
        "v": 1, "kind": "forecast",
        "forecast_id": forecast_id(f.ward, f.resource, f.horizon_h, time_iso, f"{model[0]}:{model[1]}"),
        "ward": f.ward, "resource": f.resource, "horizon_h": f.horizon_h, "time": time_iso,
        "expected": _round(f.expected), "sd": _round(math.sqrt(f.dist.var)),
        "intervals": {level_key(lv): [lo, hi] for lv, (lo, hi) in sorted(f.intervals.items())},
        "p_exceed_capacity": _round(f.p_exceed), "capacity": f.capacity, "beds": snap.beds,
        "occupied": snap.occupied, "patients": int(f.probabilities.shape[0]), "scored": snap.scored,
        "treated": int(f.extra.get("treated", 0)),
        "method": f.dist.method, "model": {"name": model[0], "version": model[1]}, "emitted_at": emitted_at,
    }  # fmt: skip


class CapacityAlerts:
    """Raise a capacity alert when P(demand > capacity) >= ``level``; resolve it when it falls below
    ``level x clear_ratio`` or the capacity becomes unknown. One state per (ward, resource, horizon).

    >>> ca = CapacityAlerts(0.3, 0.8)
    >>> [ca.update(("W", "r", 12), p) for p in (0.1, 0.35, 0.5, 0.25, 0.2, None)]
    [None, 'raised', None, None, 'resolved', None]
    """

    def __init__(self, level: float, clear_ratio: float = 0.8) -> None:
        self.level = float(level)
        self.clear_below = float(level) * float(clear_ratio)
        self.active: set[tuple[str, str, int]] = set()

    def update(self, key: tuple[str, str, int], p_exceed: float | None) -> str | None:
        """``"raised"``, ``"resolved"`` or None (no change)."""
        if key in self.active:
            if p_exceed is None or p_exceed < self.clear_below:
                self.active.discard(key)
                return "resolved"
            return None
        if p_exceed is not None and p_exceed >= self.level:
            self.active.add(key)
            return "raised"
        return None

    def record(self, event: str, f: Forecast, forecast_rec: dict[str, Any]) -> dict[str, Any]:
        """The ``resource-demand`` value of a capacity alert (``kind: capacity_alert``); ``reason``: ``at_level``
        (raised), ``below_clear_level`` or ``capacity_unknown`` (resolved)."""
        if event == "raised":
            reason = "at_level"
        else:
            reason = "capacity_unknown" if f.p_exceed is None else "below_clear_level"
        return {
            "v": 1, "kind": "capacity_alert", "event": event, "reason": reason,
            "alert_id": hashlib.sha256(f"{forecast_rec['forecast_id']}\x1f{event}".encode()).hexdigest()[:32],
            "forecast_id": forecast_rec["forecast_id"], "ward": f.ward, "resource": f.resource,
            "horizon_h": f.horizon_h, "time": forecast_rec["time"], "expected": forecast_rec["expected"],
            "intervals": forecast_rec["intervals"], "p_exceed_capacity": forecast_rec["p_exceed_capacity"],
            "capacity": f.capacity, "level": self.level, "model": forecast_rec["model"],
            "emitted_at": forecast_rec["emitted_at"],
        }  # fmt: skip

    def close(self, key: tuple[str, str, int], *, time_iso: str, model: tuple[str, str],
              emitted_at: str) -> dict[str, Any] | None:  # fmt: skip
        """Resolve the active alert of a ward that is no longer forecast (it emptied and has no beds configured):
        a ``resolved`` record with ``reason: ward_empty`` and no forecast behind it (nobody is left, so the
        expected count is 0); None when no alert of ``key`` was active.

        >>> ca = CapacityAlerts(0.3)
        >>> ca.update(("W", "r", 12), 0.5)
        'raised'
        >>> rec = ca.close(("W", "r", 12), time_iso="2026-01-01T00:00:00Z", model=("m", "1"), emitted_at="x")
        >>> rec["event"], rec["reason"], rec["expected"], ca.active, ca.close(("W", "r", 12), time_iso="t",
        ...                                                                   model=("m", "1"), emitted_at="x")
        ('resolved', 'ward_empty', 0.0, set(), None)
        """
        if key not in self.active:
            return None
        self.active.discard(key)
        ward, resource, horizon_h = key
        raw = f"{ward}\x1f{resource}\x1f{horizon_h}\x1f{time_iso}\x1fresolved\x1fward_empty".encode()
        return {
            "v": 1, "kind": "capacity_alert", "event": "resolved", "reason": "ward_empty",
            "alert_id": hashlib.sha256(raw).hexdigest()[:32], "ward": ward, "resource": resource,
            "horizon_h": horizon_h, "time": time_iso, "expected": 0.0, "p_exceed_capacity": None, "capacity": None,
            "level": self.level, "model": {"name": model[0], "version": model[1]}, "emitted_at": emitted_at,
        }  # fmt: skip
