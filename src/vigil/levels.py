"""The model-risk alert level in force: ONE answer, used by the alert policy, the score records
(``threshold`` / ``above_threshold``), alert records and their messages, ``vigil alerts tail``,
``vigil models list/show``, the dashboards and the docs.

Highest first (exactly as :meth:`vigil.alerting.AlertPolicy.rule` resolves a rule, then
:meth:`vigil.alerting.AlertStage.rule` falls back to the model):

1. ``alerts.overrides.<ward>.model_risk.raise_at`` (a ward's override is applied after the unit's),
2. ``alerts.overrides.<unit>.model_risk.raise_at``,
3. ``alerts.model_risk.raise_at`` (the site's setting),
4. the model card's ``alert_policy.raise_at`` (chosen for an alert budget on validation data),
5. the model card's operating ``threshold`` (a card without an alert policy).

The card's ``threshold`` (the operating point its metrics are reported at) is not the alert level when the
card has an alert policy; nothing vigil publishes or prints calls the alert level a threshold without
saying which one it is.

>>> from vigil.config import AlertSettings
>>> from vigil.alerting import AlertPolicy
>>> pol = AlertPolicy(AlertSettings(overrides={"MICU": {"model_risk": {"raise_at": 0.7}}}))
>>> level_in_force(pol, 0.55), level_in_force(pol, 0.55, unit="MICU")
(0.55, 0.7)
>>> describe_level(pol.settings, card_level=0.55, card_threshold=0.38, card_has_policy=True).source
'model card alert_policy.raise_at'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vigil.card import ModelCard

if TYPE_CHECKING:
    from vigil.alerting import AlertPolicy
    from vigil.config import AlertSettings

__all__ = ["Level", "level_in_force", "describe_level", "levels_for_card", "scoped_levels"]


@dataclass(frozen=True)
class Level:
    """An alert level and where it comes from."""

    value: float
    source: str
    scope: str = "site"  # "site", or the ward / unit whose override sets it

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "scope": self.scope}


def level_in_force(policy: AlertPolicy, card_level: float, ward: str | None = None, unit: str | None = None) -> float:
    """The risk at which a model-risk alert is raised for a patient on ``ward`` / ``unit``: the rule's
    ``raise_at`` after overrides, else ``card_level`` (the model's :attr:`~vigil.registry.ModelRef.alert_level`).
    Cheap (the policy caches resolved rules): called once per scored row."""
    raise_at = policy.rule("model_risk", ward, unit).raise_at
    return float(card_level if raise_at is None else raise_at)


def describe_level(alerts: AlertSettings, *, card_level: float, card_threshold: float, card_has_policy: bool,
                   ward: str | None = None, unit: str | None = None) -> Level:  # fmt: skip
    """:func:`level_in_force` with its source, for people (``vigil models show``, docs)."""
    for scope in (ward, unit):
        if scope is not None:
            patch = alerts.overrides.get(scope, {}).get("model_risk", {})
            if patch.get("raise_at") is not None:
                return Level(float(patch["raise_at"]), f"alerts.overrides.{scope}.model_risk.raise_at", scope)
    if alerts.model_risk.raise_at is not None:
        return Level(float(alerts.model_risk.raise_at), "setting alerts.model_risk.raise_at")
    if card_has_policy:
        return Level(float(card_level), "model card alert_policy.raise_at")
    return Level(float(card_threshold), "model card threshold (no alert_policy)")


def levels_for_card(alerts: AlertSettings, card: dict[str, Any] | ModelCard) -> list[Level]:
    """The site's level for a model card, then one per ward/unit override that sets ``model_risk.raise_at``."""
    typed = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    has = typed.alert_policy is not None and typed.alert_policy.raise_at is not None
    kw = {"card_level": typed.alert_level, "card_threshold": float(typed.threshold), "card_has_policy": has}
    out = [describe_level(alerts, **kw)]
    for scope in scoped_levels(alerts):
        out.append(describe_level(alerts, ward=scope, **kw))
    return out


def scoped_levels(alerts: AlertSettings) -> list[str]:
    """Wards/units whose overrides set the model-risk level."""
    return sorted(s for s, kinds in alerts.overrides.items() if (kinds.get("model_risk") or {}).get("raise_at")
                  is not None)  # fmt: skip
