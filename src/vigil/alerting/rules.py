"""The alert rules: which rule applies to a patient (:class:`AlertPolicy`) and how one rule's state moves with
one value (:func:`advance`) or an acknowledgement (:func:`acknowledge`). Stepped by :mod:`vigil.alerting.stage`.

One small state machine per patient and rule, stepped once per scored row in row order. Rules:

* ``model_risk`` — a model's risk (one machine per model; ``raise_at`` None = the card's alert level);
* ``news2_urgent`` — NEWS2 total in the urgent band (>= 5; not raised while the emergency rule covers it);
* ``news2_emergency`` — NEWS2 total >= 7;
* ``news2_single`` — any single NEWS2 parameter scoring 3.

Per type (and per ward or ICU unit through ``overrides``), :class:`vigil.config.RuleSettings`:

* **hysteresis**: raised at ``value >= raise_at``, cleared only when ``value < clear_below``;
* **persistence**: raised after ``persistence`` consecutive scored rows at or above ``raise_at``;
* **refractory window**: no new alert of the type for the patient within ``refractory_h`` hours (event time)
  of the previous one; a condition still present when the window ends raises again (a reminder);
* **escalation**: while raised, a value ``escalate_by`` above the level it was raised at sends one
  escalation (``escalated_severity``);
* **resolution**: when the condition clears, a ``resolved`` message refers to the alert;
* **acknowledgement**: an ack (who, when, action) is recorded with the alert and suppresses new alerts of
  that type for ``ack_suppress_h`` hours (escalations still go out).

Every decision is a pure function of the state and the row, so ids derived from (patient, type, model
version, row, event) are the same on a replay or after a crash-and-recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vigil.alerting.state import AlertState, RuleState
from vigil.config import AlertSettings, RuleSettings

__all__ = ["AlertPolicy", "Decision", "ALERT_TYPES", "HOUR", "rule_key", "advance", "acknowledge"]

ALERT_TYPES = ("model_risk", "news2_urgent", "news2_emergency", "news2_single")
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One alert event to publish: what the alerting stage returns (a value; records are built from it)."""

    event: str  # raised | escalated | resolved | acknowledged
    kind: str  # alert type
    key: str  # state key: the type, plus the model name for model_risk
    severity: str
    value: float
    raise_at: float
    row: int
    time: float
    episode: str | None  # the raising alert's episode tag (row it was raised at), for resolutions and acks
    ack: dict[str, Any] | None = None
    model: str | None = None  # the model whose risk a model_risk rule read (None: a NEWS2 rule)
    version: str = "-"  # that model's version, part of the alert's identity ("-" for NEWS2 rules)
    alert_id: str = ""  # the id of the record this event publishes (set by the stage)
    episode_id: str = ""  # the raising alert's id (acknowledged: the acknowledged alert's)
    since: float | None = None  # acknowledged: event time the acknowledged alert was raised


def rule_key(kind: str, model: str | None) -> str:
    return f"{kind}:{model}" if kind == "model_risk" else kind


class AlertPolicy:
    """The rules of :class:`~vigil.config.AlertSettings` per ward and unit, with the live levels of the alert
    budget controller (:mod:`vigil.budget`)."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self._rule = lru_cache(maxsize=1024)(self._resolve)
        self.levels: dict[str, float] = {}  # ward/unit -> model_risk raise_at set live (vigil.budget)

    def set_level(self, scope: str, level: float | None) -> None:
        """The model-risk level of a ward or unit, set live by the alert-budget controller (:mod:`vigil.budget`):
        it replaces the rule's ``raise_at`` for that scope (over the overrides, the site's and the card's).
        None: back to the configured level."""
        if level is None:
            self.levels.pop(scope, None)
        else:
            self.levels[scope] = level
        self._rule.cache_clear()

    def rule(self, kind: str, ward: str | None = None, unit: str | None = None) -> RuleSettings:
        """The rule for ``kind`` with the unit's, then the ward's overrides applied."""
        return self._rule(kind, ward, unit)

    def _resolve(self, kind: str, ward: str | None, unit: str | None) -> RuleSettings:
        base: RuleSettings = getattr(self.settings, kind)
        patch: dict[str, Any] = {}
        for scope in (unit, ward):
            if scope is not None and scope in self.settings.overrides:
                patch.update(self.settings.overrides[scope].get(kind, {}))
        for scope in (unit, ward) if kind == "model_risk" and self.levels else ():
            if scope is not None and scope in self.levels:
                patch["raise_at"] = self.levels[scope]
        return base.model_copy(update=patch) if patch else base


def advance(st: AlertState, r: RuleSettings, kind: str, key: str, value: float, t: float, row: int,
            threshold: float | None = None, can_raise: bool = True, model: str | None = None, version: str = "-"
            ) -> Decision | None:  # fmt: skip
    """Move the state of one enabled rule (``key`` in ``st``) with a finite ``value`` at event time ``t``; the
    event, if any (without ids: :class:`vigil.alerting.stage.AlertStage` adds them). ``threshold``: the card's
    alert level (model_risk); ``can_raise`` False holds a raise back (the NEWS2 urgent rule while the emergency
    rule covers it); ``model`` / ``version``: the model whose risk ``value`` is (model_risk)."""
    s = st.get(key)
    if s is None:
        s = st[key] = RuleState()
    raise_at = float(r.raise_at if r.raise_at is not None else (threshold if threshold is not None else math.inf))
    clear = float(r.clear_below if r.clear_below is not None else 0.8 * raise_at)
    if s.active:
        if value < clear:
            s.active, s.streak = False, 0
            if not r.resolve:
                return None
            return Decision("resolved", kind, key, "info", value, raise_at, row, t, s.episode, s.ack, model, version)
        if r.escalate_by is not None and not s.escalated and s.level is not None and value >= s.level + r.escalate_by:
            s.escalated = True
            return Decision("escalated", kind, key, r.escalated_severity, value, raise_at, row, t, s.episode, None,
                            model, version)  # fmt: skip
        return None
    s.streak = s.streak + 1 if value >= raise_at else 0
    if s.streak < r.persistence or not can_raise:
        return None
    if s.last is not None and t - s.last < r.refractory_h * HOUR:
        return None
    if s.ack_until is not None and t < s.ack_until:
        return None
    s.active, s.level, s.escalated, s.last, s.episode, s.ack = True, value, False, t, str(row), None
    return Decision("raised", kind, key, r.severity, value, raise_at, row, t, str(row), None, model, version)


def acknowledge(s: RuleState, key: str, alert_id: str, *, by: str, at: float, action: str, suppress_h: float
                ) -> Decision:  # fmt: skip
    """Record an acknowledgement of ``alert_id`` (an alert this rule raised) with the rule's current alert: it
    silences new alerts of the type for ``suppress_h`` hours (escalations still go out). The decision's
    ``episode`` is the acknowledged alert's id."""
    s.ack = {"by": by, "at": at, "action": action}
    s.ack_until = max(s.ack_until if s.ack_until is not None else -math.inf, at + suppress_h * HOUR)
    kind = key.split(":", 1)[0]
    row = int(s.episode) if s.episode is not None else -1
    return Decision("acknowledged", kind, key, "info", float(s.level or 0.0), math.nan, row, at, alert_id, s.ack)
