"""A patient's alert state: one small typed record per alert rule, owned by :mod:`vigil.alerting.stage`.

:class:`AlertState` maps a rule key (the alert type, plus the model name for ``model_risk``: see
:func:`vigil.alerting.rules.rule_key`) to its :class:`RuleState`. It lives in
:attr:`vigil.state.PatientState.alerts` and travels with the patient's state in the changelog, as JSON in the
record's header, in exactly the format the worker wrote before the alerting stage existed (one object per rule
with the keys below; ``alert_id``, ``version`` and ``ids`` only once the rule has raised), so records written by
an older worker restore unchanged and an older worker can read the records this one writes. Entries of the
oldest format (a bare ``true`` / ``false``: raised or not) restore as a rule that is raised or not.

>>> st = AlertState.from_json({"news2_emergency": True, "model_risk:m": {"active": False, "streak": 1}})
>>> st["news2_emergency"].active, st["model_risk:m"].streak, st.model_risk_raised()
(True, 1, False)
>>> AlertState.from_json(st.to_json()).to_json() == st.to_json()
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["AlertState", "RuleState", "ACKABLE"]

ACKABLE = 8  # recent raised alerts per patient and rule that an acknowledgement can refer to


@dataclass(slots=True)
class RuleState:
    """One rule's state for one patient (~100 bytes; a dict of the same keys took ~350-650)."""

    active: bool = False  # raised and not yet cleared
    streak: int = 0  # consecutive scored rows at or above the raise level (persistence)
    last: float | None = None  # event time of the last alert raised (refractory window)
    level: float | None = None  # the value the current alert was raised at (escalation)
    escalated: bool = False  # the current alert was escalated
    ack_until: float | None = None  # new alerts silenced until this event time (acknowledgement)
    episode: str | None = None  # row the current (or last) alert was raised at
    ack: dict[str, Any] | None = None  # the acknowledgement of the current alert: by, at, action
    alert_id: str | None = None  # id of the latest alert raised
    version: str | None = None  # model version of the latest alert raised ("-" for NEWS2 rules)
    ids: dict[str, float] | None = None  # recent raised alerts (id -> raise time), oldest first: acknowledgeable

    def to_json(self) -> dict[str, Any]:
        out = {"active": self.active, "streak": self.streak, "last": self.last, "level": self.level,
               "escalated": self.escalated, "ack_until": self.ack_until, "episode": self.episode,
               "ack": self.ack}  # fmt: skip
        if self.alert_id is not None:
            out["alert_id"] = self.alert_id
        if self.version is not None:
            out["version"] = self.version
        if self.ids is not None:
            out["ids"] = self.ids
        return out

    @classmethod
    def from_json(cls, entry: Any) -> RuleState:
        if isinstance(entry, bool):  # the oldest format: raised or not
            return cls(active=entry)
        if not isinstance(entry, Mapping):
            msg = f"an alert rule's state must be an object or a boolean, not {type(entry).__name__}"
            raise ValueError(msg)  # noqa: TRY004 - a malformed record is a value error of the record
        return cls(**{k: entry[k] for k in _FIELDS if k in entry})


_FIELDS = tuple(f.name for f in fields(RuleState))


class AlertState(dict[str, RuleState]):
    """A patient's alert state: rule key -> :class:`RuleState` (insertion-ordered, as written)."""

    __slots__ = ()

    def find(self, alert_id: str) -> str | None:
        """The key of the rule that raised ``alert_id`` (its latest, or one of its recent alerts), or None."""
        for key, s in self.items():
            if s.alert_id == alert_id or (s.ids is not None and alert_id in s.ids):
                return key
        return None

    def model_risk_raised(self) -> bool:
        """A model-risk alert is raised and not yet cleared (any model)."""
        return any(s.active and k.startswith("model_risk:") for k, s in self.items())

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {k: s.to_json() for k, s in self.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> AlertState:
        return cls((k, RuleState.from_json(v)) for k, v in (data or {}).items())
