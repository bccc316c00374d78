"""Resource demand: Poisson-binomial, census under out-of-order ADT, calibration, the job (pure and on the broker),
the backtest's scoring rules, and that no patient identifier reaches a record or a metric."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import generate_latest

from vigil.alerts import score_id
from vigil.catalog import schema_for
from vigil.config import DemandResource, Settings, load_settings
from vigil.demand.aggregate import CapacityAlerts, WardSnapshot, forecast
from vigil.demand.backtest import BacktestConfig, pit_coverage, simulate, summarise, ward_schedule
from vigil.demand.calibration import Calibration, isotonic_fit, pav
from vigil.demand.census import Census
from vigil.demand.fitting import ScoredRows, fit_calibration
from vigil.demand.job import DemandJob, iso
from vigil.demand.labels import NEVER, news2_within, onset_within, stay_index
from vigil.demand.poisson_binomial import berry_esseen_bound, distribution, pmf_exact
from vigil.errors import ConfigError
from vigil.kafka_io import produce_records
from vigil.records import AdtEvent, encode_adt
from vigil.registry import ModelRef

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
FORBIDDEN_LABELS = {"patient", "mrn", "visit", "bed", "stay"}


# ------------------------------------------------------------------------------------------ Poisson-binomial
def _brute_force(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.size + 1)
    for outcome in itertools.product((0, 1), repeat=p.size):
        o = np.array(outcome, dtype=bool)
        out[o.sum()] += float(np.prod(np.where(o, p, 1.0 - p)))
    return out


@pytest.mark.parametrize("n", range(13))
def test_exact_pmf_matches_brute_force_enumeration(n: int) -> None:
    rng = np.random.default_rng(n)
    mixed = np.r_[np.zeros(n // 3), np.ones(n // 4), rng.uniform(size=n - n // 3 - n // 4)]  # certain events too
    for p in (rng.uniform(0, 1, n), rng.beta(0.3, 8, n), mixed):
        assert np.max(np.abs(pmf_exact(p) - _brute_force(p))) < 1e-12
        d = distribution(p)
        assert d.method == "exact" and math.isclose(d.mean, p.sum(), abs_tol=1e-12)
        assert np.max(np.abs(d.pmf() - _brute_force(p))) < 1e-12


@pytest.mark.parametrize("n", [300, 500, 1000])
@pytest.mark.parametrize(("a", "b"), [(0.3, 10), (0.5, 20), (0.2, 30), (2, 50), (1, 1)])
def test_normal_approximation_error_bound(n: int, a: float, b: float) -> None:
    """Refined normal approximation vs the exact CDF: max error <= 0.01 (empirical bound, ward-like risks from
    Beta(a, b)), and never above the Berry-Esseen bound (the guaranteed one)."""
    p = np.random.default_rng(n + int(10 * a)).beta(a, b, n)
    approx = distribution(p, exact_max=200)
    assert approx.method == "normal"
    exact = np.cumsum(pmf_exact(p))
    err = float(np.max(np.abs(approx.cdf - exact)))
    assert err <= 0.01, err
    assert err <= berry_esseen_bound(p)
    for level in (0.5, 0.9, 0.95):  # the approximate intervals are at most one count off the exact ones
        lo, hi = approx.interval(level)
        elo, ehi = distribution(p, exact_max=n).interval(level)
        assert abs(lo - elo) <= 1 and abs(hi - ehi) <= 1


def test_intervals_hold_their_level_and_edge_cases() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        d = distribution(rng.beta(0.5, 5, rng.integers(1, 40)))
        for level in (0.5, 0.9, 0.95):
            lo, hi = d.interval(level)
            assert 0 <= lo <= hi <= d.n
            assert d.mass(lo, hi) >= level - 1e-12
            assert d.cdf_at(lo - 1) < (1 - level) / 2 + 1e-12  # lo is the smallest such quantile
    none = distribution(np.zeros(5))
    assert none.interval(0.95) == (0, 0) and none.p_exceed(0) == 0.0 and none.p_exceed(None) is None
    certain = distribution(np.ones(3))
    assert certain.interval(0.5) == (3, 3) and certain.p_exceed(2) == 1.0 and certain.p_exceed(3) == 0.0
    empty = distribution([])
    assert empty.n == 0 and empty.mean == 0.0 and empty.interval(0.9) == (0, 0) and empty.p_exceed(-1) == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        distribution([0.2, 1.2])


def test_randomised_pit_of_a_calibrated_forecast_covers_nominal() -> None:
    rng = np.random.default_rng(11)
    p = rng.beta(0.4, 6, 25)
    d = distribution(p)
    draws = (rng.uniform(size=(4000, p.size)) < p).sum(axis=1)
    pit = np.array([d.pit(int(y)) for y in draws])
    for level in (0.5, 0.9, 0.95):
        assert abs(pit_coverage(pit, level) - level) < 0.025


# ------------------------------------------------------------------------------------------------- census
def _adt(patient: str, kind: str, hours: float, ward: str | None = None, seq: int = 0) -> AdtEvent:
    return AdtEvent(patient, "adt", seq, T0.timestamp() + hours * 3600, kind, ward, None, None, None, None, None, None)


def test_census_under_out_of_order_adt() -> None:
    c = Census()
    # a transfer that arrives before its admit: the patient is in the transfer's ward, the late admit is stale
    assert c.apply(_adt("a", "transfer", 2, "W2", seq=1)) == "applied"
    assert c.apply(_adt("a", "admit", 1, "W1", seq=0)) == "stale"
    assert c.occupancy() == {"W2": 1}
    # a stale transfer after a discharge does not bring the patient back; a duplicate is recognised
    c.apply(_adt("b", "admit", 0, "W1"))
    assert c.apply(_adt("b", "discharge", 5, seq=2)) == "applied"
    assert c.apply(_adt("b", "transfer", 3, "W3", seq=1)) == "stale"
    assert c.apply(_adt("b", "discharge", 5, seq=2)) == "duplicate"
    assert c.occupancy() == {"W2": 1} and not c.is_present("b")
    # a transfer without a ward keeps the ward; a re-admission later is a new presence
    c.apply(_adt("a", "transfer", 3, None, seq=2))
    assert c.ward_of("a") == "W2"
    assert c.apply(_adt("b", "admit", 30, "W1", seq=3)) == "applied" and c.occupancy() == {"W1": 1, "W2": 1}
    # an admit without a ward: present but in no ward's forecast
    c.apply(_adt("c", "admit", 4))
    assert c.unassigned() == 1 and c.by_ward() == {"W1": ["b"], "W2": ["a"]}


def test_census_state_is_bounded() -> None:
    c = Census(closed_keep_s=3600, ttl_s=10 * 3600)
    c.apply(_adt("gone", "admit", 0, "W1"))
    c.apply(_adt("gone", "discharge", 1))
    c.apply(_adt("silent", "admit", 0, "W1"))
    c.apply(_adt("active", "admit", 0, "W1"))
    c.touch("active", T0.timestamp() + 9 * 3600)
    assert c.evict(T0.timestamp() + 11 * 3600) == {"closed": 1, "ttl": 1}
    assert len(c) == 1 and c.occupancy() == {"W1": 1}


# ------------------------------------------------------------------------------------------ labels, calibration
def test_labels_exclude_rows_at_or_after_onset() -> None:
    stay_start = np.array([1] + [0] * 9 + [1] + [0] * 4, dtype=bool)
    label = np.zeros(15, dtype=int)
    label[3:10] = 1  # first label row 3 -> onset row 9
    idx = stay_index(stay_start, label)
    assert idx.onset.tolist() == [9, NEVER]
    at_risk, y = onset_within(idx, 6)
    assert at_risk[:10].tolist() == [True] * 9 + [False] and at_risk[10:].all()
    assert np.flatnonzero(y).tolist() == [3, 4, 5, 6, 7, 8]
    news2 = np.zeros(15, dtype=int)
    news2[[2, 11]] = [7, 8]
    assert np.flatnonzero(news2_within(idx, news2, 2)).tolist() == [0, 1, 10]  # never across stays


def test_isotonic_map_is_monotone_and_reproduces_frequencies() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(size=20_000)
    y = (rng.uniform(size=x.size) < 0.05 + 0.3 * x**2).astype(float)
    kx, ky = isotonic_fit(x, y, min_bin_rows=200)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) >= 0)
    fitted = pav(np.array([0.3, 0.1, 0.2, 0.5]), np.array([1.0, 1.0, 2.0, 1.0]))
    assert np.all(np.diff(fitted) >= 0) and math.isclose((fitted * [1, 1, 2, 1]).sum(), 0.3 + 0.1 + 0.4 + 0.5)
    # a synthetic score with five levels and increasing frequencies: the map gives each level's frequency
    levels, freq = np.array([0.1, 0.3, 0.5, 0.7, 0.9]), np.array([0.01, 0.02, 0.05, 0.1, 0.3])
    xs = np.repeat(levels, 2000)
    ys = np.concatenate([rng.permutation(np.r_[np.ones(int(f * 2000)), np.zeros(2000 - int(f * 2000))]) for f in freq])
    kx, ky = isotonic_fit(xs, ys, min_bin_rows=500)
    assert np.allclose(kx, levels) and np.allclose(np.interp(levels, kx, ky), freq)


def _synthetic_rows(n_stays: int = 400, seed: int = 0) -> ScoredRows:
    """Stays of 20-60 h; a fifth septic; the 'model score' rises over the 8 h before onset."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, n_stays)
    stay_start = np.concatenate([np.r_[True, np.zeros(n - 1, bool)] for n in lengths])
    labels, risk = [], []
    for n in lengths:
        lab, r = np.zeros(n, int), rng.uniform(0.0, 0.3, n)
        if rng.uniform() < 0.2:
            onset = int(rng.integers(10, n + 3))
            lab[max(onset - 6, 0) :] = 1
            near = np.arange(n)
            r = np.where((near < onset) & (near >= onset - 8), rng.uniform(0.5, 1.0, n), r)
        labels.append(lab)
        risk.append(r)
    idx = stay_index(stay_start, np.concatenate(labels))
    news2 = rng.integers(0, 12, stay_start.size)
    units = [("MICU", "SICU", None)[i % 3] for i in range(n_stays)]
    return ScoredRows(np.concatenate(risk), news2, idx, np.array([f"s{i:05d}" for i in range(n_stays)]), units,
                      "synthetic", "validation")  # fmt: skip


