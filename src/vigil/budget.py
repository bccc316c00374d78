"""A live alert-budget controller (optional, off by default): keeps a ward's or ICU unit's model-risk alert rate
near a target by moving that group's alert level, in small steps, within bounds the site sets.

Per group (``alerts.budget.group_by``: the patient's ward or unit; patients without one are not controlled)
the controller counts, in a sliding event-time window of ``window_h`` hours, the model-risk alerts that go out
(raised or escalated, by the primary model, the first serving one: as ``vigil evaluate`` counts alerts per
patient-day for the card's budget) and the exposure (patient-hours: one per hourly row scored, one
per new row hour in ``interval`` scoring mode). When the group has at least ``min_patient_days`` of exposure at
its current level and ``interval_min`` event-time minutes have passed since it was last evaluated, the
observed rate (alerts per patient-day) is compared with ``target_per_patient_day``:

* above ``target x (1 + tolerance)`` and the count of alerts unlikely under the target (one-sided Poisson
  test at ``alpha``: P(X >= alerts | target x patient-days) < alpha): the level rises by ``step`` (fewer alerts);
* below ``target x (1 - tolerance)`` and P(X <= alerts | target x patient-days) < alpha: the level falls by
  ``step`` (more alerts). A few alerts on little exposure are noise, not a reason to move: with a target of
  0.2 per patient-day, a ward with no alert at all is only moved down after 15 patient-days (e^-3 < 0.05);
* always clamped to ``[min_level, max_level]``; a group held at a bound while its rate is still off target
  is *pinned* (one warning log line, and the gauge ``vigil_alert_budget_pinned`` = 1).

After a move the group's window restarts: the next decision is measured at the new level only (no
overshoot from alerts raised at the old one). Every move is one log line (group, old -> new level, observed
rate, exposure, target, bounds; never a patient) and is counted (``vigil_alert_budget_moves_total``); the
level in force per group is the gauge ``vigil_alert_level``. The level reaches alerts through the alert
policy (:meth:`vigil.alerting.AlertPolicy.set_level`): it is the ``raise_at`` of the group's model-risk rule,
so the alert records' ``raise_at``, their messages and everything that reads the rule agree.

A group starts at the level in force without the controller (the group's override, else the site's
``alerts.model_risk.raise_at``, else the model card's alert level), clamped to the bounds. The controller's
state is in memory: after a worker restart every group starts again from that level with an empty window
(rebuilt, not restored; the log says so). With several workers each controls the patients of the partitions
it owns (a hash-random share of every ward), so each converges on its own share's rate.

>>> pol = _Levels()
>>> c = BudgetController(BudgetSettings(enabled=True, target_per_patient_day=1.0, min_level=0.3, max_level=0.5,
...                                     step=0.05, min_patient_days=1.0, interval_min=0.0), pol)
>>> for h in range(24):  # one patient-day in ward W1 with 6 alerts: rate 6 / day, far above 1
...     c.observe_row("W1", h * 3600.0, 0.4, patient="p", row=h, partial=False, raised=h % 4 == 0)
>>> c.update()
[('W1', 0.4, 0.45)]
>>> pol.levels
{'W1': 0.45}
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    from vigil.metrics import WorkerMetrics

__all__ = ["BudgetSettings", "BudgetController", "budget_controller", "poisson_cdf", "HOUR"]

log = logging.getLogger(__name__)
HOUR = 3600.0


class BudgetSettings(BaseModel):
    """``alerts.budget``: the live alert-budget controller (:mod:`vigil.budget`). Off by default; when enabled the
    site must set the bounds ``min_level`` and ``max_level`` (the controller never moves outside them)."""

    enabled: bool = False
    group_by: Literal["ward", "unit"] = "ward"
    groups: list[str] = Field(default_factory=list, description="wards/units controlled; empty = every one seen")
    target_per_patient_day: float = Field(default=0.2, gt=0.0, description="model-risk alerts per patient-day")
    min_level: float | None = Field(default=None, ge=0.0, le=1.0, description="lowest level (required if enabled)")
    max_level: float | None = Field(default=None, ge=0.0, le=1.0, description="highest level (required if enabled)")
    step: float = Field(default=0.02, gt=0.0, le=0.5, description="level change per move")
    tolerance: float = Field(default=0.25, ge=0.0, lt=1.0, description="relative dead band around the target")
    alpha: float = Field(default=0.05, gt=0.0, le=1.0, description="one-sided Poisson test a move must pass")
    window_h: float = Field(default=24.0, gt=0.0, description="sliding event-time window, hours")
    min_patient_days: float = Field(default=2.0, gt=0.0, description="exposure needed at a level before a move")
    interval_min: float = Field(default=60.0, ge=0.0, description="event-time minutes between evaluations")

    @model_validator(mode="after")
    def _bounds(self) -> BudgetSettings:
        if self.enabled and (self.min_level is None or self.max_level is None):
            msg = "alerts.budget.enabled needs the site's bounds alerts.budget.min_level and max_level"
            raise ValueError(msg)
        if self.min_level is not None and self.max_level is not None and self.min_level > self.max_level:
            msg = f"alerts.budget.min_level {self.min_level} > max_level {self.max_level}"
            raise ValueError(msg)
        return self


class LevelSink(Protocol):
    """Where a group's level goes: :class:`vigil.alerting.AlertPolicy` (``levels`` and ``set_level``)."""

    levels: dict[str, float]

    def set_level(self, scope: str, level: float | None) -> None: ...


