"""One alert level in force (vigil.levels): the alert policy, the score records' ``threshold`` /
``above_threshold``, the alert records and their messages, ``vigil alerts tail``'s line and ``vigil models
list/show`` all give the same number, whether it comes from the model card, the site setting or a per-unit
override — with the real serving model inside the worker's Processor."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from vigil.alerting import AlertPolicy
from vigil.cli import cli
from vigil.config import REPO_ROOT, load_settings
from vigil.levels import level_in_force
from vigil.records import AdtEvent, Observation
from vigil.registry import Registry
from vigil.state import HOUR
from vigil.subscribers.tail import format_alert
from vigil.variables import VAR_INDEX
from vigil.worker.batch import InEvent, Processor
from vigil.worker.engine import load_scorers

T0 = 1_767_225_600.0
SEPTIC = {
    "HR": [88, 96, 110, 124, 131, 135], "Temp": [37.1, 37.8, 38.6, 39.2, 39.4, 39.6],
    "Resp": [16, 19, 24, 28, 30, 32], "MAP": [80, 74, 68, 62, 58, 56], "O2Sat": [97, 96, 94, 92, 91, 90],
    "SBP": [120, 112, 102, 94, 88, 84], "WBC": [9, 9, 14, 14, 18, 18], "Lactate": [1.9, 1.9, 2.8, 2.8, 4.1, 4.1],
}  # fmt: skip
RULE = {"persistence": 1, "refractory_h": 0.0, "escalate_by": None}


def _events() -> list[InEvent]:
    out = [InEvent(AdtEvent("pt-l", "t", 0, T0, "admit", "W1", "4", "MICU", T0, 70.0, "M", -3.0), "adt", 0, T0)]
    seq = 1
    for var, vals in SEPTIC.items():
        for h, v in enumerate(vals):
            kind = "lab" if VAR_INDEX[var] >= 8 else "vital"
            ev = Observation("pt-l", "t", seq, T0 + h * HOUR + 60, VAR_INDEX[var], v, kind)
            out.append(InEvent(ev, "labs" if kind == "lab" else "vitals", 0, T0))
            seq += 1
    return sorted(out, key=lambda e: e.event.time)


def _run(alerts: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    s = load_settings(None, state={"discharge_grace_s": 0, "admit_grace_s": 60}, alerts=alerts)
    p = Processor(s, load_scorers(s))
    out = p.process(_events())
    out2 = p.finalize_due(now=T0 + 10 * HOUR)
    scores = [json.loads(v) for _, v in [*out.scores, *out2.scores]]
    alerts_out = [json.loads(v) for _, v in [*out.alerts, *out2.alerts]]
    return scores, alerts_out, s


@pytest.fixture(scope="module")
def primary() -> tuple[str, float, list[float]]:
    """The serving model's name, its card level, and its risks on the septic picture (default settings)."""
    scores, _, s = _run({})
    name = load_scorers(s)[0].name
    risks = [r["risk"] for r in scores if r["model"]["name"] == name and not r["partial"]]
    ref = Registry(s.models_dir).get(name)
    return name, ref.alert_level, risks


@pytest.mark.parametrize("where", ["card", "site", "unit override", "ward override over unit"])
def test_every_surface_shows_the_level_in_force(where: str, primary: tuple[str, float, list[float]]) -> None:
    name, card_level, risks = primary
    mid = round(sorted(risks)[len(risks) // 2], 4)  # some rows above, some below
    assert min(risks) < mid <= max(risks)
    alerts: dict[str, Any] = {"model_risk": dict(RULE)}
    expect = card_level
    if where == "site":
        alerts["model_risk"]["raise_at"], expect = mid, mid
    elif where == "unit override":
        alerts["overrides"], expect = {"MICU": {"model_risk": {"raise_at": mid}}}, mid
    elif where == "ward override over unit":
        alerts["overrides"] = {"MICU": {"model_risk": {"raise_at": 0.99}}, "W1": {"model_risk": {"raise_at": mid}}}
        expect = mid
    scores, out, s = _run(alerts)
    assert level_in_force(AlertPolicy(s.alerts), card_level, "W1", "MICU") == expect
    mine = [r for r in scores if r["model"]["name"] == name]
    assert mine and all(r["threshold"] == expect and r["above_threshold"] == (r["risk"] >= expect) for r in mine)
    model_alerts = [a for a in out if a["type"] == "model_risk" and a["model"]["name"] == name]
    raised = [a for a in model_alerts if a["event"] == "raised"]
    first_above = next((r["row"] for r in mine if not r["partial"] and r["risk"] >= expect), None)
    assert [a["row"] for a in raised][:1] == ([first_above] if first_above is not None else [])
    for a in model_alerts:
        assert a["threshold"] == a["raise_at"] == expect
        assert f"level {expect:.3f}" in format_alert(a)
        if a["event"] != "resolved":
            assert f"alert level {expect:.3f}" in a["message"]
    if where != "card":
        assert raised  # the level lies inside the picture's risks: the comparison above is not vacuous
    # the CLI reads the same settings (environment here) and prints the same level
    env = {"VIGIL_ALERTS__MODEL_RISK__RAISE_AT": str(mid)} if where == "site" else {}
    if "override" in where:
        env["VIGIL_ALERTS__OVERRIDES"] = json.dumps(alerts["overrides"])
    listed = json.loads(CliRunner(env=env).invoke(cli, ["models", "list", "--json"]).output)
    row = next(r for r in listed if r["name"] == name and r["serving"])
    scoped = {lv["scope"]: lv["value"] for lv in row["alert_levels"]}
    site_expect = mid if where == "site" else card_level
    assert row["alert_level"] == scoped["site"] == site_expect
    scope = {"unit override": "MICU", "ward override over unit": "W1"}.get(where)
    if scope:
        assert scoped[scope] == expect
    shown = CliRunner(env=env).invoke(cli, ["models", "show", name]).output
    assert f"alert level in force on this site: {site_expect:g}" in shown
    if scope:
        assert f"alert level in force on {scope}: {expect:g}" in shown


def test_the_serving_cards_level_is_its_alert_policy_not_its_operating_threshold() -> None:
    reg = Registry(REPO_ROOT / "models")
    for name, version in reg.serving().items():
        ref = reg.get(f"{name}:{version}")
        policy = ref.card.get("alert_policy") or {}
        assert ref.alert_level == float(policy.get("raise_at", ref.threshold))


def test_the_model_dashboard_draws_the_serving_models_level_in_force() -> None:
    from vigil.config import Settings
    from vigil.levels import levels_for_card

    board = json.loads((REPO_ROOT / "dashboards" / "grafana" / "model.json").read_text())
    panel = next(p for p in board["panels"] if p["title"].startswith("Risk score distribution"))
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    lines = {float(s["value"]) for s in steps if s["value"] is not None}
    reg = Registry(REPO_ROOT / "models")
    alerts = Settings().alerts  # the shipped defaults
    want = {levels_for_card(alerts, ref.card)[0].value for ref in reg.serving_refs()}
    assert lines == want
    for ref in reg.serving_refs():
        assert f"{ref.name} v{ref.version}: {levels_for_card(alerts, ref.card)[0].value:g}" in panel["description"]
