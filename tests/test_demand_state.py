"""Demand: what the forecasts know beyond the latest score. The recent-NEWS2 history tables (offline and live
agree on the window), sepsis alerts acknowledged as treated leaving the risk set, scores of a newly promoted
version counted through their own calibration, and the backtest's admission processes and census-adjusted
baseline."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from vigil.alerts import score_id
from vigil.catalog import schema_for
from vigil.config import DemandResource, Settings, load_settings
from vigil.demand.aggregate import WardSnapshot, forecast
from vigil.demand.backtest import BacktestConfig, census_baseline, simulate, summarise, ward_schedule
from vigil.demand.calibration import Calibration
from vigil.demand.fitting import ScoredRows, fit_calibration
from vigil.demand.job import DemandJob, iso
from vigil.demand.labels import news2_within, recent_max, stay_index
from vigil.demand.news2_model import FEATURES, History, history_features
from vigil.demand.poisson_binomial import distribution
from vigil.demand.state import DemandState, decode_score
from vigil.errors import ConfigError
from vigil.kafka_io import produce_records
from vigil.records import encode_adt
from vigil.registry import ModelRef

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SEPSIS = DemandResource(name="sepsis_bundle", need="sepsis_onset", capacity="free_beds")
REF = ModelRef("m", "1", Path("."), {"feature_schema": {"hash": "sha256:test"}})
REVIEW = DemandResource(name="critical_care_review", need="news2_emergency", rule_news2_at=7, capacity=None)


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _score(patient: str, row: int, risk: float, news2: int, *, version: str = "1", partial: bool = False) -> bytes:
    return orjson.dumps({
        "v": 1, "score_id": score_id(patient, "m", version, row, partial), "patient": patient, "ward": "W1",
        "time": _at(row).isoformat(), "row": row, "partial": partial, "model": {"name": "m", "version": version},
        "risk": risk, "news2": {"total": news2},
    })  # fmt: skip


def _adt(patient: str, hours: float, kind: str, seq: int = 0) -> tuple[str, bytes, bytes]:
    ward = "W1" if kind != "discharge" else None
    return "adt", patient.encode(), encode_adt(patient=patient, source="adt", seq=seq, time=_at(hours), kind=kind,
                                               ward=ward)  # fmt: skip


def _alert(patient: str, hours: float, alert_id: str, kind: str = "model_risk") -> tuple[str, bytes, bytes]:
    return "alerts", patient.encode(), orjson.dumps({"patient": patient, "time": _at(hours).isoformat(),
                                                     "alert_id": alert_id, "type": kind})  # fmt: skip


def _ack(patient: str, hours: float, alert_id: str, action: str = "treated") -> tuple[str, bytes, bytes]:
    return "alert-acks", patient.encode(), orjson.dumps({"alert_id": alert_id, "patient": patient, "by": "rn",
                                                         "at": _at(hours).isoformat(), "action": action})  # fmt: skip


def _settings() -> Settings:
    return load_settings(None, demand={"interval_min": 60, "horizons_h": [6, 12], "beds": {"W1": 4}})


def _last_round(out: list[tuple[bytes, dict[str, Any]]]) -> dict[tuple[str, int], dict[str, Any]]:
    last = max(r["time"] for _, r in out if r["kind"] == "forecast")
    return {(r["resource"], r["horizon_h"]): r for _, r in out if r["kind"] == "forecast" and r["time"] == last}


# ------------------------------------------------------------------------------------------ NEWS2 history
def test_history_table_sharpens_and_falls_back() -> None:
    cal = Calibration.synthetic(horizons=(12,))
    n2 = np.array([3, 3, 3, 8])
    flat = cal.probabilities("news2_emergency", 12, risk=np.full(4, 0.1), news2=n2)
    hist = cal.probabilities("news2_emergency", 12, risk=np.full(4, 0.1), news2=n2, news2_max=np.array([3, 10, -1, 9]),
                             rule_at=7)  # fmt: skip
    assert hist[1] > hist[0] and math.isclose(hist[0], flat[0])  # recent 10 raises it; the same 3 all day does not
    assert math.isclose(hist[2], flat[2])  # unknown history: the one-dimensional table
    assert math.isclose(hist[3], cal.news2[12].rates(7)[8])  # the rule group keeps the rule's probability
    # a file without history tables (written before them) still loads and ignores news2_max
    doc = cal.to_json()
    del doc["news2_history"]
    old = Calibration.from_json(doc)
    assert old.history_window_h is None and not old.news2_history
    assert np.allclose(old.probabilities("news2_emergency", 12, risk=np.full(4, 0.1), news2=n2,
                                         news2_max=np.array([3, 10, -1, 9])), flat)  # fmt: skip
    doc = cal.to_json()
    doc["news2_history"]["12"]["rows"] = [[1]]
    with pytest.raises(ConfigError, match="news2_history"):
        Calibration.from_json(doc)


def _rows(n_stays: int = 300, seed: int = 1) -> ScoredRows:
    """Stays whose NEWS2 runs in episodes (a high spell lasts hours): history is informative."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(24, 72, n_stays)
    news2 = []
    for n in lengths:
        level = np.where(rng.uniform(size=n) < 0.08, 1, 0).cumsum() % 2  # switches between calm and unwell spells
        news2.append(np.clip(np.where(level == 1, rng.integers(5, 12, n), rng.integers(0, 6, n)), 0, 20))
    stay_start = np.concatenate([np.r_[True, np.zeros(n - 1, bool)] for n in lengths])
    idx = stay_index(stay_start, np.zeros(stay_start.size, dtype=int))
    risk = rng.uniform(0, 0.5, stay_start.size)
    units = [("MICU", "SICU", None)[i % 3] for i in range(n_stays)]
    return ScoredRows(risk, np.concatenate(news2).astype(np.int64), idx,
                      np.array([f"s{i:05d}" for i in range(n_stays)]), units, "synthetic", "validation")  # fmt: skip


