"""The alert policy engine: turns a patient's stream of scores into few, early, explained alerts.

One small state machine per patient and alert type, stepped once per scored row in row order, used
unchanged by the worker (state kept in :class:`vigil.state.PatientState` and the changelog) and by
``vigil evaluate`` (offline replay of the same rows). Alert types:

* ``model_risk`` — a model's risk (one machine per model; ``raise_at`` None = the card's threshold);
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

>>> from vigil.config import AlertSettings, RuleSettings
>>> pol = AlertPolicy(AlertSettings(model_risk=RuleSettings(persistence=2, severity="high", refractory_h=0)))
>>> st: dict = {}
>>> [[d.event for d in pol.step(st, "model_risk", "m", v, t * 3600.0, t, threshold=0.5)]
...  for t, v in enumerate([0.6, 0.7, 0.8, 0.3, 0.6])]
[[], ['raised'], [], ['resolved'], []]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vigil.config import AlertSettings, RuleSettings

__all__ = ["AlertPolicy", "Decision", "ALERT_TYPES", "rule_key"]

ALERT_TYPES = ("model_risk", "news2_urgent", "news2_emergency", "news2_single")
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One alert event to publish."""

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


def rule_key(kind: str, model: str | None) -> str:
    return f"{kind}:{model}" if kind == "model_risk" else kind


def _new() -> dict[str, Any]:
    return {"active": False, "streak": 0, "last": None, "level": None, "escalated": False, "ack_until": None,
            "episode": None, "ack": None}  # fmt: skip


class AlertPolicy:
    """Applies :class:`~vigil.config.AlertSettings` to per-patient alert state (a JSON-able dict)."""

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

    def step(
        self,
        state: dict[str, Any],
        kind: str,
        model: str | None,
        value: float,
        t: float,
        row: int,
        *,
        threshold: float | None = None,
        ward: str | None = None,
        unit: str | None = None,
        can_raise: bool = True,
    ) -> list[Decision]:
        """Step the ``kind`` machine of one patient with the row's ``value`` at event time ``t``.
        ``threshold``: the model card's threshold (model_risk); ``can_raise`` False holds a raise back
        (the NEWS2 urgent rule while the emergency rule covers the row)."""
        r = self.rule(kind, ward, unit)
        if not r.enabled or not math.isfinite(value):
            return []
        raise_at = float(r.raise_at if r.raise_at is not None else (threshold if threshold is not None else math.inf))
        clear = float(r.clear_below if r.clear_below is not None else 0.8 * raise_at)
        key = rule_key(kind, model)
        s = state.get(key)
        if s is None:
            s = state[key] = _new()
        if s["active"]:
            if value < clear:
                s["active"], s["streak"] = False, 0
                if r.resolve:
                    return [Decision("resolved", kind, key, "info", value, raise_at, row, t, s["episode"], s["ack"])]
                return []
            if r.escalate_by is not None and not s["escalated"] and value >= s["level"] + r.escalate_by:
                s["escalated"] = True
                return [Decision("escalated", kind, key, r.escalated_severity, value, raise_at, row, t, s["episode"])]
            return []
        s["streak"] = s["streak"] + 1 if value >= raise_at else 0
        if s["streak"] < r.persistence or not can_raise:
            return []
        if s["last"] is not None and t - s["last"] < r.refractory_h * HOUR:
            return []
        if s["ack_until"] is not None and t < s["ack_until"]:
            return []
        s.update(active=True, level=value, escalated=False, last=t, episode=str(row), ack=None)
        return [Decision("raised", kind, key, r.severity, value, raise_at, row, t, str(row))]

    def ack(self, state: dict[str, Any], alert_id: str, *, by: str, at: float, action: str) -> Decision | None:
        """Record an acknowledgement of the alert ``alert_id`` — one of the recent alerts the worker raised for
        the patient (``state[key]["ids"]``: alert id -> raise time, and ``state[key]["alert_id"]``, the latest):
        it is kept with the alert and silences new alerts of that type for ``ack_suppress_h`` hours
        (escalations still go out). The decision's ``episode`` is the acknowledged alert's id. None when no
        such alert is known (too old, another patient's, or never raised)."""
        key = next((k for k, s in state.items() if isinstance(s, dict)
                    and (s.get("alert_id") == alert_id or alert_id in (s.get("ids") or {}))), None)  # fmt: skip
        if key is None:
            return None
        s = state[key]
        s["ack"] = {"by": by, "at": at, "action": action}
        s["ack_until"] = max(s["ack_until"] or -math.inf, at + self.settings.ack_suppress_h * HOUR)
        kind = key.split(":", 1)[0]
        return Decision("acknowledged", kind, key, "info", float(s["level"] or 0.0), math.nan,
                        int(s["episode"]), at, alert_id, s["ack"])  # fmt: skip
