"""The alerting stage: steps every alert rule of a patient on a scored row and applies acknowledgements,
returning alert events as values (:class:`~vigil.alerting.rules.Decision`, ids included). It is the one owner
of a patient's :class:`~vigil.alerting.state.AlertState`; :mod:`vigil.worker.outputs` only builds records from
its decisions, and ``vigil evaluate`` replays the same stage offline
(:func:`vigil.evaluation.alerting.simulate_policy`).

>>> from vigil.config import AlertSettings, RuleSettings
>>> stage = AlertStage(AlertSettings(model_risk=RuleSettings(persistence=2, severity="high", refractory_h=0)))
>>> st = AlertState()
>>> [[d.event for d in stage.rule(st, "model_risk", "m", v, t * 3600.0, t, threshold=0.5)]
...  for t, v in enumerate([0.6, 0.7, 0.8, 0.3, 0.6])]
[[], ['raised'], [], ['resolved'], []]
>>> st["model_risk:m"].alert_id == alert_id("", "model_risk:m", "-", 1)  # acknowledgeable by its id
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from vigil.alerting.rules import AlertPolicy, Decision, acknowledge, advance, rule_key
from vigil.alerting.state import ACKABLE, AlertState
from vigil.alerts import alert_id

if TYPE_CHECKING:
    from collections.abc import Iterable

    from vigil.config import AlertSettings
    from vigil.state import Snapshot

__all__ = ["AlertStage", "ModelRisk", "high_risk_by_ward"]


class ModelRisk(NamedTuple):
    """One serving model's risk for a row: the input of its model-risk rule."""

    name: str
    version: str
    risk: float
    card_level: float  # the card's alert level: the rule's raise_at when no override or live level sets one