def test_fitted_history_tables_reproduce_the_rate_and_beat_the_flat_table() -> None:
    rows = _rows()
    cal = fit_calibration(rows, REF, (6, 12), min_bin_rows=100)
    assert cal.history_window_h == 12 and set(cal.news2_history) == {6, 12}
    mx = recent_max(rows.idx, rows.news2, 12)
    for h in (6, 12):
        y = news2_within(rows.idx, rows.news2, h).astype(float)
        flat = cal.probabilities("news2_emergency", h, risk=rows.risk, news2=rows.news2)
        hist = cal.probabilities("news2_emergency", h, risk=rows.risk, news2=rows.news2, news2_max=mx)
        assert abs(hist.mean() - y.mean()) < 0.01  # shrinkage keeps calibration-in-the-large
        brier_flat, brier_hist = np.mean((flat - y) ** 2), np.mean((hist - y) ** 2)
        assert brier_hist < brier_flat  # sharper on episodic data
    back = Calibration.from_json(json.loads(json.dumps(cal.to_json())))
    assert np.allclose(back.news2_history[12].rows, cal.news2_history[12].rows)


def test_fitted_news2_model_is_sharper_still_calibrated_and_takes_precedence() -> None:
    rows = _rows()
    cal = fit_calibration(rows, REF, (6, 12), min_bin_rows=100)
    assert set(cal.news2_model) == {6, 12}
    feats = history_features(rows.news2, rows.idx.row, rows.idx.first[rows.idx.stay])
    mx = recent_max(rows.idx, rows.news2, 12)
    y = news2_within(rows.idx, rows.news2, 12).astype(float)
    table = replace(cal, news2_model={}).probabilities("news2_emergency", 12, risk=rows.risk, news2=rows.news2,
                                                       news2_max=mx)  # fmt: skip
    model = cal.probabilities("news2_emergency", 12, risk=rows.risk, news2=rows.news2, news2_max=mx,
                              news2_features=feats)  # fmt: skip
    assert abs(model.mean() - y.mean()) < 0.005  # in-sample calibration in the large
    assert np.mean((model - y) ** 2) < np.mean((table - y) ** 2)
    ruled = cal.probabilities("news2_emergency", 12, risk=rows.risk, news2=rows.news2, news2_features=feats,
                              rule_at=7)  # fmt: skip
    assert np.allclose(ruled[rows.news2 >= 7], cal.news2[12].rates(7)[7])  # the rule group keeps its probability
    unknown = np.full_like(feats[:3], np.nan)
    assert np.allclose(cal.probabilities("news2_emergency", 12, risk=rows.risk[:3], news2=rows.news2[:3],
                                         news2_features=unknown),
                       replace(cal, news2_model={}, news2_history={}).probabilities(
                           "news2_emergency", 12, risk=rows.risk[:3], news2=rows.news2[:3]))  # fmt: skip
    doc = json.loads(json.dumps(cal.to_json()))
    assert np.allclose(Calibration.from_json(doc).news2_model[12].weights, cal.news2_model[12].weights)
    doc["news2_model"]["12"]["features"] = list(FEATURES[:-1]) + ["something_else"]
    with pytest.raises(ConfigError, match="other features"):
        Calibration.from_json(doc)
    h = History()  # the live window never holds more than a day
    for row in range(60):
        h.add(row * 3600.0, row, 3)
    assert len(h._rows) <= 24  # noqa: SLF001