def _ref() -> ModelRef:
    return ModelRef("m", "1", Path("."), {"feature_schema": {"hash": "sha256:test"}})


def test_fit_calibration_round_trips_and_matches_base_rates(tmp_path: Path) -> None:
    rows = _synthetic_rows()
    cal = fit_calibration(rows, _ref(), (6, 12), min_bin_rows=100)
    for h in (6, 12):
        at_risk, y = onset_within(rows.idx, h)
        p = cal.probabilities("sepsis_onset", h, risk=rows.risk[at_risk], news2=rows.news2[at_risk])
        assert math.isclose(p.mean(), y[at_risk].mean(), rel_tol=0.05)  # in-sample calibration-in-the-large
        assert np.all(np.diff(cal.sepsis[h](np.linspace(0, 1, 50))) >= 0)
        y2 = news2_within(rows.idx, rows.news2, h)
        p2 = cal.probabilities("news2_emergency", h, risk=rows.risk, news2=rows.news2)
        assert math.isclose(p2.mean(), y2.mean(), rel_tol=1e-9)  # frequencies per total reproduce the rate
    path = cal.save(tmp_path / "cal.json")
    back = Calibration.load(path)
    assert back.horizons == (6, 12) and back.model == "m"
    assert np.allclose(back.sepsis[12](rows.risk), cal.sepsis[12](rows.risk))
    with pytest.raises(ConfigError, match="horizons"):
        back.check([6, 24])
    with pytest.raises(ConfigError, match="vigil demand calibrate"):
        Calibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"v": 1, "format": "vigil-demand-calibration", "model": {}}')
    with pytest.raises(ConfigError, match="bad demand calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_rules_and_unscored_patients() -> None:
    cal = Calibration.synthetic()
    ccr = DemandResource(name="critical_care_review", need="news2_emergency", rule_news2_at=7, capacity=None)
    snap = WardSnapshot("W", risk=np.array([0.2, 0.2, math.nan]), news2=np.array([2, 9, -1]), beds=3)
    f = forecast(snap, ccr, 6, cal)
    pooled = (70 + 80 + 90 + 11 * 100) / 1400  # the rule group's frequency (totals >= 7), fitted
    assert np.allclose(f.probabilities, [0.2, pooled, 0.1]) and f.capacity is None and f.p_exceed is None
    f = forecast(snap, ccr.model_copy(update={"rule_p": 0.9}), 6, cal)
    assert f.probabilities.tolist() == [0.2, 0.9, 0.1]
    with pytest.raises(ValueError, match="rule_p"):
        DemandResource(name="x", need="sepsis_onset", rule_news2_at=7)
    fixed = DemandResource(name="sepsis_bundle", need="sepsis_onset", capacity={"W": 0})
    assert forecast(snap, fixed, 6, cal).capacity == 0


def test_demand_settings_validation_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_DEMAND__BEDS", '{"ICU-MED": 12}')
    monkeypatch.setenv("VIGIL_DEMAND__INTERVAL_MIN", "5")
    s = load_settings(None)
    assert s.demand.beds == {"ICU-MED": 12} and s.demand.interval_min == 5
    assert [r.name for r in s.demand.resources] == ["sepsis_bundle", "critical_care_review"]
    for bad in (
        {"levels": [0.5, 1.0]},
        {"horizons_h": [0]},
        {"beds": {"W": -1}},
        {"resources": [{"name": "a", "need": "sepsis_onset"}, {"name": "a", "need": "news2_emergency"}]},
    ):
        with pytest.raises(ValueError, match="demand"):
            load_settings(None, demand=bad)


# ------------------------------------------------------------------------------------------------ the job
def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _score(patient: str, hours: float, risk: float, news2_total: int, *, model: tuple[str, str] = ("m", "1"),
           partial: bool = False, ward: str | None = "W1") -> dict[str, Any]:  # fmt: skip
    parts = dict.fromkeys(("resp_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness",
                           "temperature"), 0)  # fmt: skip
    row = int(hours)
    return {
        "v": 1, "score_id": score_id(patient, model[0], model[1], row, partial), "patient": patient, "ward": ward,
        "bed": None, "unit": "MICU", "time": _at(row).isoformat(), "row": row, "partial": partial,
        "model": {"name": model[0], "version": model[1]}, "risk": risk, "threshold": 0.5,
        "above_threshold": risk >= 0.5, "news2": {"total": news2_total, "parts": parts, "missing": []},
        "emitted_at": _at(row + 1).isoformat(), "trigger_time": _at(row + 1).isoformat(),
    }  # fmt: skip


PATIENTS = ("pt-7f3a01", "pt-7f3a02", "pt-7f3a03", "pt-7f3a04")


def _adt_rec(patient: str, **kw: Any) -> tuple[str, bytes, bytes]:
    return "adt", patient.encode(), encode_adt(patient=patient, source="adt", **kw)


def _late() -> list[tuple[str, bytes, bytes]]:
    """ADT events that arrive after the clock has passed them: pt-4's admit (its transfer came first) and a
    transfer of pt-2 from before its discharge. Both are stale: the census keeps the newer event."""
    p2, p4 = PATIENTS[1], PATIENTS[3]
    return [_adt_rec(p4, seq=0, time=_at(0.4), kind="admit", ward="W2"),
            _adt_rec(p2, seq=2, time=_at(2.2), kind="transfer", ward="W2")]  # fmt: skip


def _inputs() -> list[tuple[str, bytes, bytes]]:
    """Four patients over ~3 h (hourly forecasts at 01:00, 02:00, 03:00): W1 (2 beds) gets three patients, W2
    one; pt-4's transfer to W1 arrives without its admit (that comes late, :func:`_late`); pt-2 is discharged
    at 02:30; scores of another model version are ignored."""
    p1, p2, p3, p4 = PATIENTS
    recs = [
        _adt_rec(p1, seq=0, time=_at(0.1), kind="admit", ward="W1"),
        _adt_rec(p2, seq=0, time=_at(0.2), kind="admit", ward="W1"),
        _adt_rec(p3, seq=0, time=_at(0.3), kind="admit", ward="W2"),
        _adt_rec(p4, seq=1, time=_at(1.5), kind="transfer", ward="W1"),
        _adt_rec(p2, seq=1, time=_at(2.5), kind="discharge"),
    ]
    scores = [
        _score(p1, 0, 0.9, 8),
        _score(p2, 0, 0.3, 2),
        _score(p3, 0, 0.6, 5),
        _score(p4, 0, 0.4, 7),
        _score(p1, 1, 0.95, 9),
        _score(p2, 1, 0.2, 1),
        _score(p3, 1, 0.7, 6),
        _score(p4, 1, 0.5, 4),
        _score(p1, 1, 0.99, 12, model=("m", "2")),  # a version without a calibration: ignored
        _score(p3, 2, 0.1, 0, partial=True),
        _score(p1, 3, 0.5, 3),  # row end 04:00: passes the 03:00 boundary
    ]
    recs += [("scores", s["patient"].encode(), orjson.dumps(s)) for s in scores]
    return recs


def _settings(**over: Any) -> Settings:
    demand = {"interval_min": 60, "horizons_h": [6, 12], "beds": {"W1": 2, "W2": 4, "W9": 3},
              "capacity_alert_level": 0.3}  # fmt: skip
    demand.update(over)
    return load_settings(None, demand=demand)


def _expected_at(cal: Calibration, s: Settings) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The 03:00 forecasts computed directly from the pure functions (state by hand)."""
    snaps = {
        # pt-1 (latest m:1 row 1; NEWS2 8 then 9), pt-4 (7 then 4: the recent maximum is 7)
        "W1": WardSnapshot("W1", np.array([0.95, 0.5]), np.array([9, 4]), 2, news2_max=np.array([9, 7])),
        # pt-3: partial row 2 (NEWS2 0) replaces row 1; completed rows 5 and 6
        "W2": WardSnapshot("W2", np.array([0.1]), np.array([0]), 4, news2_max=np.array([6])),
        "W9": WardSnapshot("W9", np.array([]), np.array([], dtype=int), 3, news2_max=np.array([], dtype=int)),
    }
    out = {}
    for w, snap in snaps.items():
        for res in s.demand.resources:
            for h in s.demand.horizons_h:
                f = forecast(snap, res, h, cal, levels=s.demand.levels, exact_max=s.demand.exact_max)
                out[w, res.name, h] = {"expected": f.expected, "intervals": f.intervals, "p": f.p_exceed,
                                       "capacity": f.capacity}  # fmt: skip
    return out


def _check_round(records: list[dict[str, Any]], cal: Calibration, s: Settings) -> None:
    want = _expected_at(cal, s)
    got = {(r["ward"], r["resource"], r["horizon_h"]): r for r in records if r["kind"] == "forecast"}
    assert set(got) == set(want)
    for key, w in want.items():
        r = got[key]
        assert math.isclose(r["expected"], w["expected"], abs_tol=1e-6)
        assert r["intervals"] == {f"{lv:g}": list(iv) for lv, iv in w["intervals"].items()}
        assert r["capacity"] == w["capacity"]
        assert (r["p_exceed_capacity"] is None) == (w["p"] is None)
        if w["p"] is not None:
            assert math.isclose(r["p_exceed_capacity"], w["p"], abs_tol=1e-6)
    assert got["W1", "sepsis_bundle", 6]["occupied"] == 2 and got["W2", "sepsis_bundle", 6]["occupied"] == 1


def _no_patients(blob: str) -> None:
    for p in PATIENTS:
        assert p not in blob


def test_job_logic_event_time_rounds_alerts_and_metrics() -> None:
    cal, s = Calibration.synthetic(horizons=(6, 12)), _settings()
    job = DemandJob(s, cal, emit_history=True)
    out = job.process(_inputs())
    assert job.process(_late()) == []  # applied at once (behind the clock) and ignored by the census
    late = sum(job.metrics.registry.get_sample_value("vigil_demand_late_events_total", {"topic": t}) or 0
               for t in ("adt", "scores", "alerts", "alert-acks"))  # fmt: skip
    assert late == len(_late())  # counted (and logged at the next round), never silent
    times = sorted({r["time"] for _, r in out})
    assert times == [iso(_at(h).timestamp()) for h in (1, 2, 3)]
    last = [r for _, r in out if r["time"] == times[-1]]
    _check_round(last, cal, s)
    assert all(k == r["ward"].encode() for k, r in out)
    alerts = [r for _, r in out if r["kind"] == "capacity_alert"]
    assert alerts and all(r["event"] in ("raised", "resolved") for r in alerts)
    # W1 has 2 beds and 2 patients: no free bed, so any sepsis demand exceeds it
    assert any(r["ward"] == "W1" and r["resource"] == "sepsis_bundle" and r["event"] == "raised" for r in alerts)
    validator = Draft202012Validator(schema_for("resource-demand", REPO / "streams"))
    for _, r in out:
        assert not list(validator.iter_errors(r)), r
    _no_patients(json.dumps([r for _, r in out]))
    text = generate_latest(job.metrics.registry).decode()
    _no_patients(text)
    assert 'vigil_demand_expected{horizon_h="12",resource="sepsis_bundle",ward="W1"}' in text
    assert 'vigil_demand_ward_free_beds{ward="W1"} 0.0' in text
    assert 'vigil_demand_input_events_total{outcome="uncalibrated_version",topic="scores"} 1.0' in text
    assert 'vigil_demand_input_events_total{outcome="stale",topic="adt"} 2.0' in text
    for fam in job.metrics.registry.collect():
        for sample in fam.samples:
            assert not set(sample.labels) & FORBIDDEN_LABELS, sample


def test_job_catch_up_is_silent_then_emits_the_latest_boundary() -> None:
    cal, s = Calibration.synthetic(horizons=(6, 12)), _settings()
    job = DemandJob(s, cal)  # silent until the catch-up ends
    assert job.process(_inputs()) == []
    out = job.finish_catch_up()
    assert {r["time"] for _, r in out} == {iso(_at(3).timestamp())}
    _check_round([r for _, r in out], cal, s)
    assert job.process([("scores", b"x", b"{not json")]) == []
    assert (
        job.metrics.registry.get_sample_value(
            "vigil_demand_input_events_total", {"topic": "scores", "outcome": "invalid"}
        )
        == 1.0
    )


def test_job_waits_for_partitions_that_are_behind() -> None:
    """A partition read ahead of another cannot close a boundary: the watermark is the lowest newest-time of the
    partitions that still have unread records."""
    cal, s = Calibration.synthetic(horizons=(6, 12)), _settings()
    job = DemandJob(s, cal, emit_history=True)
    ahead = [(*r, "a") for r in _inputs() if r[0] == "scores"]
    assert job.process(ahead, behind={"b"}) == []  # partition b (the ADT) not read yet: nothing is applied
    out = job.process([(*r, "b") for r in _inputs() if r[0] == "adt"], behind=())
    last = [r for _, r in out if r["time"] == iso(_at(3).timestamp())]
    _check_round(last, cal, s)


def test_capacity_alert_hysteresis_and_unknown_capacity() -> None:
    ca = CapacityAlerts(0.5, 0.5)
    key = ("W", "r", 6)
    assert [ca.update(key, p) for p in (0.49, 0.5, 0.3, 0.24, 0.6)] == [None, "raised", None, "resolved", "raised"]
    assert ca.update(key, None) == "resolved" and ca.update(key, None) is None


def test_an_active_capacity_alert_of_a_ward_that_empties_is_resolved() -> None:
    """W5 has no beds configured, only a review capacity of 0: its one patient (NEWS2 9) raises the alert; after
    the discharge the ward is no longer forecast, and the alert is resolved (``ward_empty``), not dropped."""
    review = {"name": "critical_care_review", "need": "news2_emergency", "rule_news2_at": 7, "rule_p": 0.9,
              "capacity": {"W5": 0}}  # fmt: skip
    cal, s = Calibration.synthetic(horizons=(6,)), _settings(horizons_h=[6], beds={"W2": 4}, resources=[review])
    job = DemandJob(s, cal, emit_history=True)
    p1, p3 = PATIENTS[0], PATIENTS[2]
    recs = [_adt_rec(p1, seq=0, time=_at(0.1), kind="admit", ward="W5"),
            _adt_rec(p3, seq=0, time=_at(0.2), kind="admit", ward="W2"),
            _adt_rec(p1, seq=1, time=_at(1.5), kind="discharge")]  # fmt: skip
    scores = [_score(p1, 0, 0.9, 9, ward="W5"), *(_score(p3, h, 0.2, 1, ward="W2") for h in (0, 1, 2, 3))]
    recs += [("scores", r["patient"].encode(), orjson.dumps(r)) for r in scores]
    out = [r for _, r in job.process(recs)]

    w5 = [r for r in out if r["kind"] == "capacity_alert" and r["ward"] == "W5"]
    assert [(r["event"], r["reason"]) for r in w5] == [("raised", "at_level"), ("resolved", "ward_empty")]
    resolved = w5[1]
    assert resolved["time"] == iso(_at(2).timestamp()) and resolved["expected"] == 0.0
    assert "forecast_id" not in resolved and resolved["alert_id"] != w5[0]["alert_id"]
    assert [r["time"] for r in out if r["kind"] == "forecast" and r["ward"] == "W5"] == [iso(_at(1).timestamp())]
    assert job.alerts.active == set()
    validator = Draft202012Validator(schema_for("resource-demand", REPO / "streams"))
    for r in out:
        assert not list(validator.iter_errors(r)), r
    text = generate_latest(job.metrics.registry).decode()
    assert 'vigil_demand_capacity_alerts_total{horizon_h="6",resource="critical_care_review",ward="W5"} 1.0' in text
    assert 'vigil_demand_capacity_alert_active{horizon_h="6",resource="critical_care_review",ward="W5"}' not in text
    _no_patients(json.dumps(out))


# ------------------------------------------------------------------------------------------- on the broker


@pytest.mark.broker
def test_end_to_end_on_the_broker(settings_factory: Callable[..., Settings], topics_factory: Callable[..., Any],
                                  run_demand_job: Callable[..., Any]) -> None:  # fmt: skip
    cal = Calibration.synthetic(horizons=(6, 12))
    base = _settings()
    s = settings_factory(demand=base.demand.model_dump())
    topics_factory(s, partitions=2)
    inputs = _inputs()
    asyncio.run(produce_records(s, [(s.topic(t), k, v) for t, k, v in inputs + _late()]))
    last = iso(_at(3).timestamp())
    n_round = 3 * len(s.demand.resources) * len(s.demand.horizons_h)

    def complete(rs: list[dict[str, Any]]) -> bool:
        return sum(r["kind"] == "forecast" and r["time"] == last for r in rs) >= n_round

    records = run_demand_job(s, cal, complete)
    _check_round([r for r in records if r["time"] == last], cal, s)
    validator = Draft202012Validator(schema_for("resource-demand", REPO / "streams"))
    assert all(not list(validator.iter_errors(r)) for r in records)
    assert any(r["kind"] == "capacity_alert" for r in records)
    _no_patients(json.dumps(records))
    ids = [r["forecast_id"] for r in records if r["kind"] == "forecast"]
    assert len(ids) == len(set(ids))


@pytest.mark.broker
def test_demand_run_command_serves_gauges(settings_factory: Callable[..., Settings],
                                          topics_factory: Callable[..., Any], tmp_path: Path) -> None:  # fmt: skip
    """`vigil demand run` as a process: forecasts on the topic and Prometheus gauges by ward (no patients)."""
    cal_path = Calibration.synthetic(horizons=(6, 12), model="sepsis-tcn", version="1").save(tmp_path / "cal.json")
    s = settings_factory()
    topics_factory(s, partitions=1)
    asyncio.run(produce_records(s, [(s.topic(t), k, v) for t, k, v in _inputs()]))
    env = {**os.environ, "VIGIL_DEMAND__INTERVAL_MIN": "60", "VIGIL_DEMAND__HORIZONS_H": "[6, 12]",
           "VIGIL_DEMAND__BEDS": '{"W1": 2}'}  # fmt: skip
    cmd = [sys.executable, "-m", "vigil", "--bootstrap", s.kafka.bootstrap_servers or "", "--topic-prefix",
           s.topic_prefix, "demand", "run", "--model", "sepsis-tcn:1", "--calibration", str(cal_path),
           "--metrics-port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            m = re.search(r"127\.0\.0\.1:(\d+)/metrics", line)
            port = int(m.group(1)) if m else None
        assert port, "no metrics address printed"
        text = ""
        while time.monotonic() < deadline and 'resource="sepsis_bundle",ward="W1"' not in text:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
            time.sleep(0.2)
        assert 'vigil_demand_expected{horizon_h="6",resource="sepsis_bundle",ward="W1"}' in text
        assert "vigil_demand_up 1.0" in text
        _no_patients(text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0


# --------------------------------------------------------------------------------------------------- backtest
def test_backtest_schedule_simulation_and_scoring() -> None:
    rows = _synthetic_rows(n_stays=300, seed=2)
    cal = fit_calibration(rows, _ref(), (6, 12), min_bin_rows=100)
    cfg = BacktestConfig(concurrency=8, every_h=6, warmup_h=48, baseline_windows=2, horizons=(6, 12))
    sched = ward_schedule(rows, cfg.concurrency)
    assert set(sched) == {"ICU-MED", "ICU-SURG", "ICU-GEN"}
    for stays, admit in sched.values():
        assert np.all(np.diff(admit) >= 0) and len(set(stays.tolist())) == stays.size
    resources = load_settings(None).demand.resources
    cases = simulate(rows, cal, resources, cfg)
    metrics, scored = summarise(cases, cfg)
    assert scored and all(c.t_h >= cfg.warmup_h and c.baseline is not None for c in scored)
    present = np.mean([c.patients for c in scored if c.resource == "critical_care_review"])
    assert 4 <= present <= 12  # about the target concurrency
    for res in ("sepsis_bundle", "critical_care_review"):
        block = metrics[res]["12"]
        assert block["forecasts"] > 10 and block["mae_model"] >= 0
        assert set(block["coverage"]) == {"0.5", "0.9", "0.95"}
        for c in block["coverage"].values():
            assert c["forecast_mass"] >= c["nominal"] - 1e-9
    with pytest.raises(ConfigError, match="multiples"):
        simulate(rows, cal, resources, BacktestConfig(horizons=(6, 12), every_h=5))


def test_demand_cli_lists_its_commands() -> None:
    from click.testing import CliRunner

    from vigil.cli import cli

    out = CliRunner().invoke(cli, ["demand", "--help"]).output
    for cmd in ("run", "calibrate", "backtest"):
        assert cmd in out