class _Levels:
    """A stand-in :class:`LevelSink` (doctests, unit tests)."""

    def __init__(self) -> None:
        self.levels: dict[str, float] = {}

    def set_level(self, scope: str, level: float | None) -> None:
        if level is None:
            self.levels.pop(scope, None)
        else:
            self.levels[scope] = level


@dataclass(slots=True)
class _Group:
    level: float
    buckets: deque[list[float]] = field(default_factory=deque)  # [hour index, alerts, patient-hours], ascending
    last_eval: float = -math.inf  # event time of the last evaluation
    pinned: bool = False
    rate: float = math.nan  # the last evaluated rate (alerts per patient-day)

    def totals(self) -> tuple[float, float]:
        return sum((b[1] for b in self.buckets), 0.0), sum((b[2] for b in self.buckets), 0.0)


class BudgetController:
    """Per-group alert-rate controller; see the module docstring. Stepped by the worker's
    :class:`~vigil.worker.batch.Processor`: :meth:`observe_row` once per scored row, :meth:`update` once per
    batch (moves take effect from the next batch)."""

    def __init__(self, settings: BudgetSettings, sink: LevelSink, metrics: WorkerMetrics | None = None) -> None:
        assert settings.min_level is not None and settings.max_level is not None
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.lo, self.hi = float(settings.min_level), float(settings.max_level)
        self.groups: dict[str, _Group] = {}
        self._last_row: dict[str, int] = {}  # interval mode: the row hour last counted per patient (memory only)
        self._only = set(settings.groups)
        self._model: str | None = None
        log.info("alert budget controller on: %s level moved in [%.3f, %.3f] by %.3f toward %.3f model-risk alerts "
                 "per patient-day (state rebuilt at start: every group starts from its configured level)",
                 settings.group_by, self.lo, self.hi, settings.step, settings.target_per_patient_day)  # fmt: skip

    def group_of(self, ward: str | None, unit: str | None) -> str | None:
        g = ward if self.settings.group_by == "ward" else unit
        return g if g and (not self._only or g in self._only) else None

    def level(self, group: str) -> float | None:
        g = self.groups.get(group)
        return None if g is None else g.level

    def observe_row(self, group: str, t: float, base_level: float, *, patient: str, row: int, partial: bool,
                    raised: bool) -> None:  # fmt: skip
        """One scored row of a patient in ``group`` at event time ``t``; ``raised``: a model-risk alert of the
        primary model went out on it (raised or escalated); ``base_level``: the level in force without the
        controller (used when the group is new)."""
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = _Group(min(self.hi, max(self.lo, float(base_level))))
            self.sink.set_level(group, g.level)
            self._export(group, g)
            log.info("alert budget: %s %s starts at level %.3f", self.settings.group_by, group, g.level)
        hours = 1.0
        if partial:  # interval mode: a patient-hour once per row hour
            if self._last_row.get(patient) == row:
                hours = 0.0
            else:
                if len(self._last_row) >= 200_000:
                    self._last_row.clear()
                self._last_row[patient] = row
        hour = math.floor(t / HOUR)
        b = g.buckets
        if b and b[-1][0] == hour:
            b[-1][1] += raised
            b[-1][2] += hours
            return
        if b and hour < b[-1][0]:  # an older row (patients are not in lockstep): its bucket, or a new one in order
            for x in reversed(b):
                if x[0] == hour:
                    x[1] += raised
                    x[2] += hours
                    return
            if hour <= b[-1][0] - self.settings.window_h:
                return  # older than the window
            b.append([hour, float(raised), hours])
            g.buckets = deque(sorted(b, key=lambda x: x[0]))
            return
        b.append([hour, float(raised), hours])

    def observe_scored(self, snaps: list[Any], raised: set[int], rule: Any, card_level: float,
                       model: str = "") -> None:  # fmt: skip
        """Every row of a scored batch (:class:`vigil.state.Snapshot`); ``raised``: the indices of the rows on which
        a model-risk alert of the primary model went out (raised or escalated); ``rule``:
        :meth:`vigil.alerting.AlertPolicy.rule` and ``card_level`` its model's alert level (the level of a new group);
        ``model``: the primary model's NAME:VERSION (a new one has its own risk scale: every group restarts)."""
        if model != self._model:
            if self._model is not None:
                self.reset(f"primary model changed {self._model} -> {model}")
            self._model = model
        for i, sn in enumerate(snaps):
            group = self.group_of(sn.ward, sn.unit)
            if group is None:
                continue
            base = card_level
            if group not in self.groups:
                r = rule("model_risk", sn.ward, sn.unit).raise_at
                base = card_level if r is None else float(r)
            self.observe_row(group, sn.row_time, base, patient=sn.patient, row=sn.row, partial=sn.partial,
                             raised=i in raised)  # fmt: skip

    def update(self) -> list[tuple[str, float, float]]:
        """Evaluate every group due; returns the moves ``(group, old level, new level)``."""
        s = self.settings
        moves = []
        for name, g in self.groups.items():
            if not g.buckets:
                continue
            newest = g.buckets[-1][0]
            while g.buckets and g.buckets[0][0] <= newest - s.window_h:
                g.buckets.popleft()
            now = (newest + 1) * HOUR
            if 0.0 <= now - g.last_eval < s.interval_min * 60.0:  # (event time back: a late feed, evaluate)
                continue
            alerts, hours = g.totals()
            days = hours / 24.0
            if days < s.min_patient_days:
                continue
            g.last_eval = now
            g.rate = alerts / days
            want, lam, k = 0, s.target_per_patient_day * days, round(alerts)
            if g.rate > s.target_per_patient_day * (1.0 + s.tolerance) and 1.0 - poisson_cdf(k - 1, lam) < s.alpha:
                want = 1
            elif g.rate < s.target_per_patient_day * (1.0 - s.tolerance) and poisson_cdf(k, lam) < s.alpha:
                want = -1
            new = round(min(self.hi, max(self.lo, g.level + want * s.step)), 6)
            pinned = want != 0 and new == g.level
            if pinned and not g.pinned:
                log.warning("alert budget: %s %s pinned at its %s bound %.3f: observed %.3f alerts per patient-day "
                            "over %.1f patient-days, target %.3f", s.group_by, name, "upper" if want > 0 else "lower",
                            g.level, g.rate, days, s.target_per_patient_day)  # fmt: skip
            g.pinned = pinned
            if new != g.level:
                log.warning("alert budget: %s %s model_risk level %.3f -> %.3f (observed %.3f alerts per patient-day "
                            "over %.1f patient-days, target %.3f, bounds [%.3f, %.3f])", s.group_by, name, g.level,
                            new, g.rate, days, s.target_per_patient_day, self.lo, self.hi)  # fmt: skip
                moves.append((name, g.level, new))
                g.level = new
                g.buckets.clear()  # measure the next decision at the new level only
                self.sink.set_level(name, new)
                if self.metrics is not None:
                    self.metrics.budget_moves.labels(name, "up" if want > 0 else "down").inc()
            self._export(name, g)
        return moves

    def reset(self, why: str) -> None:
        """Forget every group: each restarts from its configured level (the policy's live levels removed)."""
        log.warning("alert budget: %s: every %s restarts from its configured level", why, self.settings.group_by)
        for name in self.groups:
            self.sink.set_level(name, None)
        self.groups.clear()
        self._last_row.clear()

    def _export(self, name: str, g: _Group) -> None:
        m = self.metrics
        if m is None:
            return
        m.alert_level.labels(name).set(g.level)
        m.budget_pinned.labels(name).set(int(g.pinned))
        if not math.isnan(g.rate):
            m.budget_rate.labels(name).set(g.rate)

    def export_all(self) -> None:
        """Set every group's gauges (after metrics were attached)."""
        for name, g in self.groups.items():
            self._export(name, g)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per group: level, pinned, last rate, alerts and patient-days in the window (counts only)."""
        out = {}
        for name, g in self.groups.items():
            alerts, hours = g.totals()
            out[name] = {"level": g.level, "pinned": g.pinned, "rate": g.rate, "alerts": alerts,
                         "patient_days": hours / 24.0}  # fmt: skip
        return out


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam).

    >>> round(poisson_cdf(0, 3.0), 4), round(1 - poisson_cdf(3, 1.0), 4)
    (0.0498, 0.019)
    """
    if k < 0:
        return 0.0
    if lam <= 0.0:
        return 1.0
    log_lam = math.log(lam)
    return min(1.0, sum(math.exp(i * log_lam - lam - math.lgamma(i + 1)) for i in range(k + 1)))


def budget_controller(settings: BudgetSettings, sink: LevelSink) -> BudgetController | None:
    """The controller when ``alerts.budget.enabled``, else None."""
    return BudgetController(settings, sink) if settings.enabled else None