def test_live_window_matches_the_offline_window() -> None:
    """The job's recent maximum and NEWS2-course features are the offline ``recent_max`` and ``history_features``
    of the same rows (partial rows and late rows included, over more than the 24 h window), so the live
    probabilities are the ones the backtest measured."""
    totals = [2, 9, 4, 3, 1, 0, 5, 2, 3, 1, 1, 2, 0, 1, 6, 1, 8, 8, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4, 1]
    window = 12
    st = DemandState(("m", "1"), history_window_h=window, news2_features=True)
    idx = stay_index(np.r_[True, np.zeros(len(totals) - 1, bool)], np.zeros(len(totals), dtype=int))
    offline = recent_max(idx, np.array(totals), window)
    offline_features = history_features(np.array(totals), idx.row)  # what the backtest and the fit use
    for row, total in enumerate(totals):
        st.on_score(decode_score(_score("p", row, 0.1, total, partial=True)))  # type: ignore[arg-type]
        live = st.news2_features("p")  # the partial row: the completed rows before it + this total
        assert live is not None and np.allclose(live, offline_features[row]), row
        st.on_score(decode_score(_score("p", row, 0.1, total)))  # type: ignore[arg-type]
        assert st.recent_news2_max("p") == offline[row], row
        assert np.allclose(st.news2_features("p"), offline_features[row]), row  # type: ignore[arg-type]
    st.on_score(decode_score(_score("p", 3, 0.1, 20)))  # type: ignore[arg-type]  # a late row out of the window
    assert st.recent_news2_max("p") == offline[-1]
    assert np.allclose(st.news2_features("p"), offline_features[-1])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ treated, versions