class AlertStage:
    """Steps the alert rules of :class:`~vigil.config.AlertSettings` (:attr:`policy`: the rules per ward and unit
    and the live levels of the budget controller) over per-patient :class:`AlertState`. ``identify`` False (an
    offline replay, where nothing is published or acknowledged): decisions without ids, no ids remembered."""

    def __init__(self, settings: AlertSettings, *, identify: bool = True) -> None:
        self.policy = AlertPolicy(settings)
        self.identify = identify

    def step(self, st: AlertState, snap: Snapshot, models: Sequence[ModelRisk], news2: Mapping[str, Any]
             ) -> list[Decision]:  # fmt: skip
        """Every rule on one scored row of ``snap.patient``: each model's risk rule (in ``models`` order), then
        the NEWS2 rules (once per row, not once per model)."""
        t, row, p, w, u = snap.row_time, snap.row, snap.patient, snap.ward, snap.unit
        out: list[Decision] = []
        r = self.policy.rule("model_risk", w, u)
        if r.enabled:
            for m in models:
                if math.isfinite(m.risk):
                    d = advance(st, r, "model_risk", f"model_risk:{m.name}", m.risk, t, row, m.card_level, True,
                                m.name, m.version)  # fmt: skip
                    if d is not None:
                        out.append(self._identify(st, d, p))
        return out + self.news2(st, news2["total"], None, t, row, patient=p, ward=w, unit=u, parts=news2["parts"])

    def news2(self, st: AlertState, total: float, single: float | None, t: float, row: int, *, patient: str = "",
              ward: str | None = None, unit: str | None = None, parts: Mapping[str, float] | None = None
              ) -> list[Decision]:  # fmt: skip
        """The NEWS2 rules on a row's NEWS2 ``total`` and its highest single-parameter score ``single`` (or the
        highest of ``parts``): emergency, urgent (held back while the emergency rule covers the row), single
        parameter."""
        rule = self.policy.rule
        emergency, urgent, one = rule("news2_emergency", ward, unit), rule("news2_urgent", ward, unit), rule(
            "news2_single", ward, unit)  # fmt: skip
        if not (emergency.enabled or urgent.enabled or one.enabled):
            return []
        total = float(total)
        ok = math.isfinite(total)
        out = [
            advance(st, emergency, "news2_emergency", "news2_emergency", total, t, row) if emergency.enabled and ok
            else None,
            advance(st, urgent, "news2_urgent", "news2_urgent", total, t, row, None,
                    not (emergency.enabled and total >= float(emergency.raise_at or 7))) if urgent.enabled and ok
            else None,
        ]  # fmt: skip
        if one.enabled:
            if single is None:
                single = float(max(parts.values(), default=0)) if parts is not None else math.nan
            if math.isfinite(single):
                out.append(advance(st, one, "news2_single", "news2_single", single, t, row))
        return [self._identify(st, d, patient) for d in out if d is not None]

    def news2_covered(self, total: float, ward: str | None = None, unit: str | None = None) -> bool:
        """The NEWS2 emergency rule covers a row with this ``total`` (no urgent alert is raised then)."""
        emergency = self.policy.rule("news2_emergency", ward, unit)
        return emergency.enabled and total >= float(emergency.raise_at or 7)

    def rule(self, st: AlertState, kind: str, model: str | None, value: float, t: float, row: int, *,
             patient: str = "", version: str = "-", threshold: float | None = None, ward: str | None = None,
             unit: str | None = None, can_raise: bool = True) -> list[Decision]:  # fmt: skip
        """Step one rule (``kind``, and ``model`` for model_risk) of one patient with the row's ``value``.
        A disabled rule or a non-finite value changes nothing. A raised alert's id is remembered (the latest
        :data:`~vigil.alerting.state.ACKABLE` per rule), so an acknowledgement can refer to it."""
        r = self.policy.rule(kind, ward, unit)
        if not r.enabled or not math.isfinite(value):
            return []
        version = version if kind == "model_risk" else "-"
        d = advance(st, r, kind, rule_key(kind, model), value, t, row, threshold, can_raise, model, version)
        return [] if d is None else [self._identify(st, d, patient)]

    def _identify(self, st: AlertState, d: Decision, patient: str) -> Decision:
        """``d`` with its ids (the record's and its episode's); a raised alert's id is remembered in its rule's
        state, the latest :data:`~vigil.alerting.state.ACKABLE`, so an acknowledgement can refer to it."""
        if not self.identify:
            return d
        aid = alert_id(patient, d.key, d.version, d.row, d.event)
        episode = alert_id(patient, d.key, d.version, int(d.episode), "raised") if d.episode else aid
        if d.event == "raised":
            s = st[d.key]
            s.alert_id, s.version = aid, d.version
            ids = s.ids if s.ids is not None else {}
            ids[aid] = d.time
            for old in list(ids)[:-ACKABLE]:
                del ids[old]
            s.ids = ids
        return Decision(d.event, d.kind, d.key, d.severity, d.value, d.raise_at, d.row, d.time, d.episode, d.ack,
                        d.model, d.version, aid, episode)  # fmt: skip

    def ack(self, st: AlertState, alert: str, *, by: str, at: float, action: str) -> Decision | None:
        """Apply an acknowledgement of the alert ``alert`` (one of the patient's recent alerts): kept with the
        alert, silencing new alerts of its type for ``ack_suppress_h`` hours (escalations still go out). The
        decision carries the acknowledged alert's id (``episode``, ``episode_id``), its raise time (``since``)
        and the id of the ``acknowledged`` record. None when no such alert is known (too old, another patient's,
        or never raised)."""
        key = st.find(alert)
        if key is None:
            return None
        s = st[key]
        since = (s.ids or {}).get(alert, s.last)
        d = acknowledge(s, key, alert, by=by, at=at, action=action, suppress_h=self.policy.settings.ack_suppress_h)
        rec_id = alert_id(alert, "ack", by, at, action)  # type: ignore[arg-type]
        model = key.partition(":")[2] or None
        return replace(d, model=model, version=s.version or "-", alert_id=rec_id, episode_id=alert, since=since)


def high_risk_by_ward(states: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Patients in care with a model-risk alert raised and not yet cleared, per ward (counts only), over
    partitions of patient states (:class:`vigil.state.PatientState`); a ward of closed records only counts 0."""
    out: dict[str, int] = {}
    for part in states:
        for st in part.values():
            ward = st.ward or "unknown"
            if st.discharged:  # a closed record: its ward still gets a series (0 if nobody else)
                out.setdefault(ward, 0)
                continue
            out[ward] = out.get(ward, 0) + int(st.alerts.model_risk_raised())  # every ward in care appears
    return out
