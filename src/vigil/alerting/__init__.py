"""The alerting stage: one owner of the per-patient alert state, stepping every alert rule.

* :mod:`vigil.alerting.state` — :class:`AlertState` / :class:`RuleState`, the typed per-patient alert state
  (in :attr:`vigil.state.PatientState.alerts`, serialised with it to the changelog);
* :mod:`vigil.alerting.rules` — :class:`AlertPolicy` (the rules per ward and unit, live levels), the rule state
  machine and :class:`Decision`, the alert event;
* :mod:`vigil.alerting.stage` — :class:`AlertStage`: steps the model-risk and NEWS2 rules of a scored row and
  applies acknowledgements, returning decisions (values, ids included) that :mod:`vigil.worker.outputs` turns
  into records.
"""

from vigil.alerting.rules import ALERT_TYPES, AlertPolicy, Decision, rule_key
from vigil.alerting.stage import AlertStage, ModelRisk, high_risk_by_ward
from vigil.alerting.state import ACKABLE, AlertState, RuleState

__all__ = ["ACKABLE", "ALERT_TYPES", "AlertPolicy", "AlertStage", "AlertState", "Decision", "ModelRisk",
           "RuleState", "high_risk_by_ward", "rule_key"]  # fmt: skip