def test_treated_sepsis_alert_leaves_the_risk_set_until_readmission() -> None:
    s, cal = _settings(), Calibration.synthetic(horizons=(6, 12))
    job = DemandJob(s, cal, emit_history=True)
    recs = [_adt("pt-a", 0.1, "admit"), _adt("pt-b", 0.2, "admit"),
            ("scores", b"pt-a", _score("pt-a", 0, 0.8, 3)), ("scores", b"pt-b", _score("pt-b", 0, 0.6, 2)),
            _ack("pt-a", 1.1, "al-1"),  # the ack arrives before its alert: held until the alert is seen
            _alert("pt-a", 1.2, "al-1"),
            _alert("pt-b", 1.3, "al-2", kind="news2_emergency"), _ack("pt-b", 1.4, "al-2"),  # not a sepsis alert
            ("scores", b"pt-a", _score("pt-a", 2, 0.8, 3))]  # fmt: skip
    first = _last_round(job.process(recs))
    sepsis, review = first["sepsis_bundle", 12], first["critical_care_review", 12]
    assert sepsis["patients"] == 1 and sepsis["treated"] == 1 and sepsis["occupied"] == 2
    assert review["patients"] == 2 and review["treated"] == 0  # the review forecast keeps everyone
    gauges = {(x.name, tuple(sorted(x.labels.items()))): x.value for f in job.metrics.registry.collect()
              for x in f.samples}  # fmt: skip
    assert gauges["vigil_demand_unit_patients", (("unit", "unknown"),)] == 2  # no ADT unit sent
    assert gauges["vigil_demand_unassigned_patients", ()] == 0
    snap = WardSnapshot("W1", np.array([0.6]), np.array([2]), 4, news2_max=np.array([2]))
    assert math.isclose(sepsis["expected"], forecast(snap, SEPSIS, 12, cal).expected, abs_tol=1e-6)
    # a new stay of the same patient id: the earlier treatment no longer holds
    again = _last_round(job.process([_adt("pt-a", 3.0, "discharge", seq=1), _adt("pt-a", 3.5, "admit", seq=2),
                                     ("scores", b"pt-a", _score("pt-a", 4, 0.8, 3))]))  # fmt: skip
    assert again["sepsis_bundle", 12]["treated"] == 0 and again["sepsis_bundle", 12]["patients"] == 2
    assert "pt-" not in json.dumps(list(first.values()))  # no patient id in a forecast
    validator = Draft202012Validator(schema_for("resource-demand", REPO / "streams"))
    assert all(not list(validator.iter_errors(r)) for r in first.values())


def test_a_promoted_version_counts_through_its_own_calibration() -> None:
    s = _settings()
    v1 = Calibration.synthetic(horizons=(6, 12), version="1")
    v2 = Calibration.from_json({**v1.to_json(), "model": {"name": "m", "version": "2"},
                                "sepsis_onset": {h: {"x": [0.0, 1.0], "y": [0.0, 1.0], "base_rate": 0.05}
                                                 for h in ("6", "12")}})  # fmt: skip
    asked: list[str] = []

    def discover(name: str, version: str) -> Calibration | None:
        asked.append(version)
        return v2 if version == "2" else None

    job = DemandJob(s, v1, emit_history=True, discover=discover)
    out = job.process([_adt("pt-a", 0.1, "admit"), _adt("pt-b", 0.2, "admit"),
                       ("scores", b"pt-a", _score("pt-a", 0, 0.6, 3)),
                       ("scores", b"pt-b", _score("pt-b", 0, 0.6, 3, version="2")),  # after the promotion
                       ("scores", b"pt-b", _score("pt-b", 1, 0.6, 3, version="3")),  # no calibration: left out
                       ("scores", b"pt-b", _score("pt-b", 1, 0.9, 3, version="3")),
                       ("scores", b"pt-a", _score("pt-a", 2, 0.6, 3))])  # fmt: skip
    got = _last_round(out)["sepsis_bundle", 12]
    assert math.isclose(got["expected"], 0.3 + 0.6, abs_tol=1e-6)  # v1 maps 0.6 -> 0.3, v2 maps it to 0.6
    assert asked == ["2", "3"]  # each unknown version looked up once
    events = {s.labels["outcome"]: s.value for f in job.metrics.registry.collect() for s in f.samples
              if s.name == "vigil_demand_input_events_total" and s.labels.get("topic") == "scores"}  # fmt: skip
    assert events["uncalibrated_version"] == 2


