"""The live alert-budget controller (vigil.budget): deterministic synthetic streams in, level moves out; the
policy raises at the moved level; and one real `vigil worker` on the embedded broker with the controller on."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from vigil.alerting import AlertPolicy, AlertStage, AlertState
from vigil.budget import BudgetController, BudgetSettings, _Levels
from vigil.config import AlertSettings, Settings, load_settings
from vigil.kafka_io import produce_records, read_topic
from vigil.metrics import WorkerMetrics
from vigil.physionet import iter_stays
from vigil.privacy import pseudonymise
from vigil.replay import stay_events
from vigil.tools.procs import WorkerProcess

H = 3600.0
ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)


def _ctrl(sink=None, metrics=None, **kw):  # type: ignore[no-untyped-def]
    cfg = {"enabled": True, "target_per_patient_day": 1.0, "min_level": 0.30, "max_level": 0.50, "step": 0.05,
           "min_patient_days": 1.0, "interval_min": 0.0, "window_h": 24.0, **kw}  # fmt: skip
    return BudgetController(BudgetSettings(**cfg), sink if sink is not None else _Levels(), metrics)


def _feed(c: BudgetController, group: str, hours: int, patients: int, alerts_per_day: float, t0: float = 0.0,
          base: float = 0.40) -> list[tuple[str, float, float]]:  # fmt: skip
    """``patients`` patients for ``hours`` event hours; alerts spread evenly at ``alerts_per_day`` per
    patient-day; update() after every event hour. Returns every move."""
    moves = []
    every = 24.0 / alerts_per_day if alerts_per_day > 0 else None
    k = 0
    for h in range(hours):
        for p in range(patients):
            k += 1
            raised = every is not None and k % round(every) == 0
            c.observe_row(group, t0 + h * H, base, patient=f"p{p}", row=h, partial=False, raised=raised)
        moves += c.update()
    return moves


def test_rate_too_high_raises_the_level_step_by_step_up_to_the_bound() -> None:
    sink = _Levels()
    c = _ctrl(sink)
    moves = _feed(c, "W1", hours=24 * 8, patients=2, alerts_per_day=4.0)  # 4 / patient-day vs target 1
    # one patient-day of exposure (12 h x 2 patients) at each level before a move; bound 0.50 reached
    assert moves == [("W1", 0.40, 0.45), ("W1", 0.45, 0.50)]
    assert sink.levels == {"W1": 0.50}
    snap = c.snapshot()["W1"]
    assert snap["level"] == 0.50 and snap["pinned"] is True and snap["rate"] == pytest.approx(4.0)


def test_rate_too_low_lowers_the_level_down_to_the_bound() -> None:
    # no alert in 2 patient-days (the most a 24 h window of 2 patients holds) at a target of 1: P = e^-2 = 0.14,
    # not evidence enough (alpha 0.05) -> no move
    assert _feed(_ctrl(), "ICU-A", hours=24 * 8, patients=2, alerts_per_day=0.0) == []
    sink = _Levels()
    c = _ctrl(sink, window_h=72.0)  # 3 patient-days without an alert: e^-3 = 0.0498 < 0.05 -> down
    moves = _feed(c, "ICU-A", hours=24 * 8, patients=2, alerts_per_day=0.0)
    assert moves == [("ICU-A", 0.40, 0.35), ("ICU-A", 0.35, 0.30)]
    assert sink.levels == {"ICU-A": 0.30} and c.snapshot()["ICU-A"]["pinned"] is True


def test_rate_on_target_holds_the_level() -> None:
    c = _ctrl()
    assert _feed(c, "W1", hours=24 * 4, patients=2, alerts_per_day=1.0) == []
    assert c.level("W1") == 0.40 and c.snapshot()["W1"]["pinned"] is False


def test_no_move_below_the_minimum_exposure() -> None:
    c = _ctrl(min_patient_days=3.0, window_h=48.0)
    # 2 patients x 35 h = 2.9 patient-days (< 3), at a rate 24x the target: no move
    assert _feed(c, "W1", hours=35, patients=2, alerts_per_day=24.0) == []
    assert c.level("W1") == 0.40
    # one more hour: 3.0 patient-days -> it moves
    c.observe_row("W1", 35 * H, 0.4, patient="p0", row=35, partial=False, raised=False)
    c.observe_row("W1", 35 * H, 0.4, patient="p1", row=35, partial=False, raised=False)
    assert c.update() == [("W1", 0.40, 0.45)]


def test_window_forgets_old_exposure_and_groups_are_independent() -> None:
    c = _ctrl(window_h=12.0, min_patient_days=1.0)
    # one patient: 12 h window holds at most 0.5 patient-day -> never enough exposure, never moves
    assert _feed(c, "W1", hours=24 * 5, patients=1, alerts_per_day=24.0) == []
    assert c.snapshot()["W1"]["patient_days"] == pytest.approx(0.5)
    # another ward with enough patients moves; W1 is unaffected
    assert _feed(c, "W2", hours=12, patients=4, alerts_per_day=24.0)[0] == ("W2", 0.40, 0.45)
    assert c.level("W1") == 0.40


def test_start_level_is_clamped_and_interval_mode_counts_each_row_hour_once() -> None:
    c = _ctrl()
    for k in range(100):  # 100 partial scorings of the same row hour = one patient-hour
        c.observe_row("W1", 0.0 + k, 0.9, patient="p0", row=0, partial=True, raised=False)
    assert c.level("W1") == 0.50  # the configured level 0.9 clamped to the site's max
    assert c.snapshot()["W1"]["patient_days"] == pytest.approx(1 / 24)


def test_moves_are_logged_and_exported_without_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    m = WorkerMetrics(CollectorRegistry())
    c = _ctrl(metrics=m)
    with caplog.at_level(logging.INFO, logger="vigil.budget"):
        _feed(c, "W1", hours=24 * 8, patients=2, alerts_per_day=4.0)
    moves = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert moves == [
        "alert budget: ward W1 model_risk level 0.400 -> 0.450 (observed 4.000 alerts per patient-day over 1.0 "
        "patient-days, target 1.000, bounds [0.300, 0.500])",
        "alert budget: ward W1 model_risk level 0.450 -> 0.500 (observed 4.000 alerts per patient-day over 1.0 "
        "patient-days, target 1.000, bounds [0.300, 0.500])",
    ]
    assert sum("pinned at its upper bound 0.500" in r.getMessage() for r in caplog.records) == 1  # once, not per eval
    assert not any(re.search(r"\bp[01]\b", r.getMessage()) for r in caplog.records)
    get = m.registry.get_sample_value
    assert get("vigil_alert_level", {"group": "W1"}) == 0.50
    assert get("vigil_alert_budget_moves_total", {"group": "W1", "direction": "up"}) == 2.0
    assert get("vigil_alert_budget_pinned", {"group": "W1"}) == 1.0
    assert get("vigil_alert_budget_rate", {"group": "W1"}) == pytest.approx(4.0)


def test_the_policy_raises_at_the_level_the_controller_sets() -> None:
    stage, st = AlertStage(AlertSettings(overrides={"W1": {"model_risk": {"raise_at": 0.42}}})), AlertState()
    pol = stage.policy  # the rules the stage steps
    c = _ctrl(pol)
    c.observe_row("W1", 0.0, 0.42, patient="p0", row=0, partial=False, raised=False)
    assert pol.rule("model_risk", "W1").raise_at == 0.42  # starts at the level in force
    pol.set_level("W1", 0.47)
    assert pol.rule("model_risk", "W1").raise_at == 0.47  # the controller's level beats the static override
    assert pol.rule("model_risk", "W2").raise_at is None  # other wards keep theirs
    assert stage.rule(st, "model_risk", "m", 0.45, 0.0, 0, threshold=0.3, ward="W1") == []
    [d] = stage.rule(st, "model_risk", "m", 0.48, H, 1, threshold=0.3, ward="W1")
    assert (d.event, d.raise_at) == ("raised", 0.47)


def test_a_new_primary_model_restarts_every_group_from_its_configured_level() -> None:
    pol = AlertPolicy(AlertSettings())

    def Snap(ward: str, row: int) -> SimpleNamespace:  # noqa: N802 - the fields of vigil.state.Snapshot it reads
        return SimpleNamespace(ward=ward, unit=None, row=row, row_time=row * H, patient="p", partial=False)

    c = _ctrl(pol)
    c.observe_scored([Snap("W1", 0)], set(), pol.rule, 0.40, "m:1")
    pol.set_level("W1", 0.45)  # as a move would
    c.groups["W1"].level = 0.45
    assert pol.rule("model_risk", "W1").raise_at == 0.45
    c.observe_scored([Snap("W1", 1)], set(), pol.rule, 0.35, "m:2")  # a new version, its own card level
    assert c.level("W1") == 0.35 and pol.rule("model_risk", "W1").raise_at == 0.35


def test_settings_off_by_default_and_bounds_required() -> None:
    assert Settings().alerts.budget.enabled is False
    with pytest.raises(ValidationError, match="min_level and max_level"):
        BudgetSettings(enabled=True)
    with pytest.raises(ValidationError, match="min_level 0.6 > max_level 0.4"):
        BudgetSettings(enabled=True, min_level=0.6, max_level=0.4)
    s = load_settings(None, alerts={"budget": {"enabled": True, "min_level": 0.2, "max_level": 0.6,
                                               "group_by": "unit"}})  # fmt: skip
    assert s.alerts.budget.group_by == "unit" and s.alerts.model_risk.refractory_h == 72.0  # defaults kept


# -- a real worker ----------------------------------------------------------------------------------------


@pytest.mark.broker
def test_worker_moves_the_level_and_alerts_carry_it(settings_factory, topics_factory, sample_path: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """A real `vigil worker` with the controller on, a target far below what the model raises (refractory 0 h,
    persistence 1: an alert per crossing) and a low starting level: the level gauge rises, the move is logged,
    and the alerts raised after it carry the moved level as ``raise_at``."""
    s = settings_factory()
    topics_factory(s, 2)
    parts: list[list[tuple[str, bytes, bytes]]] = [[], []]  # 16 sample stays in wards W0 / W1, in two parts
    for i, stay in enumerate(iter_stays(sample_path, limit=16)):
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        anchor = ANCHOR + timedelta(days=5 * (i // 8))  # the second part 5 days later
        for stream, _t, value in stay_events(stay, patient=patient, anchor=anchor, source="test-feed",
                                             ward=f"W{i % 2}", bed=str(i)):  # fmt: skip
            parts[i // 8].append((s.topic(stream), patient.encode(), value))
    second = {k.decode() for _t, k, _v in parts[1]}
    env = {"VIGIL_ALERTS__BUDGET__ENABLED": "true", "VIGIL_ALERTS__BUDGET__MIN_LEVEL": "0.05",
           "VIGIL_ALERTS__BUDGET__MAX_LEVEL": "0.95", "VIGIL_ALERTS__BUDGET__STEP": "0.1",
           "VIGIL_ALERTS__BUDGET__TARGET_PER_PATIENT_DAY": "0.01", "VIGIL_ALERTS__BUDGET__MIN_PATIENT_DAYS": "0.5",
           "VIGIL_ALERTS__BUDGET__INTERVAL_MIN": "0", "VIGIL_ALERTS__BUDGET__WINDOW_H": "1000",
           "VIGIL_ALERTS__MODEL_RISK__RAISE_AT": "0.05", "VIGIL_ALERTS__MODEL_RISK__REFRACTORY_H": "0",
           "VIGIL_ALERTS__MODEL_RISK__CLEAR_BELOW": "0.04"}  # fmt: skip
    log = tmp_path / "worker.log"
    move = re.compile(r"alert budget: ward (W[01]) model_risk level ([0-9.]+) -> ([0-9.]+) \(observed")
    with WorkerProcess(s, log_path=log, extra_env=env) as w:
        w.wait_ready()
        asyncio.run(produce_records(s, parts[0]))
        deadline = time.monotonic() + 90
        while len({m[0] for m in move.findall(log.read_text())}) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # both wards moved after the first part
        first_moves = move.findall(log.read_text())
        assert {m[0] for m in first_moves} == {"W0", "W1"}, log.read_text()[-3000:]
        asyncio.run(produce_records(s, parts[1]))
        alerts = asyncio.run(read_topic(s, s.topic("alerts"), quiet_s=3.0))
        metrics = w.metrics_text()
        assert w.stop() == 0, log.read_text()[-3000:]
    moved = move.findall(log.read_text())
    path = {ward: [float(n) for wd, _o, n in moved if wd == ward] for ward in ("W0", "W1")}
    for _ward, old, new in moved:
        assert float(new) == pytest.approx(float(old) + 0.1)  # up: the rate is far above the target
    for ward in ("W0", "W1"):
        assert [float(o) for wd, o, _n in moved if wd == ward][0] == 0.05  # from the configured level
    levels = {m[1]: float(m[2]) for m in re.finditer(r'^vigil_alert_level\{group="(W[01])"\} ([0-9.e+-]+)$',
                                                      metrics, re.M)}  # fmt: skip
    assert levels == {ward: path[ward][-1] for ward in path}  # the gauge: each ward's last logged level
    ups = re.findall(r'^vigil_alert_budget_moves_total\{direction="up",group="(W[01])"\} ([0-9.]+)$', metrics, re.M)
    assert {w: float(n) for w, n in ups} == {ward: float(len(path[ward])) for ward in path}
    raised = [orjson.loads(a.value) for a in alerts]
    raised = [a for a in raised if a["type"] == "model_risk" and a["event"] == "raised"]
    for a in raised:
        assert a["value"] >= a["raise_at"]
        assert a["raise_at"] in [0.05, *path[a["ward"]]], (a["ward"], a["raise_at"], path)
    # the first part's first alerts at the configured level; the second part's at levels the controller set
    assert min(a["raise_at"] for a in raised if a["patient"] not in second) == 0.05
    part2 = [a["raise_at"] for a in raised if a["patient"] in second]
    assert part2 and min(part2) >= 0.15, part2
