"""`vigil evaluate`: alert simulation against the worker's rules, onset and lead time, PPV, curves, data
selection, and the command end to end on the bundled sample (real ONNX Runtime, real model)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vigil.cli import cli
from vigil.config import REPO_ROOT, AlertSettings
from vigil.errors import ConfigError
from vigil.evaluation.alerting import alert_summary, crossings, lead_times, simulate_policy, stay_alerts, stay_table
from vigil.evaluation.curves import brier, expected_calibration_error, pr_curve, reliability_bins, roc_curve
from vigil.evaluation.metrics import auprc, auroc
from vigil.evaluation.report import score_rows, subgroup_masks, update_card
from vigil.evaluation.selection import select_rows
from vigil.evaluation.sweep import GRID
from vigil.features import FEATURE_NAMES, featurize_frame
from vigil.offline import score_frame
from vigil.registry import ModelRef, Registry
from vigil.scoring import Scorer
from vigil.training.data import load_training_frame, split_by_patient

MODELS = REPO_ROOT / "models"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def starts_of(*lengths: int) -> np.ndarray:
    """stay_start for stays of the given lengths, concatenated."""
    s = np.zeros(sum(lengths), dtype=bool)
    s[np.cumsum([0, *lengths[:-1]])] = True
    return s


def labels_from(length: int, first_label: int | None) -> np.ndarray:
    y = np.zeros(length, dtype=np.int8)
    if first_label is not None:
        y[first_label:] = 1
    return y


# --------------------------------------------------------------------------------- alert simulation
def test_crossing_fires_once_per_episode_and_rearms_below_the_rearm_level() -> None:
    v = np.array([0.1, 0.6, 0.9, 0.55, 0.7, 0.47, 0.5, 0.6, 0.2])
    fired = crossings(v, starts_of(9), on=0.6, rearm_below=0.48)
    # fires at 1; 0.9, 0.55 and 0.7 keep it active (0.55 is not below 0.48); 0.47 re-arms; 0.6 fires again
    assert np.flatnonzero(fired).tolist() == [1, 7]


def test_crossing_state_restarts_armed_at_every_stay() -> None:
    v = np.array([0.9, 0.9, 0.9, 0.9])
    assert np.flatnonzero(crossings(v, starts_of(2, 2), on=0.5, rearm_below=0.5)).tolist() == [0, 2]


def test_policy_simulation_with_plain_crossing_rules_equals_crossings() -> None:
    """With persistence 1, no refractory window and no escalation, the policy engine is the crossing +
    re-arm machine: the simulation equals :func:`crossings` on random stays (values on the edges)."""
    from vigil.config import RuleSettings

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, size=40).tolist()
    n = sum(lengths)
    thr = 0.58
    plain = {"persistence": 1, "refractory_h": 0.0, "escalate_by": None}
    policy = AlertSettings(model_risk=RuleSettings(**plain),
                           news2_emergency=RuleSettings(raise_at=7, clear_below=5, **plain))  # fmt: skip
    risk = rng.choice(np.float32([0.1, 0.4, 0.464, 0.4641, 0.5, 0.58, 0.5799, 0.7, 0.95]), size=n)
    news2 = rng.integers(0, 12, size=n)
    stay_start = starts_of(*lengths)
    got = simulate_policy(policy, risk=risk, threshold=thr, news2_total=news2, stay_start=stay_start)
    want_model = crossings(risk, stay_start, on=thr, rearm_below=0.8 * thr)
    want_news2 = crossings(news2, stay_start, on=7, rearm_below=5)
    assert want_model.sum() > 10 and want_news2.sum() > 10
    np.testing.assert_array_equal(got["model_risk"], want_model)
    np.testing.assert_array_equal(got["news2_emergency"], want_news2)
    assert not got["news2_urgent"].any() and not got["news2_single"].any()  # disabled by default


def test_alert_burden_is_alerts_per_24_scored_rows() -> None:
    y = np.zeros(48, np.int8)
    fired = np.zeros(48, bool)
    fired[[3, 20, 40]] = True
    stays = stay_table(y, starts_of(30, 18))
    out = alert_summary(stays, stay_alerts(fired, stays))
    assert out["alerts"] == 3 and out["patient_days"] == 2.0
    assert out["alerts_per_patient_day"] == pytest.approx(1.5)
    assert out["stays_alerted"] == 2 and out["share_stays_alerted"] == 1.0
    assert out["ppv_stay"] == 0.0 and out["share_nonseptic_alerted"] == 1.0


# ---------------------------------------------------------------------------- onset, lead time, PPV
@pytest.fixture
def cohort() -> dict[str, Any]:
    """Five stays: A septic (label from row 14 -> onset 20) alerted at row 12 and 30; B septic (label from 10 ->
    onset 16) alerted only at row 18; C septic on arrival (label from row 0); D non-septic alerted; E
    non-septic, never alerted; F septic (onset 30) alerted at row 2 only."""
    spec = [(40, 14, [12, 30]), (30, 10, [18]), (20, 0, [3]), (25, None, [5]), (25, None, []), (40, 24, [2])]
    y = np.concatenate([labels_from(n, first) for n, first, _ in spec])
    stay_start = starts_of(*[n for n, _, _ in spec])
    fired = np.zeros(y.size, bool)
    for first_row, (_, _, rows) in zip(np.flatnonzero(stay_start), spec, strict=True):
        fired[first_row + np.array(rows, dtype=int)] = True
    stays = stay_table(y, stay_start)
    return {"stays": stays, "alerts": stay_alerts(fired, stays), "y": y, "stay_start": stay_start}


def test_onset_is_first_label_row_plus_six_and_arrival_is_flagged(cohort: dict[str, Any]) -> None:
    st = cohort["stays"]
    assert st.septic.tolist() == [True, True, True, False, False, True]
    assert st.on_arrival.tolist() == [False, False, True, False, False, False]
    assert st.onset[st.septic].tolist() == [20, 16, 6, 30]


def test_lead_time_counts_hours_from_the_first_alert_and_late_alerts_are_not_early(cohort: dict[str, Any]) -> None:
    st, al = cohort["stays"], cohort["alerts"]
    assert al.first.tolist()[:2] == [12, 18] and al.count.tolist() == [2, 1, 1, 1, 0, 1]
    assert sorted(lead_times(st, al).tolist()) == [8.0, 28.0]  # A: 20 - 12; F: 30 - 2; B alerted after onset
    out = alert_summary(st, al)
    assert out["septic_stays_evaluable"] == 3  # A, B, F (C is septic on arrival)
    assert out["share_septic_alerted_early"] == pytest.approx(2 / 3)
    assert out["share_septic_alerted_12h_before_onset"] == pytest.approx(1 / 3)  # only A's alert is in 8..19
    assert out["share_septic_alerted_any_time"] == 1.0
    assert out["lead_time_h"] == {"median": 18.0, "q25": 13.0, "q75": 23.0, "n": 2}
    assert out["septic_on_arrival"] == {"stays": 1, "share_alerted": 1.0}


def test_stay_level_ppv_and_nonseptic_share(cohort: dict[str, Any]) -> None:
    out = alert_summary(cohort["stays"], cohort["alerts"])
    assert out["stays_alerted"] == 5
    assert out["ppv_stay"] == pytest.approx(4 / 5)  # A, B, C, F septic; D not
    assert out["share_nonseptic_alerted"] == pytest.approx(1 / 2)
    only_d_e = np.array([False, False, False, True, True, False])
    sub = alert_summary(cohort["stays"], cohort["alerts"], only_d_e)
    assert sub["ppv_stay"] == 0.0 and sub["share_septic_alerted_early"] is None and sub["lead_time_h"]["n"] == 0


def test_combining_streams_adds_counts_and_keeps_the_earliest_alert(cohort: dict[str, Any]) -> None:
    st, al = cohort["stays"], cohort["alerts"]
    extra = np.zeros(cohort["y"].size, bool)
    extra[np.flatnonzero(cohort["stay_start"])[1] + 9] = True  # B at row 9: 7 h before its onset at 16
    both = al | stay_alerts(extra, st)
    assert both.count.tolist() == [2, 2, 1, 1, 0, 1] and both.first[1] == 9 and both.in_window[1]
    assert alert_summary(st, both)["share_septic_alerted_early"] == 1.0


# -------------------------------------------------------------------------------------- curves, groups
def test_curves_agree_with_the_rank_metrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    s = np.round(rng.random(500) + 0.5 * y, 1)  # many ties
    fpr, tpr = roc_curve(y, s)
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(auroc(y, s), abs=1e-12)
    rec, prec = pr_curve(y, s)
    assert float(np.sum(np.diff(np.r_[0.0, rec]) * prec)) == pytest.approx(auprc(y, s), abs=1e-12)


def test_brier_and_reliability_bins() -> None:
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 1.0, 0.95])
    assert brier(y, p) == pytest.approx((0.05**2 + 0.15**2 + 0.05**2 + 0 + 0.95**2) / 5)
    bins = reliability_bins(y, p)
    assert [b["n"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]  # 1.0 falls in the last bin
    assert bins[9]["observed_rate"] == pytest.approx(2 / 3) and bins[2]["mean_predicted"] is None
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.15 + 3 * abs(2 / 3 - 2.9 / 3)) / 5)


def test_subgroup_masks_bands_sex_and_unit() -> None:
    static = {
        "Age": np.array([30.0, 45.0, 64.9, 65.0, 80.0, 91.0]),
        "Gender": np.array([1.0, 0.0, np.nan, 1.0, 0.0, 1.0]),
        "Unit1": np.array([1.0, 0.0, np.nan, 0.0, 1.0, np.nan]),
        "Unit2": np.array([0.0, 1.0, np.nan, 1.0, 0.0, np.nan]),
    }
    g = subgroup_masks(static)
    assert {k: np.flatnonzero(m).tolist() for k, m in g["age"].items()} == {
        "<45": [0], "45-64": [1, 2], "65-79": [3], ">=80": [4, 5]
    }  # fmt: skip
    assert {k: np.flatnonzero(m).tolist() for k, m in g["sex"].items()} == {"male": [0, 3, 5], "female": [1, 4],
                                                                            "unknown": [2]}  # fmt: skip
    assert {k: np.flatnonzero(m).tolist() for k, m in g["unit"].items()} == {"MICU": [0, 4], "SICU": [1, 3],
                                                                             "unknown": [2, 5]}  # fmt: skip


# ------------------------------------------------------------------------------------ data selection
def fake_ref(source_file: str, seed: int = 7) -> ModelRef:
    real = Registry(MODELS).get("sepsis-mlp:1")
    card = {**real.card, "training": {**real.card["training"], "source_file": source_file}}
    card["training"]["split"] = {"seed": seed}
    return ModelRef(real.name, real.version, real.path, card)


@pytest.fixture(scope="module")
def sample_frame(sample_path: Path) -> pd.DataFrame:
    return load_training_frame(sample_path)


def test_training_file_gets_the_cards_split_and_limit_takes_stays_of_it(
    tmp_path: Path, sample_frame: pd.DataFrame
) -> None:
    data = tmp_path / "mini.parquet"
    sample_frame.to_parquet(data)
    ref = fake_ref("mini.parquet", seed=11)
    want = split_by_patient(sample_frame["patient_id"].to_numpy(), 11)["validation"]
    sel = select_rows(ref, data, "validation")
    assert sel.training_data and sel.split == "validation"
    assert sel.df["patient_id"].tolist() == sample_frame["patient_id"][want].tolist()
    default = select_rows(ref, data)
    assert default.split == "test" and default.df["patient_id"].nunique() == 30
    limited = select_rows(ref, data, "test", limit=4)
    assert pd.unique(limited.df["patient_id"]).tolist() == pd.unique(default.df["patient_id"])[:4].tolist()


def test_other_data_is_evaluated_whole_and_a_split_of_it_is_refused(sample_path: Path) -> None:
    ref = fake_ref("setA.parquet")
    sel = select_rows(ref, sample_path, limit=10)
    assert sel.split == "all" and not sel.training_data and sel.df["patient_id"].nunique() == 10
    assert any("not the model's training file" in n for n in sel.notes)
    with pytest.raises(ConfigError, match="--split test needs the model's training data"):
        select_rows(ref, sample_path, "test")


def test_scoring_uses_score_frame_and_the_featurizer_screens(sample_frame: pd.DataFrame) -> None:
    df = sample_frame[sample_frame["patient_id"].isin(pd.unique(sample_frame["patient_id"])[:20])]
    scorer = Scorer(Registry(MODELS).get("sepsis-mlp:1"))
    sc = score_rows(scorer, df)
    probs, stay_start = score_frame(scorer, df)
    np.testing.assert_array_equal(sc.probs, probs)
    np.testing.assert_array_equal(sc.stay_start, stay_start)
    x, _ = featurize_frame(df)
    for col in ("news2_total", "qsofa_partial", "sirs_count"):
        np.testing.assert_array_equal(sc.screens[col], x[:, FEATURE_NAMES.index(col)])
    assert sc.static["Age"].shape == (20,) and sc.labels.sum() == df["SepsisLabel"].sum()


# --------------------------------------------------------------------------------------- card, CLI
def test_update_card_is_atomic_and_keeps_every_other_field(tmp_path: Path) -> None:
    shutil.copytree(MODELS, tmp_path / "models")
    ref = Registry(tmp_path / "models").get("sepsis-mlp:1")
    before = json.loads((ref.path / "card.json").read_text())
    files = sorted(p.name for p in ref.path.iterdir())
    update_card(ref, "test", {"model": {"auroc": np.float32(0.75), "brier": float("nan")}, "n": np.int64(3)})
    update_card(ref, "all", {"x": 1})
    after = json.loads((ref.path / "card.json").read_text())
    assert after["evaluation"] == {"test": {"model": {"auroc": 0.75, "brier": None}, "n": 3}, "all": {"x": 1}}
    assert {k: v for k, v in after.items() if k != "evaluation"} == before
    assert sorted(p.name for p in ref.path.iterdir()) == files  # no temporary file left behind
    assert {"card.json", "model.onnx"} <= set(files)


def _finite_in(x: Any, lo: float, hi: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and lo <= x <= hi


def test_cli_evaluates_the_sample_and_updates_a_copied_card(tmp_path: Path, sample_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    real_card = (MODELS / "sepsis-mlp" / "1" / "card.json").read_bytes()
    out = tmp_path / "report"
    res = CliRunner().invoke(
        cli,
        ["evaluate", "--model", "sepsis-mlp:1", "--data", str(sample_path), "--split", "all", "--out", str(out),
         "--update-card"],
        env={"VIGIL_MODELS_DIR": str(models)},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["model"] == "sepsis-mlp:1" and summary["split"] == "all" and summary["stays"] == 200

    report = (out / "report.md").read_text()
    for section in ("## Summary", "## Data", "## Operating threshold", "## Discrimination and utility",
                    "## Calibration", "## Alerting", "## Subgroups", "## Definitions", "## Caveats"):  # fmt: skip
        assert section in report, section
    assert "not calibrated" in report and "0.58" in report
    assert "p0" not in report  # no patient identifiers (PhysioNet stems are pNNNNNN)
    for png in ("reliability.png", "roc_pr.png", "lead_time.png"):
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["stays"] == 200 and m["data"]["septic_stays"] == 30 and m["data"]["rows"] == 7555
    mod = m["model"]
    assert mod["threshold"] == 0.58
    for key in ("auroc", "auprc", "brier"):
        assert _finite_in(mod[key], 0, 1), key
    assert mod["auroc"] > 0.7 and _finite_in(mod["utility"], -2, 1)
    al = m["alerting"]["model_risk"]
    assert _finite_in(al["alerts_per_patient_day"], 0, 24) and al["alerts"] > 0
    for key in ("share_septic_alerted_early", "ppv_stay", "share_nonseptic_alerted"):
        assert _finite_in(al[key], 0, 1), key
    assert _finite_in(al["lead_time_h"]["median"], 1, 400)
    assert m["alerting"]["policy_all"]["alerts"] == al["alerts"] + m["alerting"]["news2_emergency"]["alerts"]
    assert set(m["comparators"]) == {"NEWS2>=5", "NEWS2>=7", "qSOFA>=2", "SIRS>=2"}
    n5, n7 = m["comparators"]["NEWS2>=5"], m["comparators"]["NEWS2>=7"]
    assert n5["auroc"] == n7["auroc"] and n5["alerting"]["alerts"] > n7["alerting"]["alerts"]
    assert sum(s["stays"] for s in m["subgroups"]["age"].values()) == 200
    assert sum(s["septic_stays"] for s in m["subgroups"]["unit"].values()) == 30

    card = json.loads((models / "sepsis-mlp" / "1" / "card.json").read_text())
    ev = card["evaluation"]["all"]
    assert ev["model"]["auroc"] == pytest.approx(mod["auroc"]) and "subgroups" in ev and "comparators" in ev
    assert card["threshold"] == 0.58 and card["metrics"]["test"]["auroc"] == 0.7955
    assert (MODELS / "sepsis-mlp" / "1" / "card.json").read_bytes() == real_card


def test_cli_refuses_a_split_of_foreign_data(tmp_path: Path, sample_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["evaluate", "--model", "sepsis-mlp:1", "--data", str(sample_path), "--split", "test",
              "--out", str(tmp_path / "r")],
    )  # fmt: skip
    assert res.exit_code != 0 and "--split all" in res.output
    assert not (tmp_path / "r").exists()


def test_cli_policy_sweep_writes_the_tradeoff_and_per_unit_levels(tmp_path: Path, sample_path: Path) -> None:
    out = tmp_path / "sweep"
    res = CliRunner().invoke(cli, ["evaluate", "--model", "sepsis-mlp:1", "--data", str(sample_path), "--limit",
                                   "120", "--out", str(out), "--policy-sweep", "--budget", "0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])["policy_sweep"]
    assert summary["split"] == "all" and "alert_policy" not in summary  # no --update-card: the card is untouched
    data = json.loads((out / "policy_sweep.json").read_text())
    levels = [x for x in GRID["raise_at"] if x is None or x >= 0.58]  # levels below the card threshold are skipped
    assert len(data["points"]) == len(levels) * len(GRID["persistence"]) * len(GRID["refractory_h"])
    configured = data["chosen_as_configured"]
    if configured is not None:
        assert (configured["persistence"], configured["refractory_h"]) == (1, 72.0) and configured["burden"] <= 0.5
    per_unit = data["per_unit"]
    assert set(per_unit["units"]) <= {"MICU", "SICU"} and per_unit["units"]
    for u in per_unit["units"].values():
        assert u["at_shared_level"]["raise_at"] == per_unit["shared_level"]
        assert u["own"] is None or u["own"]["burden"] <= 0.5
    md = (out / "policy_sweep.md").read_text()
    assert "## Per ICU unit" in md and "p0" not in md
    assert (out / "tradeoff.png").read_bytes()[:8] == PNG_MAGIC


def test_offline_alerting_applies_per_unit_overrides_as_the_worker_does() -> None:
    """Two identical stays, one per unit: a SICU override of the model level silences it there only, and a rule
    switched on for the SICU alone fires there alone (it must be stepped although it is off globally)."""
    from vigil.evaluation.report import row_units

    risk = np.array([0.2, 0.7, 0.7, 0.3] * 2)
    news2 = np.array([3, 8, 8, 2] * 2, dtype=float)
    starts = np.array([True, False, False, False] * 2)
    units = row_units({"Unit1": np.array([1.0, 0.0]), "Unit2": np.array([0.0, 1.0])}, np.array([4, 4]))
    assert units.tolist() == ["MICU"] * 4 + ["SICU"] * 4
    policy = AlertSettings(overrides={"SICU": {"model_risk": {"raise_at": 0.99},
                                               "news2_emergency": {"enabled": True}}})  # fmt: skip
    fired = simulate_policy(policy, risk=risk, threshold=0.5, news2_total=news2, stay_start=starts, unit=units)
    assert fired["model_risk"].tolist() == [False, True, False, False] + [False] * 4
    assert fired["news2_emergency"].tolist() == [False] * 4 + [False, True, False, False]
    plain = simulate_policy(policy, risk=risk, threshold=0.5, news2_total=news2, stay_start=starts)  # no units
    assert plain["model_risk"].tolist() == [False, True, False, False] * 2 and not plain["news2_emergency"].any()