# ------------------------------------------------------------------------------------------ backtest
def test_poisson_and_steady_admissions() -> None:
    rows = _rows(n_stays=400, seed=3)
    steady = ward_schedule(rows, 10, "steady")
    poisson = ward_schedule(rows, 10, "poisson")
    assert set(steady) == set(poisson)
    for ward in steady:
        assert np.array_equal(steady[ward][0], poisson[ward][0])  # the same stays in the same order
        gaps_s, gaps_p = np.diff(steady[ward][1]), np.diff(poisson[ward][1])
        assert gaps_s.std() < 1.0 < gaps_p.std()  # exponential gaps vary; steady ones only by rounding
        assert abs(gaps_p.mean() / gaps_s.mean() - 1) < 0.35
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(poisson.values(), ward_schedule(rows, 10).values(),
                                                            strict=True))  # deterministic  # fmt: skip
    with pytest.raises(ConfigError, match="arrivals"):
        BacktestConfig(arrivals="batch").check()


def test_census_adjusted_baseline_in_the_backtest() -> None:
    rows = _rows(n_stays=300, seed=4)
    cal = fit_calibration(rows, REF, (6, 12), min_bin_rows=100)
    cfg = BacktestConfig(concurrency=8, warmup_h=48, baseline_windows=2, horizons=(6, 12))
    metrics, scored = summarise(simulate(rows, cal, [SEPSIS, REVIEW], cfg), cfg)
    block = metrics["critical_care_review"]["12"]
    assert block["mae_census_baseline"] > 0 and block["mae_reduction_vs_census_baseline"] is not None
    for c in scored:  # every scored forecast has both baselines, from the same windows
        assert c.extra["census_baseline"] is not None and c.extra["census_baseline"] >= 0
    assert census_baseline({0: 2}, {0: 4, 12: 8}, 12, 12, 1) == 4.0  # 2 per 4 at risk, 8 at risk now
    assert census_baseline({0: 2}, {0: 4}, 12, 12, 1) is None  # the census now is unknown


# ------------------------------------------------------------------------------------------ ward effect
@pytest.mark.parametrize("n", [5, 30, 400])
def test_ward_effect_widens_without_moving_the_mean(n: int) -> None:
    rng = np.random.default_rng(n)
    p = np.concatenate([rng.uniform(0.01, 0.9, n - 2), [0.0, 1.0]])  # certain patients stay certain
    plain = distribution(p, exact_max=200)
    wide = distribution(p, exact_max=200, ward_sd=0.4)
    assert wide.method == plain.method + "+ward"
    pmf = wide.pmf()
    assert math.isclose(pmf.sum(), 1.0, abs_tol=1e-9) and pmf.min() >= -1e-12
    assert math.isclose(wide.mean, plain.mean, rel_tol=1e-12)
    if wide.method == "exact+ward":  # the mixture's own mean and variance agree with the reported ones
        k = np.arange(pmf.size)
        assert math.isclose(float(k @ pmf), plain.mean, rel_tol=1e-6)
        assert math.isclose(float((k - plain.mean) ** 2 @ pmf), wide.var, rel_tol=1e-6)
    assert wide.var > plain.var
    lo, hi = plain.interval(0.9)
    wlo, whi = wide.interval(0.9)
    assert wlo <= lo and whi >= hi and (whi - wlo) >= (hi - lo)
    assert distribution(p, ward_sd=0.0).method == plain.method


