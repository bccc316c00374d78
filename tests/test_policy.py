"""The alert rules (vigil.alerting): hysteresis, persistence, refractory windows, escalation, resolution,
acknowledgements and per-ward overrides — alone, inside the worker's Processor (real ONNX model,
model-based explanations, schema-valid records) and in the policy sweep."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from vigil.alerting import AlertStage, AlertState
from vigil.config import REPO_ROOT, AlertSettings, RuleSettings, load_settings
from vigil.evaluation.sweep import SweepPoint, choose, pareto, sweep_policies
from vigil.records import AckEvent
from vigil.registry import Registry
from vigil.state import HOUR
from vigil.worker.batch import InEvent, Processor

H = 3600.0


def run(policy: AlertStage, values: list[float], kind: str = "model_risk", **kw: Any) -> list[list[str]]:
    state = AlertState()
    return [[d.event for d in policy.rule(state, kind, "m", v, t * H, t, threshold=0.5, **kw)]
            for t, v in enumerate(values)]  # fmt: skip


def rule(**kw: Any) -> AlertStage:
    base = {"persistence": 1, "refractory_h": 0.0, "escalate_by": None}
    return AlertStage(AlertSettings(model_risk=RuleSettings(**{**base, **kw})))


def test_hysteresis_raises_at_the_raise_level_and_clears_only_below_the_clear_level() -> None:
    got = run(rule(raise_at=0.7, clear_below=0.5), [0.69, 0.72, 0.6, 0.55, 0.71, 0.49, 0.71])
    assert got == [[], ["raised"], [], [], [], ["resolved"], ["raised"]]


def test_persistence_needs_k_consecutive_rows() -> None:
    got = run(rule(raise_at=0.6, persistence=3), [0.7, 0.7, 0.1, 0.7, 0.7, 0.7, 0.7])
    assert got == [[], [], [], [], [], ["raised"], []]


def test_refractory_window_blocks_a_new_alert_then_reminds() -> None:
    pol = rule(raise_at=0.6, clear_below=0.5, refractory_h=4)
    got = run(pol, [0.7, 0.4, 0.7, 0.7, 0.7, 0.7, 0.7])  # raised at 0, cleared at 1, high again from 2
    assert got == [["raised"], ["resolved"], [], [], ["raised"], [], []]  # 4 h after the first alert


def test_escalation_once_per_episode_when_the_risk_keeps_rising() -> None:
    got = run(rule(raise_at=0.6, escalate_by=0.2), [0.62, 0.7, 0.83, 0.95, 0.3, 0.62, 0.9])
    assert got == [["raised"], [], ["escalated"], [], ["resolved"], ["raised"], ["escalated"]]


def test_acknowledgement_is_recorded_and_silences_the_type_for_a_while() -> None:
    pol = AlertStage(AlertSettings(model_risk=RuleSettings(persistence=1, refractory_h=0, escalate_by=0.3),
                                   ack_suppress_h=3))  # fmt: skip
    st = AlertState()
    assert [d.event for d in pol.rule(st, "model_risk", "m", 0.7, 0.0, 0, threshold=0.5)] == ["raised"]
    st["model_risk:m"].alert_id = "a1"
    assert pol.ack(st, "nope", by="rn", at=0.5 * H, action="acknowledged") is None  # unknown alert: nothing
    d = pol.ack(st, "a1", by="rn-7", at=0.5 * H, action="acknowledged")
    assert d is not None and d.event == "acknowledged"
    assert d.ack == {"by": "rn-7", "at": 0.5 * H, "action": "acknowledged"}
    events = [[x.event for x in pol.rule(st, "model_risk", "m", v, t * H, t, threshold=0.5)]
              for t, v in [(1, 0.2), (2, 0.7), (3, 0.7), (4, 0.7)]]  # fmt: skip
    assert events == [["resolved"], [], [], ["raised"]]  # silenced until 0.5 + 3 h
    resolved = pol.rule(AlertState({"model_risk:m": replace(st["model_risk:m"], active=True)}), "model_risk", "m",
                        0.1, 9 * H, 9, threshold=0.5)  # fmt: skip
    assert resolved[0].event == "resolved"


def test_escalation_still_goes_out_while_acknowledged() -> None:
    pol = AlertStage(AlertSettings(model_risk=RuleSettings(refractory_h=0, escalate_by=0.2), ack_suppress_h=24))
    st = AlertState()
    pol.rule(st, "model_risk", "m", 0.6, 0.0, 0, threshold=0.5)
    st["model_risk:m"].alert_id = "a1"
    assert pol.ack(st, "a1", by="rn", at=10.0, action="acknowledged") is not None
    assert [d.event for d in pol.rule(st, "model_risk", "m", 0.85, H, 1, threshold=0.5)] == ["escalated"]


def test_ward_and_unit_overrides_and_disabled_rules() -> None:
    pol = AlertStage(AlertSettings(
        news2_emergency=RuleSettings(enabled=False, raise_at=7, clear_below=5),
        overrides={"W9": {"news2_emergency": {"enabled": True}}, "SICU": {"news2_emergency": {"raise_at": 8}}},
    ))  # fmt: skip
    assert run(pol, [7.0], kind="news2_emergency") == [[]]  # off by default
    assert run(pol, [7.0], kind="news2_emergency", ward="W9") == [["raised"]]
    assert run(pol, [7.0, 8.0], kind="news2_emergency", ward="W9", unit="SICU") == [[], ["raised"]]  # ward wins enable,
    # unit sets the level


def test_a_card_threshold_is_used_when_the_rule_has_no_raise_level() -> None:
    assert run(rule(), [0.49, 0.5]) == [[], ["raised"]]  # threshold=0.5 passed as the card's level


# ------------------------------------------------------------------------------ inside the Processor
T0 = 1_767_225_600.0


def _events(values: dict[str, list[float]], patient: str = "pt-z") -> list[InEvent]:
    from vigil.records import AdtEvent, Observation
    from vigil.variables import VAR_INDEX

    out = [InEvent(AdtEvent(patient, "t", 0, T0, "admit", "W1", "4", "MICU", T0, 70.0, "M", -3.0), "adt", 0, T0)]
    seq = 1
    for var, vals in values.items():
        for h, v in enumerate(vals):
            kind = "lab" if VAR_INDEX[var] >= 8 else "vital"
            ev = Observation(patient, "t", seq, T0 + h * HOUR + 60, VAR_INDEX[var], v, kind)
            out.append(InEvent(ev, "labs" if kind == "lab" else "vitals", 0, T0))
            seq += 1
    return sorted(out, key=lambda e: e.event.time)


def _processor(**alerts: Any) -> Processor:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"discharge_grace_s": 0, "admit_grace_s": 60}, alerts=alerts)
    return Processor(s, load_scorers(s))


SEPTIC = {
    "HR": [88, 96, 110, 124, 131, 135], "Temp": [37.1, 37.8, 38.6, 39.2, 39.4, 39.6],
    "Resp": [16, 19, 24, 28, 30, 32], "MAP": [80, 74, 68, 62, 58, 56], "O2Sat": [97, 96, 94, 92, 91, 90],
    "SBP": [120, 112, 102, 94, 88, 84], "WBC": [9, 9, 14, 14, 18, 18], "Lactate": [1.9, 1.9, 2.8, 2.8, 4.1, 4.1],
}  # fmt: skip


def test_processor_alerts_are_explained_deterministic_schema_valid_and_acknowledgeable() -> None:
    rules = {"model_risk": {"raise_at": 0.0, "clear_below": 0.0, "refractory_h": 0.0, "escalate_by": None},
             "ack_suppress_h": 6.0}  # fmt: skip
    outs = [_processor(**rules).process(_events(SEPTIC)) for _ in range(2)]
    alerts = [[json.loads(v) for _, v in o.alerts] for o in outs]
    assert alerts[0] and [a["alert_id"] for a in alerts[0]] == [a["alert_id"] for a in alerts[1]]  # idempotent
    schema = json.loads((REPO_ROOT / "streams" / "schemas" / "alerts.schema.json").read_text())
    validator = Draft202012Validator(schema)
    for a in alerts[0]:
        validator.validate(a)
    raised = alerts[0][0]
    assert raised["event"] == "raised" and raised["type"] == "model_risk" and raised["episode_id"] == raised["alert_id"]
    serving = Registry(REPO_ROOT / "models").serving()
    assert raised["ward"] == "W1" and raised["bed"] == "4" and raised["model"]["name"] in serving
    assert raised["news2"]["total"] >= 0 and "pt-" not in raised["message"]
    # beside the score (a ranking), the calibrated chance of onset within 12 h from the version's calibration
    from vigil.demand.calibration import CALIBRATION_FILE, Calibration

    ref = Registry(REPO_ROOT / "models").get(f"{raised['model']['name']}:{raised['model']['version']}")
    want = float(Calibration.load(ref.path / CALIBRATION_FILE).sepsis[12](np.array([raised["score"]]))[0])
    assert raised["onset_probability"]["horizon_h"] == 12
    assert abs(raised["onset_probability"]["p"] - want) < 1e-4 and 0.0 <= want <= 1.0
    assert "chance of sepsis onset within 12 h" in raised["message"]
    assert all(a["onset_probability"] is None for a in alerts[0] if a["event"] == "resolved")
    # acknowledge it: recorded (an 'acknowledged' record on the alerts topic)
    p = _processor(**rules)
    p.process(_events(SEPTIC))
    ack = InEvent(AckEvent("pt-z", T0 + 6 * HOUR, raised["alert_id"], "rn-7", "acknowledged"), "alert-acks", 0, T0)
    out = p.process([ack])
    recs = [json.loads(v) for _, v in out.alerts]
    assert [r["event"] for r in recs] == ["acknowledged"]
    assert [k for k, _ in out.ack_latency] == ["model_risk"] and out.ack_latency[0][1] > 0  # raise -> ack time
    assert recs[0]["episode_id"] == raised["alert_id"] and recs[0]["ack"]["by"] == "rn-7"
    validator.validate(recs[0])
    again = [json.loads(v) for _, v in p.process([ack]).alerts]
    assert [r["alert_id"] for r in again] == [recs[0]["alert_id"]]  # re-delivered ack: the same record id


def test_septic_picture_alert_carries_the_models_top_factors() -> None:
    """Raised after 5 rows (row 4: the septic picture has developed): the alert names the variables whose
    normalisation lowers this model's risk most, with their values and trends."""
    p = _processor(model_risk={"raise_at": 0.0, "persistence": 5, "refractory_h": 0.0, "escalate_by": None})
    alerts = [json.loads(v) for _, v in p.process(_events(SEPTIC)).alerts]
    raised = [a for a in alerts if a["type"] == "model_risk" and a["event"] == "raised"]
    assert [a["row"] for a in raised] == [4]
    factors = raised[0]["factors"]
    assert factors, raised[0]
    assert [f["contribution"] for f in factors] == sorted((f["contribution"] for f in factors), reverse=True)
    for f in factors:
        assert f["contribution"] > 0.01 and f["unit"] and f"{f['value']:g}" in f["text"]
    assert "Top factors: " + factors[0]["text"] in raised[0]["message"]


