"""`vigil train` with real TensorFlow on a small sample: every family is exported, parity-checked,
registered with a complete card, loads in the serving Scorer and predicts causally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vigil.cli import cli
from vigil.evaluation.utility import normalized_utility
from vigil.features import FEATURE_SCHEMA_HASH, SEQUENCE_SCHEMA_HASH
from vigil.offline import score_frame
from vigil.registry import Registry
from vigil.scoring import Scorer
from vigil.training.data import load_training_frame

pytest.importorskip("tensorflow", reason="the [train] extra is part of `make test` (make install-train)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    out = tmp_path_factory.mktemp("registry")
    res = CliRunner().invoke(
        cli, ["train", "--data", str(sample_path), "--out", str(out), "--family", "all", "--epochs", "2",
              "--max-stays", "120", "--batch-size", "512", "--members", "2"],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    summaries = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [s["model"] for s in summaries] == ["sepsis-logreg:1", "sepsis-mlp:1", "sepsis-tcn:1"]
    return out


@pytest.mark.parametrize("family", ["logreg", "mlp", "tcn"])
def test_every_family_is_registered_with_a_complete_card(trained: Path, family: str) -> None:
    ref = Registry(trained).get(f"sepsis-{family}:1")
    card = ref.card
    assert card["training"]["family"] == family
    assert card["training"]["members"] == 2 and card["training"]["member_seeds"] == [7, 8]  # one averaged graph
    assert card["feature_schema"]["hash"] == FEATURE_SCHEMA_HASH
    assert card["parity"]["keras_vs_onnx_max_abs_diff"] <= 1e-4 and card["parity"]["rows"] > 0
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


@pytest.mark.parametrize("family", ["logreg", "mlp", "tcn"])
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
    for family in ("mlp", "tcn"):
        sc = Scorer(Registry(trained).get(f"sepsis-{family}:1"))
        base, _ = score_frame(sc, first)
        changed, _ = score_frame(sc, noisy)
        np.testing.assert_array_equal(base[:cut], changed[:cut])
        assert not np.allclose(base[cut:], changed[cut:])  # the perturbation is real


def test_parity_failure_registers_nothing(tmp_path: Path, sample_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vigil.training import trainer

    monkeypatch.setattr(trainer, "PARITY_TOL", -1.0)  # any difference, even 0, now counts as a failure
    ds = trainer.prepare(sample_path, max_stays=40, with_sequence=False)
    with pytest.raises(RuntimeError, match="ONNX Runtime differs from Keras"):
        trainer.train_family(ds, "logreg", tmp_path, epochs=1, verbose=0)
    assert Registry(tmp_path).versions("sepsis-logreg") == []