def test_fitted_ward_effect_reaches_the_forecast() -> None:
    rows = _rows(n_stays=500, seed=5)
    cal = fit_calibration(rows, REF, (6, 12), min_bin_rows=100)
    assert set(cal.ward_effect) == {"sepsis_onset", "news2_emergency"}
    assert all(0.0 <= v <= 2.0 for by_h in cal.ward_effect.values() for v in by_h.values())
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))).ward_effect == cal.ward_effect
    shared = replace(cal, ward_effect={"news2_emergency": {12: 0.5}})
    snap = WardSnapshot("W1", np.full(20, 0.2), np.full(20, 5), 30, news2_max=np.full(20, 8))
    plain, wide = forecast(snap, REVIEW, 12, replace(cal, ward_effect={})), forecast(snap, REVIEW, 12, shared)
    assert wide.dist.method == "exact+ward" and math.isclose(wide.expected, plain.expected, rel_tol=1e-9)
    assert wide.dist.var > plain.dist.var
    assert forecast(snap, SEPSIS, 12, shared).dist.method == "exact"  # fitted per need
    doc = cal.to_json()
    doc["ward_effect"] = {"news2_emergency": {"12": -1.0}}
    with pytest.raises(ConfigError, match="ward_effect"):
        Calibration.from_json(doc)


@pytest.mark.broker
def test_treated_and_promoted_on_the_broker(settings_factory: Callable[..., Settings],
                                            topics_factory: Callable[..., Any],
                                            run_demand_job: Callable[..., Any]) -> None:  # fmt: skip
    """On the real broker, from four topics: a treated sepsis alert leaves the risk set, and a newly promoted
    version's scores count through its own calibration."""
    s = settings_factory(demand=_settings().demand.model_dump())
    topics_factory(s, partitions=2)
    v1 = Calibration.synthetic(horizons=(6, 12), version="1")
    v2 = Calibration.from_json({**v1.to_json(), "model": {"name": "m", "version": "2"},
                                "sepsis_onset": {h: {"x": [0.0, 1.0], "y": [0.0, 1.0], "base_rate": 0.05}
                                                 for h in ("6", "12")}})  # fmt: skip
    recs = [_adt("pt-a", 0.1, "admit"), _adt("pt-b", 0.2, "admit"), _adt("pt-c", 0.3, "admit"),
            ("scores", b"pt-a", _score("pt-a", 0, 0.6, 3)), ("scores", b"pt-b", _score("pt-b", 0, 0.6, 3)),
            ("scores", b"pt-c", _score("pt-c", 0, 0.6, 3, version="2")),
            _alert("pt-a", 1.2, "al-1"), _ack("pt-a", 1.5, "al-1"),
            ("scores", b"pt-b", _score("pt-b", 3, 0.6, 3))]  # row end 04:00 passes the 03:00 boundary
    asyncio.run(produce_records(s, [(s.topic(t), k, v) for t, k, v in recs]))
    last = iso(_at(3).timestamp())

    def done(rs: list[dict[str, Any]]) -> bool:
        return sum(r["time"] == last and r["resource"] == "sepsis_bundle" and r["kind"] == "forecast" for r in rs) >= 2

    out = run_demand_job(s, v1, done, discover=lambda name, version: v2 if version == "2" else None)
    got = {r["horizon_h"]: r for r in out if r["time"] == last and r["resource"] == "sepsis_bundle"
           and r["kind"] == "forecast"}
    for h in (6, 12):
        assert got[h]["occupied"] == 3 and got[h]["patients"] == 2 and got[h]["treated"] == 1
        assert math.isclose(got[h]["expected"], 0.3 + 0.6, abs_tol=1e-6)  # pt-b through v1, pt-c through v2
    assert "pt-" not in json.dumps(out)