# ------------------------------------------------------------------------------ the policy sweep
def test_choose_takes_the_best_early_share_within_budget_and_lead() -> None:
    pts = [SweepPoint(0.6, 1, 0, 0.5, 0.9, 30, 0.1, 0.2), SweepPoint(0.7, 1, 24, 0.19, 0.7, 20, 0.2, 0.2),
           SweepPoint(0.7, 2, 24, 0.15, 0.7, 25, 0.2, 0.2), SweepPoint(0.8, 1, 24, 0.1, 0.75, 4, 0.3, 0.1)]  # fmt: skip
    best = choose(pts, budget=0.2, min_lead_h=6)
    assert best is pts[2]  # same early share as pts[1] at a lower burden; pts[3] has too short a lead
    assert choose(pts, budget=0.05) is None
    assert [p.burden for p in pareto(pts)] == [0.1, 0.5]


def test_sweep_replays_each_rule_through_the_policy_engine() -> None:
    rng = np.random.default_rng(0)
    n_stays, n = 30, 40
    labels = np.zeros(n_stays * n, np.int8)
    for s in range(0, n_stays, 3):  # every third stay septic, label from row 25 (onset 31)
        labels[s * n + 25 : (s + 1) * n] = 1
    probs = rng.uniform(0, 0.6, labels.size)
    probs[labels == 1] = 0.9
    starts = np.zeros(labels.size, bool)
    starts[::n] = True
    pts = sweep_policies(probs, labels, starts, 0.5, grid={"raise_at": (None, 0.8), "persistence": (1, 2),
                                                           "refractory_h": (0.0, 72.0)})  # fmt: skip
    assert len(pts) == 8
    strict = next(p for p in pts if p.raise_at == 0.8 and p.persistence == 2 and p.refractory_h == 72)
    assert strict.early == 1.0 and strict.ppv == 1.0  # only the septic rows reach 0.8
    loose = next(p for p in pts if p.raise_at is None and p.persistence == 1 and p.refractory_h == 0)
    assert loose.burden > strict.burden


