"""Measurement-habit shifts (``vigil evaluate --shifts``): each rewrite does what its name says, leaves the
input alone and is deterministic; the evaluation under shifts scores the rewritten rows with the real model,
its ``none`` row equals the plain evaluation, and the command writes ``shifts.md`` / ``shifts.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vigil.cli import cli
from vigil.config import REPO_ROOT, AlertSettings
from vigil.evaluation.report import evaluate, score_rows
from vigil.evaluation.selection import select_rows
from vigil.evaluation.shifts import SHIFTS, apply_shift, run_shifts
from vigil.registry import Registry
from vigil.scoring import Scorer
from vigil.training.data import load_training_frame
from vigil.variables import LABS, VITALS

BY_NAME = {s.name: s for s in SHIFTS}


@pytest.fixture(scope="module")
def frame(sample_path: Path) -> pd.DataFrame:
    df = load_training_frame(sample_path)
    return df[df["patient_id"].isin(pd.unique(df["patient_id"])[:40])].reset_index(drop=True)


def _measured(df: pd.DataFrame, cols: tuple[str, ...]) -> int:
    return int(df[[c for c in cols if c in df.columns]].notna().to_numpy().sum())


def test_every_shift_is_deterministic_and_leaves_its_input_alone(frame: pd.DataFrame) -> None:
    before = frame.copy()
    for shift in SHIFTS:
        a, b = apply_shift(shift, frame), apply_shift(shift, frame)
        pd.testing.assert_frame_equal(a, b)
        assert list(a.columns) == list(frame.columns), shift.name
    pd.testing.assert_frame_equal(frame, before)
    assert len({s.name for s in SHIFTS}) == len(SHIFTS) and SHIFTS[0].name == "none"


def test_lab_shifts_thin_or_remove_labs_and_keep_vitals(frame: pd.DataFrame) -> None:
    labs, vitals = _measured(frame, LABS), _measured(frame, VITALS)
    half = apply_shift(BY_NAME["labs_half"], frame)
    assert 0.4 * labs < _measured(half, LABS) < 0.6 * labs and _measured(half, VITALS) == vitals
    assert not (half[list(LABS)].notna() & frame[list(LABS)].isna()).to_numpy().any()  # only removes
    none = apply_shift(BY_NAME["labs_none"], frame)
    assert _measured(none, LABS) == 0 and _measured(none, VITALS) == vitals and len(none) == len(frame)


def test_vital_schedules_keep_only_every_kth_icu_hour(frame: pd.DataFrame) -> None:
    for name, k in (("vitals_q2h", 2), ("vitals_q4h", 4)):
        out = apply_shift(BY_NAME[name], frame)
        off = (frame["ICULOS"] % k) != 0
        assert _measured(out[off], VITALS) == 0, name
        pd.testing.assert_frame_equal(out[~off], frame[~off], check_dtype=False)
        assert _measured(out, LABS) == _measured(frame, LABS)


def test_device_and_admin_shifts_blank_only_their_columns(frame: pd.DataFrame) -> None:
    dev = apply_shift(BY_NAME["no_resp_devices"], frame)
    assert dev[["EtCO2", "FiO2", "SaO2"]].isna().all().all()
    assert _measured(dev, ("HR", "Lactate")) == _measured(frame, ("HR", "Lactate"))
    adm = apply_shift(BY_NAME["no_admin"], frame)
    assert adm[["HospAdmTime", "Unit1", "Unit2"]].isna().all().all()
    assert adm["Age"].equals(frame["Age"]) and adm["ICULOS"].equals(frame["ICULOS"])


def test_late_start_drops_the_first_12_icu_hours_and_keeps_the_clock(frame: pd.DataFrame) -> None:
    out = apply_shift(BY_NAME["late_start_12h"], frame)
    assert int(out["ICULOS"].min()) == 13
    want = frame[frame["ICULOS"] > 12].reset_index(drop=True)
    pd.testing.assert_frame_equal(out, want)
    short = frame.groupby("patient_id")["ICULOS"].max() <= 12
    assert set(out["patient_id"]) == set(short.index[~short])


def test_run_shifts_scores_the_rewritten_rows_and_its_reference_is_the_plain_evaluation(sample_path: Path) -> None:
    ref = Registry(REPO_ROOT / "models").get("sepsis-mlp:1")
    sel = select_rows(ref, sample_path, limit=60)
    scorer, policy = Scorer(ref, threads=1), AlertSettings()
    plain = evaluate(ref, sel, score_rows(scorer, sel.df), policy).metrics
    shifts = (BY_NAME["none"], BY_NAME["labs_none"], BY_NAME["late_start_12h"])
    result = run_shifts(ref, sel, scorer, policy, shifts)["shifts"]

    assert list(result) == ["none", "labs_none", "late_start_12h"]
    none = result["none"]
    assert none["utility"] == pytest.approx(plain["model"]["utility"]) and none["delta_utility"] == 0.0
    assert none["auroc"] == pytest.approx(plain["model"]["auroc"]) and none["stays"] == 60
    assert none["news2_utility"] == pytest.approx(plain["comparators"]["NEWS2>=5"]["utility"])
    # the model sees the shift: without labs its scores (hence ranking and flagged share) change
    no_labs = result["labs_none"]
    assert no_labs["rows"] == none["rows"]
    assert (no_labs["auroc"], no_labs["positive_rate_rows"]) != (none["auroc"], none["positive_rate_rows"])
    assert no_labs["delta_auroc"] == pytest.approx(no_labs["auroc"] - none["auroc"])
    late = result["late_start_12h"]
    assert late["rows"] < none["rows"] and late["stays"] <= none["stays"]
    for row in result.values():
        assert np.isfinite(row["utility"]) and 0 <= row["auroc"] <= 1 and row["what"]


def test_cli_writes_the_shift_table(tmp_path: Path, sample_path: Path) -> None:
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["evaluate", "--model", "sepsis-mlp:1", "--data", str(sample_path), "--limit", "30",
                                   "--out", str(out), "--shifts"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert set(summary["shifts"]) == set(BY_NAME)
    table = (out / "shifts.md").read_text()
    for shift in SHIFTS:
        assert f"| `{shift.name}` |" in table and f"* `{shift.name}`: " in table
    assert "p0" not in table  # no patient identifiers
    data = json.loads((out / "shifts.json").read_text())
    assert data["shifts"]["none"]["stays"] == 30 == summary["stays"]
    assert data["shifts"]["none"]["utility"] == pytest.approx(summary["utility"])