def test_another_hospitals_data_is_used_whole(tmp_path: Path) -> None:
    """Data that is not the model's training file (another hospital's stays): `vigil demand calibrate` fits on all
    of it, `vigil demand backtest` replays all of it, both through the CLI, with the serving model."""
    from click.testing import CliRunner

    from vigil.cli import cli

    sample = REPO / "data" / "sample" / "physionet2019_sample.tar.gz"
    runner = CliRunner()
    cal_path = tmp_path / "site_calibration.json"
    res = runner.invoke(cli, ["demand", "calibrate", "--data", str(sample), "--out", str(cal_path)])
    assert res.exit_code == 0, res.output
    cal = Calibration.load(cal_path)
    assert cal.meta["fitted_on"]["split"] == "all" and cal.meta["fitted_on"]["data"] == sample.name
    res = runner.invoke(cli, ["demand", "backtest", "--data", str(sample), "--calibration", str(cal_path),
                              "--out", str(tmp_path / "bt"), "--concurrency", "10", "--warmup-h", "24"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "bt" / "metrics.json").read_text())
    assert doc["data"]["split"] == "all" and doc["data"]["stays"] == 200
    assert doc["forecasts"]["critical_care_review"]["12"]["forecasts"] > 20
    res = runner.invoke(cli, ["demand", "backtest", "--data", str(sample), "--split", "test"])
    assert res.exit_code != 0 and "--split all" in res.output  # a split of other data is refused, with the fix


def test_state_waits_for_a_late_admit_and_stays_bounded() -> None:
    """An alert and its treated ack that arrive before the patient's admit are kept until it comes; after the
    discharge every per-patient entry (score, NEWS2 history, alert ids, acks) is dropped once it is stale."""
    from vigil.demand.state import decode_alert
    from vigil.records import decode

    def adt(hours: float, kind: str, seq: int) -> Any:
        return decode(_adt("pt-a", hours, kind, seq)[2], "adt")

    st = DemandState(("m", "1"), ttl_s=48 * 3600.0, closed_keep_s=24 * 3600.0, history_window_h=12)
    st.on_alert(decode_alert(_alert("pt-a", 0.5, "al-1")[2]))  # type: ignore[arg-type]
    st.on_ack(decode(_ack("pt-a", 0.6, "al-1")[2], "alert-acks"))  # type: ignore[arg-type]
    st.evict(_at(2).timestamp())  # a forecast round before the admit arrives
    st.on_adt(adt(0.2, "admit", 0))  # late, but newer than nothing: applied
    assert st.is_treated("pt-a")
    st.on_score(decode_score(_score("pt-a", 1, 0.4, 8)))  # type: ignore[arg-type]
    st.on_adt(adt(3.0, "discharge", 1))
    st.evict(_at(20).timestamp())
    assert st.held_scores() == 1 and st.is_treated("pt-a")  # within closed_keep / ttl: kept
    st.evict(_at(60).timestamp())
    assert st.held_scores() == 0 and not st.is_treated("pt-a") and st.recent_news2_max("pt-a") == -1
    assert not (st._news2 or st._sepsis_alerts or st._treated_acks or st._last_event)  # noqa: SLF001


