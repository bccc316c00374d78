"""`vigil train` with real TensorFlow on a small sample: every family is exported, parity-checked,
registered with a complete card and its demand calibration, loads in the serving Scorer and predicts causally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from vigil.cli import cli
from vigil.demand.calibration import CALIBRATION_FILE, Calibration
from vigil.evaluation.utility import normalized_utility
from vigil.features import FEATURE_SCHEMA_HASH, SEQUENCE_SCHEMA_HASH
from vigil.offline import score_frame
from vigil.registry import Registry
from vigil.scoring import Scorer
from vigil.training.data import load_training_frame

pytest.importorskip("tensorflow", reason="the [train] extra is part of `make test` (make install-train)")


def _summaries(stdout: str) -> list[dict[str, Any]]:
    """The JSON summary lines of `vigil train` (Keras prints its progress on stdout too)."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"model"')]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    out = tmp_path_factory.mktemp("registry")
    res = CliRunner().invoke(
        cli, ["train", "--data", str(sample_path), "--out", str(out), "--family", "all", "--epochs", "2",
              "--max-stays", "120", "--batch-size", "512", "--members", "2"],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    summaries = _summaries(res.stdout)
    assert [s["model"] for s in summaries] == ["sepsis-logreg:1", "sepsis-mlp:1", "sepsis-tcn:1", "sepsis-gbm:1"]
    assert all(s["demand_calibration"] == str(out / s["model"].replace(":", "/") / CALIBRATION_FILE)
               for s in summaries)  # fmt: skip
    return out


@pytest.mark.parametrize("family", ["logreg", "mlp", "tcn", "gbm"])
def test_every_family_is_registered_with_a_complete_card(trained: Path, family: str) -> None:
    ref = Registry(trained).get(f"sepsis-{family}:1")
    card = ref.card
    assert card["training"]["family"] == family
    assert card["training"]["members"] == 2 and card["training"]["member_seeds"] == [7, 8]  # one averaged graph
    assert card["feature_schema"]["hash"] == FEATURE_SCHEMA_HASH
    engine = "lightgbm" if family == "gbm" else "keras"
    assert card["parity"]["reference"] == engine and card["parity"]["rows"] > 0
    assert card["parity"][f"{engine}_vs_onnx_max_abs_diff"] == card["parity"]["max_abs_diff"] <= 1e-4
    assert 0.0 < card["threshold"] < 1.0 and card["threshold_rule"].endswith("validation split")
    for split in ("validation", "test"):
        m = card["metrics"][split]
        assert m["stays"] > 0 and 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["brier"] <= 1.0
    split = card["training"]["split"]
    assert split["train"] + split["validation"] + split["test"] == 120 and split["seed"] == 7
    assert len(card["canary"]["probabilities"]) == 4
    ref_bins = card["reference"]["features"]["HR_locf"]
    assert len(ref_bins["fractions"]) == len(ref_bins["edges"]) + 1 and abs(sum(ref_bins["fractions"]) - 1) < 1e-4
    assert ("sequence_schema" in card) == (family == "tcn")
    if family == "tcn":
        assert card["sequence_schema"]["hash"] == SEQUENCE_SCHEMA_HASH
    for key in ("intended_use", "limitations", "provenance", "task"):
        assert card[key]


@pytest.mark.parametrize("family", ["logreg", "mlp", "tcn", "gbm"])
def test_registered_model_serves_and_reproduces_its_card(trained: Path, sample_path: Path, family: str) -> None:
    """The serving Scorer loads the file, reproduces the card's canary rows, and the card's test metrics
    are what the exported model scores on the same rows."""
    ref = Registry(trained).get(f"sepsis-{family}:1")
    sc = Scorer(ref)
    assert sc.needs_sequence == (family == "tcn")
    sc.check_canary()
    df = load_training_frame(sample_path, max_stays=120)
    probs, starts = score_frame(sc, df)
    assert probs.shape == (len(df),) and np.all((probs >= 0) & (probs <= 1))
    from vigil.training.data import split_by_patient

    test = split_by_patient(df["patient_id"].to_numpy(), ref.card["training"]["split"]["seed"])["test"]
    y = df["SepsisLabel"].to_numpy()[test]
    util = normalized_utility(y, probs[test] >= ref.threshold, starts[test])
    assert abs(util - ref.card["metrics"]["test"]["utility"]) <= 1e-3


def test_predictions_are_causal_future_rows_cannot_change_the_past(trained: Path, sample_path: Path) -> None:
    """Perturbing rows after t (values scrambled, rows appended) leaves every prediction at rows <= t
    unchanged, for the feature-vector and the temporal model alike."""
    df = load_training_frame(sample_path, max_stays=3).reset_index(drop=True)
    first = df[df["patient_id"] == df["patient_id"].iloc[0]].copy()
    cut = len(first) // 2
    rng = np.random.default_rng(0)
    noisy = first.copy()
    for col in ("HR", "MAP", "Resp", "Temp", "Lactate", "WBC"):
        noisy.loc[noisy.index[cut:], col] = rng.uniform(1, 200, size=len(first) - cut)
    for family in ("mlp", "tcn", "gbm"):
        sc = Scorer(Registry(trained).get(f"sepsis-{family}:1"))
        base, _ = score_frame(sc, first)
        changed, _ = score_frame(sc, noisy)
        np.testing.assert_array_equal(base[:cut], changed[:cut])
        assert not np.allclose(base[cut:], changed[cut:])  # the perturbation is real


@pytest.mark.parametrize("family", ["logreg", "mlp", "tcn", "gbm"])
def test_every_version_gets_its_demand_calibration_on_its_validation_split(
    trained: Path, sample_path: Path, family: str
) -> None:
    ref = Registry(trained).get(f"sepsis-{family}:1")
    cal = Calibration.load(ref.path / CALIBRATION_FILE)
    assert (cal.model, cal.version) == (ref.name, ref.version) and cal.horizons == (6, 12, 24)
    fitted = cal.meta["fitted_on"]
    split = ref.card["training"]["split"]  # the --max-stays 120 selection, split with the card's seed
    assert (fitted["data"], fitted["split"], fitted["seed"]) == (sample_path.name, "validation", split["seed"])
    assert fitted["stays"] == split["validation"] and fitted["notes"] == []
    assert cal.meta["feature_hash"] == ref.feature_hash


def test_demand_calibrate_refits_the_same_file_and_promote_accepts_it(
    trained: Path, sample_path: Path, tmp_path: Path
) -> None:
    """`vigil demand calibrate` runs the trainer's code: the same maps; the trained version passes promote."""
    root = tmp_path / "models"
    shutil.copytree(trained, root)
    env = {"VIGIL_MODELS_DIR": str(root)}
    spec = "sepsis-logreg:1"
    res = CliRunner().invoke(cli, ["demand", "calibrate", "--model", spec, "--data", str(sample_path),
                                   "--out", str(tmp_path / "refit.json")], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == spec

    def maps(path: Path) -> dict[str, object]:
        doc = json.loads(path.read_text())
        doc.pop("created_at")
        return doc

    assert maps(tmp_path / "refit.json") == maps(root / "sepsis-logreg" / "1" / CALIBRATION_FILE)
    res = CliRunner().invoke(cli, ["models", "promote", spec, "--data", str(sample_path), "--no-notify"], env=env)
    assert res.exit_code == 0, res.output
    assert Registry(root).serving() == {"sepsis-logreg": "1"}


def test_a_failed_or_skipped_demand_calibration_keeps_the_version_and_names_the_fix(
    tmp_path: Path, sample_path: Path
) -> None:
    out = tmp_path / "models"
    (out / "sepsis-logreg" / "5" / CALIBRATION_FILE).mkdir(parents=True)  # a folder there: writing it fails
    # 120 stays as in `trained`: with far fewer the card's test metrics are NaN, which the registry cannot read
    args = ["train", "--data", str(sample_path), "--out", str(out), "--family", "logreg", "--epochs", "1",
            "--max-stays", "120", "--batch-size", "512"]  # fmt: skip
    res = CliRunner().invoke(cli, [*args, "--version", "5"])
    assert res.exit_code == 0, res.output
    assert _summaries(res.stdout)[-1]["demand_calibration"] is None
    assert "WARNING: sepsis-logreg:5 is registered" in res.stderr and "IsADirectoryError" in res.stderr
    assert "vigil demand calibrate --model sepsis-logreg:5" in res.stderr and f"--data {sample_path}" in res.stderr
    assert Registry(out).get("sepsis-logreg:5").version == "5"
    res = CliRunner().invoke(cli, [*args, "--version", "6", "--no-demand-calibration"])
    assert res.exit_code == 0, res.output
    assert _summaries(res.stdout)[-1]["demand_calibration"] is None
    assert "vigil demand calibrate --model sepsis-logreg:6" in res.stderr
    assert not (out / "sepsis-logreg" / "6" / CALIBRATION_FILE).exists()
    res = CliRunner().invoke(cli, ["models", "promote", "sepsis-logreg:6", "--data", str(sample_path),
                                   "--no-notify"], env={"VIGIL_MODELS_DIR": str(out)})  # fmt: skip
    assert res.exit_code == 1 and "vigil demand calibrate --model sepsis-logreg:6" in res.stderr


@pytest.mark.parametrize(("family", "engine"), [("logreg", "Keras"), ("gbm", "LightGBM")])
def test_parity_failure_registers_nothing(tmp_path: Path, sample_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          family: str, engine: str) -> None:  # fmt: skip
    from vigil.training import trainer

    monkeypatch.setattr(trainer, "PARITY_TOL", -1.0)  # any difference, even 0, now counts as a failure
    ds = trainer.prepare(sample_path, max_stays=40, with_sequence=False)
    with pytest.raises(RuntimeError, match=f"ONNX Runtime differs from {engine}"):
        trainer.train_family(ds, family, tmp_path, epochs=1, verbose=0)
    assert Registry(tmp_path).versions(f"sepsis-{family}") == []



def test_a_tiny_training_run_writes_a_strict_json_card(tmp_path: Path, sample_path: Path) -> None:
    """With few stays a split can lack a septic stay: its AUROC is undefined. The card must still be strict JSON
    (null, not NaN) so the registry can load the version."""
    import json

    from vigil.training import trainer

    ds = trainer.prepare(sample_path, max_stays=40, with_sequence=False)
    target = trainer.train_family(ds, "logreg", tmp_path, epochs=1, verbose=0)

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    card = json.loads((target / "card.json").read_text(), parse_constant=refuse)
    assert Registry(tmp_path).get(f"sepsis-logreg:{target.name}").card == card
    for split in ("validation", "test"):  # undefined where a split has no septic row, a number otherwise
        auc = card["metrics"][split]["auroc"]
        assert (auc is None) == (not ds.y[split].any()), (split, auc)
