"""The alerting stage (vigil.alerting): every rule stepped by one stage over a typed per-patient alert state, alert
events returned as values with their ids; acknowledgements; the state's changelog format (a record written before
the stage existed restores and keeps working); its size; and rows scored at discharge counted in the batch's risks."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from vigil.alerting import ACKABLE, AlertStage, AlertState, ModelRisk, RuleState
from vigil.alerts import alert_id
from vigil.config import REPO_ROOT, AlertSettings, load_settings
from vigil.records import AdtEvent, Observation
from vigil.state import PatientState, Snapshot
from vigil.variables import VAR_INDEX
from vigil.worker.batch import InEvent, Processor

H = 3600.0
T0 = 1_767_225_600.0
Z = np.zeros(1, dtype=np.float32)


def snap(row: int, patient: str = "p1", ward: str | None = "W1", unit: str | None = "MICU") -> Snapshot:
    """A scored row (the stage reads its identity, time and context, not its values)."""
    return Snapshot(patient, row, T0 + row * H, Z, Z, Z, Z, ward, "4", unit, T0 + row * H)


def n2(total: int, single: int = 0) -> dict[str, Any]:
    return {"total": total, "parts": {"resp": single, "hr": 0}}


def stage(**alerts: Any) -> AlertStage:
    return AlertStage(AlertSettings.model_validate(alerts))


def events(st: AlertState, stg: AlertStage, risks: list[float], totals: list[int] | None = None,
           models: tuple[str, ...] = ("m",)) -> list[list[tuple[str, str]]]:  # fmt: skip
    """(event, key) per row of a stay scored with ``risks`` (every model the same risk) and NEWS2 ``totals``."""
    totals = totals or [0] * len(risks)
    return [[(d.event, d.key) for d in stg.step(st, snap(t), [ModelRisk(m, "7", r, 0.5) for m in models], n2(tot))]
            for t, (r, tot) in enumerate(zip(risks, totals, strict=True))]  # fmt: skip


# ------------------------------------------------------------------------------ the model-risk rule
def test_model_risk_fires_clears_below_the_clear_level_and_re_arms() -> None:
    stg = stage(model_risk={"raise_at": 0.7, "clear_below": 0.5, "refractory_h": 0, "escalate_by": None})
    got = events(AlertState(), stg, [0.69, 0.72, 0.6, 0.55, 0.71, 0.49, 0.71])
    k = "model_risk:m"
    assert got == [[], [("raised", k)], [], [], [], [("resolved", k)], [("raised", k)]]


def test_model_risk_persistence_refractory_reminder_and_one_escalation_per_episode() -> None:
    stg = stage(model_risk={"raise_at": 0.6, "persistence": 2, "refractory_h": 6, "escalate_by": 0.2})
    st = AlertState()
    got = [[e for e, _ in row] for row in events(st, stg, [0.7, 0.1, 0.7, 0.7, 0.95, 0.99, 0.1, 0.7, 0.7, 0.7])]
    # row 3 raises (2 rows in a row), escalates once at row 4 (>= 0.7 + 0.2); resolved at 6; high again from row 7,
    # 2 rows in a row at row 8, but within 6 h of the alert at row 3: the reminder goes out at row 9
    assert got == [[], [], [], ["raised"], ["escalated"], [], ["resolved"], [], [], ["raised"]]
    assert st["model_risk:m"].active and st["model_risk:m"].episode == "9" and st["model_risk:m"].streak == 3


def test_decisions_are_values_with_deterministic_ids_and_the_raise_is_acknowledgeable() -> None:
    stg = stage(model_risk={"raise_at": 0.5, "refractory_h": 0, "escalate_by": 0.2})
    st = AlertState()
    [raised] = stg.step(st, snap(2), [ModelRisk("m", "7", 0.6, 0.5)], n2(0))
    assert (raised.event, raised.model, raised.version, raised.row, raised.severity) == ("raised", "m", "7", 2, "high")
    assert raised.alert_id == raised.episode_id == alert_id("p1", "model_risk:m", "7", 2)
    [esc] = stg.step(st, snap(3), [ModelRisk("m", "7", 0.85, 0.5)], n2(0))
    assert esc.alert_id == alert_id("p1", "model_risk:m", "7", 3, "escalated") and esc.episode_id == raised.alert_id
    [res] = stg.step(st, snap(4), [ModelRisk("m", "7", 0.1, 0.5)], n2(0))
    assert res.alert_id == alert_id("p1", "model_risk:m", "7", 4, "resolved") and res.episode_id == raised.alert_id
    # a fresh stage on a fresh state gives the same events (a replay, or a restart from the same state)
    again = AlertState()
    assert [stg.step(again, snap(r), [ModelRisk("m", "7", v, 0.5)], n2(0)) for r, v in [(2, 0.6), (3, 0.85)]] == [
        [raised], [esc]]
    s = st["model_risk:m"]
    assert (s.alert_id, s.version, s.ids) == (raised.alert_id, "7", {raised.alert_id: T0 + 2 * H})


def test_each_model_has_its_own_rule_and_the_card_level_applies_without_a_raise_level() -> None:
    stg = stage(model_risk={"refractory_h": 0})  # raise_at None: each model's card level
    st = AlertState()
    got = stg.step(st, snap(0), [ModelRisk("a", "1", 0.45, 0.4), ModelRisk("b", "2", 0.45, 0.5)], n2(0))
    assert [(d.key, d.raise_at, d.version) for d in got] == [("model_risk:a", 0.4, "1")]
    assert list(st) == ["model_risk:a", "model_risk:b"] and not st["model_risk:b"].active


# ------------------------------------------------------------------------------ the NEWS2 rules
def test_news2_emergency_covers_urgent_and_single_parameter_fires_once_per_row() -> None:
    stg = stage(news2_urgent={"enabled": True, "refractory_h": 0}, news2_emergency={"enabled": True, "refractory_h": 0},
                news2_single={"enabled": True, "refractory_h": 0})  # fmt: skip
    st = AlertState()
    rows = [(5, 0), (4, 3), (8, 0), (4, 0), (7, 0)]
    got = [[(d.event, d.kind, d.model, d.version) for d in stg.step(st, snap(t), [ModelRisk("m", "7", 0.0, 0.9),
                                                                                  ModelRisk("x", "1", 0.0, 0.9)],
                                                                    n2(tot, single))]
           for t, (tot, single) in enumerate(rows)]  # fmt: skip
    assert got == [
        [("raised", "news2_urgent", None, "-")],
        [("resolved", "news2_urgent", None, "-"), ("raised", "news2_single", None, "-")],
        [("raised", "news2_emergency", None, "-"), ("resolved", "news2_single", None, "-")],  # urgent: covered
        [("resolved", "news2_emergency", None, "-")],
        [("raised", "news2_emergency", None, "-")],  # 7 is urgent too, but the emergency rule covers it
    ]
    assert stg.news2_covered(7.0) and not stg.news2_covered(6.0)


def test_disabled_rules_and_non_finite_values_change_nothing() -> None:
    st = AlertState()
    stg = stage()  # NEWS2 rules off by default
    assert stg.step(st, snap(0), [ModelRisk("m", "1", float("nan"), 0.5)], n2(9, 3)) == []
    assert st == {}
    on_w9 = stage(overrides={"W9": {"news2_emergency": {"enabled": True}}})
    assert on_w9.step(st, snap(0), [], n2(9)) == [] and st == {}
    assert [d.event for d in on_w9.step(st, snap(0, ward="W9"), [], n2(9))] == ["raised"]


# ------------------------------------------------------------------------------ acknowledgements
def test_ack_is_kept_with_the_alert_silences_new_alerts_and_escalations_still_go_out() -> None:
    stg = stage(model_risk={"raise_at": 0.5, "refractory_h": 0, "escalate_by": 0.3}, ack_suppress_h=3)
    st = AlertState()
    [raised] = stg.step(st, snap(0), [ModelRisk("m", "7", 0.6, 0.5)], n2(0))
    assert stg.ack(st, "nope", by="rn", at=T0 + 0.5 * H, action="acknowledged") is None  # unknown: nothing
    d = stg.ack(st, raised.alert_id, by="rn-7", at=T0 + 0.5 * H, action="acknowledged")
    assert d is not None and (d.event, d.kind, d.model, d.version, d.row) == ("acknowledged", "model_risk", "m", "7", 0)
    assert d.episode == d.episode_id == raised.alert_id and d.since == T0  # raised at row 0: ack latency 0.5 h
    assert d.alert_id == alert_id(raised.alert_id, "ack", "rn-7", T0 + 0.5 * H, "acknowledged")  # type: ignore[arg-type]
    assert d.ack == {"by": "rn-7", "at": T0 + 0.5 * H, "action": "acknowledged"} == st["model_risk:m"].ack
    assert [e.event for e in stg.step(st, snap(1), [ModelRisk("m", "7", 0.95, 0.5)], n2(0))] == ["escalated"]
    got = [[e.event for e in stg.step(st, snap(r), [ModelRisk("m", "7", v, 0.5)], n2(0))]
           for r, v in [(2, 0.1), (3, 0.7), (4, 0.7)]]  # fmt: skip
    assert got == [["resolved"], [], ["raised"]]  # silenced until 0.5 + 3 h


def test_only_the_latest_alerts_of_a_rule_can_be_acknowledged() -> None:
    stg = stage(model_risk={"raise_at": 0.5, "clear_below": 0.4, "refractory_h": 0, "escalate_by": None})
    st = AlertState()
    ids = []
    for r in range(2 * (ACKABLE + 1)):
        ids += [d.alert_id for d in stg.step(st, snap(r), [ModelRisk("m", "7", 0.9 if r % 2 == 0 else 0.1, 0.5)],
                                             n2(0)) if d.event == "raised"]  # fmt: skip
    assert len(ids) == ACKABLE + 1 and list(st["model_risk:m"].ids or {}) == ids[1:]
    assert stg.ack(st, ids[0], by="rn", at=T0 + 30 * H, action="acknowledged") is None  # too old
    assert stg.ack(st, ids[1], by="rn", at=T0 + 30 * H, action="acknowledged") is not None


# ------------------------------------------------------------------------------ the state and its changelog format
def _header(record: bytes) -> dict[str, Any]:
    n = int.from_bytes(record[3:7], "little")
    return orjson.loads(record[7 : 7 + n])  # type: ignore[no-any-return]


def test_a_record_written_before_the_alerting_stage_restores_and_keeps_working() -> None:
    """``tests/data/state/alert_state_v0.json``: a changelog record written by the worker of commit c234244
    (vigil.policy's dict state). It restores into the typed state, writes back the same bytes, and the restored
    state goes on: its alert can be acknowledged (the same ack id the old worker published) and its rules step on."""
    fx = json.loads((REPO_ROOT / "tests" / "data" / "state" / "alert_state_v0.json").read_text())
    record = base64.b64decode(fx["record_b64"])
    st = PatientState.from_bytes(record)
    assert isinstance(st.alerts, AlertState) and all(isinstance(s, RuleState) for s in st.alerts.values())
    assert st.to_bytes() == record  # byte for byte: the format is unchanged (an older worker reads ours)
    assert _header(record)["alerts"] == fx["alert_state"] == st.alerts.to_json()
    mr = st.alerts["model_risk:sepsis-gbm"]
    raised = fx["alerts"][0]
    assert mr.active and mr.alert_id == raised["alert_id"] and mr.version == raised["model"]["version"]
    assert mr.ack == {"by": "rn-7", "at": T0 + 3.5 * H, "action": "acknowledged"}
    # re-delivered acknowledgement (at-least-once): the same record id the old worker published
    stg = stage(**fx["rules"])
    d = stg.ack(st.alerts, raised["alert_id"], by="rn-7", at=T0 + 3.5 * H, action="acknowledged")
    assert d is not None and (d.alert_id, d.episode_id, d.row) == (fx["ack"]["alert_id"], raised["alert_id"], 0)
    # the restored rules step on: the single-parameter alert resolves and its resolution names the old episode
    nxt = stg.step(st.alerts, snap(4, patient=st.patient), [ModelRisk("sepsis-gbm", "1", 0.9, 0.5)], n2(2, 0))
    assert [(x.event, x.kind, x.episode_id) for x in nxt] == [("resolved", "news2_single", fx["alerts"][1]["alert_id"])]


def test_the_oldest_format_of_bare_flags_restores_as_raised_rules() -> None:
    """Before the alert policy, the state was ``{"news2_emergency": true}`` (raised or not): restored as a raised
    rule that resolves (its resolution refers to its own id: the raising alert's is unknown) and never escalates."""
    st = PatientState("pt-1")
    header = _header(st.to_bytes())
    header["alerts"] = {"news2_emergency": True, "model_risk:m": False}
    h = orjson.dumps(header)
    rec = st.to_bytes()
    n = int.from_bytes(rec[3:7], "little")
    old = rec[:3] + len(h).to_bytes(4, "little") + h + rec[7 + n :]
    back = PatientState.from_bytes(old)
    assert back.alerts["news2_emergency"].active and not back.alerts["model_risk:m"].active
    stg = stage(news2_emergency={"enabled": True}, model_risk={"escalate_by": 0.1})
    assert stg.step(back.alerts, snap(1, patient="pt-1"), [ModelRisk("m", "1", 0.2, 0.5)], n2(9)) == []
    [res] = stg.step(back.alerts, snap(2, patient="pt-1"), [], n2(1))
    assert (res.event, res.episode, res.episode_id) == ("resolved", None, res.alert_id)
    with pytest.raises(ValueError, match="object or a boolean"):
        AlertState.from_json({"news2_emergency": 3})


def test_the_typed_state_is_smaller_than_the_dicts_it_replaces() -> None:
    """Per-patient memory (issue 15's 4 KB goal): a rule's state in slots, not a dict of the same keys."""
    stg = stage(model_risk={"raise_at": 0.5, "refractory_h": 0}, news2_emergency={"enabled": True})
    st = AlertState()
    stg.step(st, snap(0), [ModelRisk("m", "1", 0.9, 0.5)], n2(8))
    for s in st.values():
        as_dict = s.to_json()
        assert sys.getsizeof(s) < sys.getsizeof(as_dict) / 2
        assert not hasattr(s, "__dict__")


# ------------------------------------------------------------------------------ inside the Processor
def test_rows_scored_at_discharge_count_in_the_batch_risks() -> None:
    """The rows a discharge closes are scored in the finalising pass; their risks reach ``Outputs.risks`` (the risk
    histogram) one per score record, in the batch itself and in ``finalize_due`` between batches."""
    from vigil.worker.engine import load_scorers

    def run(grace_s: float) -> tuple[list[Any], Processor]:
        s = load_settings(None, state={"discharge_grace_s": grace_s, "admit_grace_s": 60})
        p = Processor(s, load_scorers(s))
        evs = [InEvent(AdtEvent("pt-d", "t", 0, T0, "admit", "W1", "4", "MICU", T0, 70.0, "M", -3.0), "adt", 0, T0)]
        evs += [InEvent(Observation("pt-d", "t", 1 + h, T0 + h * H + 60, VAR_INDEX["HR"], 90.0 + h, "vital"), "vitals",
                        0, T0) for h in range(3)]  # fmt: skip
        evs.append(InEvent(AdtEvent("pt-d", "t", 9, T0 + 5.5 * H, "discharge", None, None, None, None, None, None,
                                    None), "adt", 0, T0))  # fmt: skip
        return [p.process(evs), p.finalize_due(now=T0 + 10**9)], p

    (now, later), p = run(0.0)  # finalised in the batch itself
    names = [sc.name for sc in p.scorers]
    assert names and later.scores == []
    assert len(now.scores) == 5 * len(names)  # rows 0-4 (0-1 closed by the observations, 2-4 by the discharge)
    assert {n: len(r) for n, r in now.risks.items()} == dict.fromkeys(names, 5)
    (now, later), p = run(3600.0)  # finalised after the grace period, between batches
    assert len(now.scores) == 2 * len(names) and len(later.scores) == 3 * len(names)
    assert {n: len(r) for n, r in later.risks.items()} == dict.fromkeys(names, 3)
    risks = [json.loads(v)["risk"] for _, v in later.scores if json.loads(v)["model"]["name"] == names[0]]
    assert [round(float(r), 6) for r in later.risks[names[0]]] == risks