# ------------------------------------------------------------------------------------------ live verification
def test_live_verification_counts_what_happened_after_each_forecast() -> None:
    """Hourly forecasts over three patients with known NEWS2 rows: the verified counters hold, per horizon, the
    number of forecasts settled and the realised counts as defined offline (a row starting in [T, T + h) with
    NEWS2 >= 7, among the patients present at T); partial rows do not count."""
    s = load_settings(None, demand={"interval_min": 60, "horizons_h": [6], "beds": {"W1": 4}})
    job = DemandJob(s, Calibration.synthetic(horizons=(6,)), emit_history=True)
    news2 = {"pt-a": [2, 3, 8, 2, 1, 1, 9, 2, 2, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2],
             "pt-b": [1, 1, 1, 1, 1, 1, 1, 1, 1, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
             "pt-c": [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]}  # fmt: skip
    recs: list[tuple[str, bytes, bytes]] = [_adt(p, 0.0, "admit") for p in news2]
    for row in range(20):
        for p, totals in news2.items():
            recs.append(("scores", p.encode(), _score(p, row, 0.2, 9, partial=True)))  # a partial 9: not counted
            recs.append(("scores", p.encode(), _score(p, row, 0.2, totals[row])))
    job.process(recs)
    samples = {(x.name, x.labels.get("level")): x.value for f in job.metrics.registry.collect() for x in f.samples
               if x.labels.get("resource") == "critical_care_review"}  # fmt: skip
    # rounds at T = 0..19 h (the last completed row ends at 20 h, so the last boundary passed is 19 h); a forecast
    # is settled in the first round at or after T + 6 h + 1 row (its last row complete)
    settled = [t for t in range(20) if t + 7 <= 19]
    observed = sum(sum(any(v >= 7 for v in totals[t:t + 6]) for totals in news2.values()) for t in settled)
    assert samples["vigil_demand_verified_forecasts_total", None] == len(settled)
    assert samples["vigil_demand_verified_observed_total", None] == observed
    assert samples["vigil_demand_verified_inside_total", "0.9"] <= len(settled)
    assert 0 < samples["vigil_demand_verified_mass_total", "0.9"] <= len(settled)
    assert not any(x.labels.get("resource") == "sepsis_bundle" and x.name.startswith("vigil_demand_verified")
                   for f in job.metrics.registry.collect() for x in f.samples)  # fmt: skip


@pytest.mark.broker
def test_demand_tail_on_the_broker(settings_factory: Callable[..., Settings], topics_factory: Callable[..., Any],
                                   run_demand_job: Callable[..., Any], broker: str) -> None:  # fmt: skip
    """`vigil demand tail` reads what the job wrote: forecast lines and capacity alerts, filtered, no patients."""
    from click.testing import CliRunner

    from vigil.cli import cli

    s = settings_factory(demand={"interval_min": 60, "horizons_h": [6, 12], "beds": {"W1": 2}})
    topics_factory(s, partitions=2)
    recs = [_adt("pt-a", 0.1, "admit"), _adt("pt-b", 0.2, "admit"),
            ("scores", b"pt-a", _score("pt-a", 0, 0.9, 8)), ("scores", b"pt-b", _score("pt-b", 0, 0.9, 8)),
            ("scores", b"pt-a", _score("pt-a", 2, 0.9, 8))]  # fmt: skip
    asyncio.run(produce_records(s, [(s.topic(t), k, v) for t, k, v in recs]))
    out = run_demand_job(s, Calibration.synthetic(horizons=(6, 12)), lambda rs: any(r["kind"] == "capacity_alert"
                                                                                   for r in rs))  # fmt: skip
    base = ["--bootstrap", broker, "--topic-prefix", s.topic_prefix, "demand", "tail", "--from-beginning"]
    res = CliRunner().invoke(cli, [*base, "--resource", "sepsis_bundle", "--horizon", "12", "--limit", "1"])
    assert res.exit_code == 0, res.output
    line = res.output.strip()
    assert "W1" in line and "sepsis_bundle" in line and " 12 h " in line and "90% [" in line and "pt-" not in line
    res = CliRunner().invoke(cli, [*base, "--alerts-only", "--limit", "1"])
    assert res.exit_code == 0 and "CAPACITY ALERT RAISED" in res.output, res.output
    raised = next(r for r in out if r["kind"] == "capacity_alert")
    assert raised["ward"] in res.output and raised["resource"] in res.output


def test_a_version_calibrated_for_other_horizons_is_left_out_not_fatal() -> None:
    s = _settings()  # horizons 6 and 12
    v1 = Calibration.synthetic(horizons=(6, 12), version="1")
    short = Calibration.synthetic(horizons=(6,), version="2")  # no 12 h maps
    job = DemandJob(s, v1, emit_history=True, discover=lambda name, version: short)
    out = job.process([_adt("pt-a", 0.1, "admit"), ("scores", b"pt-a", _score("pt-a", 0, 0.6, 3, version="2")),
                       ("scores", b"pt-a", _score("pt-a", 2, 0.6, 3, version="2"))])  # fmt: skip
    got = _last_round(out)["sepsis_bundle", 12]
    assert got["scored"] == 0 and got["patients"] == 1  # counted with the base rate, the job still running
    assert "2" not in job.by_version