@pytest.mark.parametrize("field", ["raise_at", "persistence", "refractory_h", "escalate_by", "severity"])
def test_every_rule_field_is_configurable_from_the_environment(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    value = {"raise_at": "0.7", "persistence": "3", "refractory_h": "12", "escalate_by": "0.1", "severity": "medium"}
    monkeypatch.setenv(f"VIGIL_ALERTS__MODEL_RISK__{field.upper()}", value[field])
    s = load_settings(None)
    assert str(getattr(s.alerts.model_risk, field)) in (value[field], str(float(value[field])) if field != "severity"
                                                         else value[field])  # fmt: skip


def test_a_partial_override_keeps_the_types_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_ALERTS__NEWS2_EMERGENCY__ENABLED", "true")
    rule = load_settings(None).alerts.news2_emergency
    assert rule.enabled and rule.raise_at == 7 and rule.clear_below == 5 and rule.severity == "emergency"


def test_a_validation_sweep_records_the_level_at_the_configured_persistence(tmp_path: Path) -> None:
    """The card carries only the raise level; persistence and refractory window are the configuration's, so the
    level recorded is the sweep's best at those, not its best overall; test-split sweeps record nothing."""
    import shutil

    from vigil.evaluation.report import record_alert_policy

    shutil.copytree(REPO_ROOT / "models" / "sepsis-mlp" / "1", tmp_path / "sepsis-mlp" / "1")
    ref = Registry(tmp_path).get("sepsis-mlp:1")
    before = json.loads((ref.path / "card.json").read_text())
    best = {"raise_at": 0.5, "persistence": 2, "refractory_h": 72.0, "burden": 0.19, "early": 0.77,
            "lead_median_h": 42.0, "ppv": 0.235}  # fmt: skip
    at_config = {**best, "raise_at": 0.6, "persistence": 1, "burden": 0.18, "early": 0.75, "ppv": None}
    result = {"split": "validation", "budget": 0.2, "chosen": best, "chosen_as_configured": at_config}
    policy = AlertSettings()
    assert record_alert_policy(ref, {**result, "split": "test"}, policy) is None
    assert record_alert_policy(ref, {**result, "chosen_as_configured": None}, policy) is None
    assert json.loads((ref.path / "card.json").read_text()) == before

    entry = record_alert_policy(ref, result, policy)
    card = json.loads((ref.path / "card.json").read_text())
    assert card["alert_policy"] == entry and entry["raise_at"] == 0.6
    assert "persistence 1" in entry["rule"] and "refractory 72 h" in entry["rule"] and "+0.25" in entry["rule"]
    assert entry["validation"] == {"alerts_per_patient_day": 0.18, "share_septic_alerted_early": 0.75,
                                   "median_lead_h": 42.0, "ppv_stay": None}  # fmt: skip
    assert {k: v for k, v in card.items() if k != "alert_policy"} == {k: v for k, v in before.items()
                                                                      if k != "alert_policy"}  # fmt: skip
    assert Registry(tmp_path).get("sepsis-mlp:1").alert_level == 0.6


def test_per_unit_levels_keep_each_unit_within_its_own_budget() -> None:
    """Two units with the same patients, one scored higher: one level for both over-alerts the first and
    under-alerts the second; each unit's own level keeps it within the budget on its own stays only."""
    from vigil.evaluation.sweep import per_unit_levels

    rng = np.random.default_rng(0)
    n_stays, n_rows = 200, 48
    labels = np.zeros((n_stays, n_rows), dtype=np.int8)
    septic = rng.random(n_stays) < 0.2
    labels[septic, 30:] = 1
    early_signal = septic[:, None] & (np.arange(n_rows) >= 10)[None, :]  # a day before onset (row 36)
    base = rng.uniform(0.0, 0.7, size=(n_stays, n_rows)) + 0.25 * early_signal
    high = np.arange(n_stays) < n_stays // 2  # the first unit's scores run 0.2 higher
    probs = np.clip(base + 0.2 * high[:, None], 0, 1).reshape(-1)
    starts = np.zeros((n_stays, n_rows), dtype=bool)
    starts[:, 0] = True
    units = {"MICU": high, "SICU": ~high, "unknown": np.zeros(n_stays, dtype=bool)}
    got = per_unit_levels(probs, labels.reshape(-1), starts.reshape(-1), units, threshold=0.4, level=0.6,
                          persistence=1, refractory_h=24.0, escalate_by=None, budget=0.5)  # fmt: skip
    assert set(got) == {"MICU", "SICU"}  # unknown cannot be addressed by an override
    micu, sicu = got["MICU"], got["SICU"]
    assert micu["stays"] == sicu["stays"] == 100 and micu["septic_stays"] + sicu["septic_stays"] == septic.sum()
    for u in (micu, sicu):
        assert u["at_shared_level"]["raise_at"] == 0.6 and u["own"]["burden"] <= 0.5
        assert (u["own"]["persistence"], u["own"]["refractory_h"]) == (1, 24.0)
    assert micu["own"]["raise_at"] > sicu["own"]["raise_at"]
    assert micu["at_shared_level"]["burden"] > sicu["at_shared_level"]["burden"]
