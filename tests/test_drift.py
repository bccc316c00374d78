"""Drift monitoring: PSI against the card's training reference, the sliding window, and drift events
from the worker's Processor on the serving model (schema-valid, no patient data)."""

from __future__ import annotations

import json

import numpy as np
from jsonschema import Draft202012Validator

from vigil.config import REPO_ROOT, load_settings
from vigil.drift import DriftMonitor, psi
from vigil.features import FEATURE_NAMES
from vigil.registry import Registry

REF = Registry(REPO_ROOT / "models").get("sepsis-tcn:1").card["reference"]


def _draw(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Values that reproduce the reference bins of ``name`` (one value per bin, in proportion)."""
    r = REF["features"][name]
    edges = np.asarray(r["edges"])
    reps = np.round(np.asarray(r["fractions"]) * n).astype(int)
    mids = np.concatenate([[edges[0] - 1], (edges[:-1] + edges[1:]) / 2, [edges[-1] + 1]]) if edges.size else [0.0]
    return rng.permutation(np.repeat(mids, reps))


def test_psi_is_zero_on_the_reference_and_large_on_a_shift() -> None:
    exp = np.array([0.25, 0.25, 0.5])
    assert psi(np.array([25, 25, 50]), exp) < 1e-12
    assert psi(np.array([70, 20, 10]), exp) > 0.25
    assert psi(np.array([0, 0, 0]), exp) == 0.0


def test_window_forgets_old_rows_and_events_respect_the_cooldown() -> None:
    rng = np.random.default_rng(0)
    names = list(FEATURE_NAMES)
    hr = names.index("HR_locf")
    mon = DriftMonitor("m", "1", {"features": {"HR_locf": REF["features"]["HR_locf"]}}, names, window_rows=2000,
                       level=0.25, min_rows=500, cooldown_rows=10_000)  # fmt: skip
    def batch(values: np.ndarray) -> list[dict]:  # type: ignore[type-arg]
        x = np.zeros((values.size, len(names)), np.float32)
        x[:, hr] = values
        return mon.update(x, np.zeros(values.size, np.float32))

    assert batch(_draw("HR_locf", 1000, rng)) == [] and mon.psi()["HR_locf"] < 0.05
    events = batch(np.full(1500, 160.0))  # tachycardic population
    assert [e["quantity"] for e in events] == ["HR_locf"] and events[0]["psi"] >= 0.25
    assert batch(np.full(500, 160.0)) == []  # cooldown: no second event yet
    for _ in range(4):
        batch(_draw("HR_locf", 1000, rng))
    assert mon.rows <= 3000 and mon.psi()["HR_locf"] < 0.05  # the shifted rows left the window


def test_processor_publishes_schema_valid_drift_events_for_the_serving_model() -> None:
    from vigil.records import AdtEvent, Observation
    from vigil.state import HOUR
    from vigil.variables import VAR_INDEX
    from vigil.worker.batch import InEvent, Processor
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"discharge_grace_s": 0, "admit_grace_s": 60},
                      drift={"min_rows": 50, "window_rows": 1000, "level": 0.25})  # fmt: skip
    p = Processor(s, load_scorers(s))
    t0 = 1_767_225_600.0
    events = []
    for i in range(20):  # 20 patients, 5 h each, all febrile and tachycardic
        pt = f"pt-drift{i}"
        admit = AdtEvent(pt, "t", 0, t0, "admit", "W1", str(i), "MICU", t0, 60.0, "F", -1.0)
        events.append(InEvent(admit, "adt", 0, t0))
        for h in range(6):
            for j, (var, v) in enumerate((("HR", 150.0), ("Temp", 40.2), ("Resp", 34.0))):
                ev = Observation(pt, "t", 1 + h * 3 + j, t0 + h * HOUR + 60, VAR_INDEX[var], v, "vital")
                events.append(InEvent(ev, "vitals", 0, t0))
    out = p.process(sorted(events, key=lambda e: e.event.time))
    drift = [json.loads(v) for _, v in out.drift]
    assert drift and {d["quantity"] for d in drift} >= {"HR_locf", "Temp_locf"}
    schema = json.loads((REPO_ROOT / "streams" / "schemas" / "model-drift.schema.json").read_text())
    for d in drift:
        Draft202012Validator(schema).validate(d)
        assert d["model"] in Registry(REPO_ROOT / "models").serving() and "pt-" not in json.dumps(d)


def test_train_on_drift_waits_for_the_models_drift_event(settings_factory, topics_factory) -> None:  # type: ignore[no-untyped-def]
    """The trigger of `vigil train --on-drift`: other models' events are skipped and committed, the model's
    event is returned once (a second wait does not see it again)."""
    import asyncio

    from vigil.kafka_io import produce_many
    from vigil.training.trigger import wait_for_drift

    s = settings_factory()
    topics_factory(s, 1)
    other = {"v": 1, "model": "other", "version": "1", "quantity": "score", "psi": 0.4, "level": 0.25, "rows": 9,
             "time": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    ours = {**other, "model": "sepsis-tcn", "quantity": "HR_locf"}
    asyncio.run(produce_many(s, s.topic("model-drift"), [(b"other", json.dumps(other).encode()),
                                                         (b"sepsis-tcn", json.dumps(ours).encode())]))  # fmt: skip
    got = asyncio.run(wait_for_drift(s, model="sepsis-tcn", group=f"{s.group_id}-t", timeout_s=30))
    assert got == ours
    assert asyncio.run(wait_for_drift(s, model="sepsis-tcn", group=f"{s.group_id}-t", timeout_s=3)) is None
