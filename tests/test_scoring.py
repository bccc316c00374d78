"""Model contract tests: the shipped model, the registry, provider selection, schema-hash guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vigil.config import REPO_ROOT
from vigil.errors import ModelError
from vigil.features import FEATURE_NAMES, FEATURE_SCHEMA_HASH, featurize, inputs_for_rows
from vigil.registry import Registry
from vigil.scoring import Scorer, choose_providers
from vigil.variables import STATIC, VARIABLES

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(Registry(MODELS).get("sepsis-mlp"), ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_every_serving_model_matches_the_featurizer() -> None:
    reg = Registry(MODELS)
    for ref in reg.serving_refs():
        assert ref.feature_hash == FEATURE_SCHEMA_HASH
        assert ref.card["feature_schema"]["names"] == list(FEATURE_NAMES)
        assert 0.0 < ref.threshold < 1.0
        parity = ref.card["parity"]
        engine = parity.get("reference", "keras")
        assert parity[f"{engine}_vs_onnx_max_abs_diff"] <= 1e-4 and parity["rows"] >= 1000
        for key in ("metrics", "provenance", "training", "intended_use", "limitations"):
            assert ref.card[key], key


def test_runs_on_cpu_and_reports_the_provider(scorer: Scorer) -> None:
    assert scorer.provider == "CPUExecutionProvider"  # no GPU on CI: the fallback must be visible


def test_outputs_are_probabilities_deterministic_and_batch_independent(scorer: Scorer) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(80, 20, size=(50, len(VARIABLES))).astype(np.float32)
    values[rng.random(values.shape) < 0.7] = np.nan
    static = np.tile(np.array([60, 1, 1, 0, -5, 1], np.float32), (50, 1))
    static[:, STATIC.index("ICULOS")] = np.arange(1, 51)
    start = np.zeros(50, bool)
    start[0] = True
    x = featurize(inputs_for_rows(values, static, start))
    p = scorer.predict(x)
    assert p.shape == (50,) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(p, scorer.predict(x))
    one_by_one = np.concatenate([scorer.predict(x[i : i + 1]) for i in range(50)])
    np.testing.assert_allclose(one_by_one, p, atol=1e-6)
    assert scorer.predict(np.zeros((0, x.shape[1]), np.float32)).shape == (0,)


def test_wrong_feature_width_is_a_clear_error(scorer: Scorer) -> None:
    with pytest.raises(ModelError, match="shape"):
        scorer.predict(np.zeros((2, 3), np.float32))


def test_schema_hash_mismatch_refuses_to_load(tmp_path: Path) -> None:
    src = MODELS / "sepsis-mlp" / "1"
    dst = tmp_path / "sepsis-mlp" / "9"
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["feature_schema"]["hash"] = "sha256:" + "0" * 64
    (dst / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="feature schema"):
        Scorer(Registry(tmp_path).get("sepsis-mlp:9"))


def test_registry_resolution_and_errors(tmp_path: Path) -> None:
    reg = Registry(MODELS)
    serving = reg.serving()
    assert serving and all(reg.get(name).version == version for name, version in serving.items())
    assert reg.get("sepsis-mlp").version == reg.versions("sepsis-mlp")[-1]  # not serving: the newest
    assert {"sepsis-mlp", "sepsis-tcn", "sepsis-logreg"} <= set(reg.names())
    with pytest.raises(ModelError, match="not found"):
        reg.get("no-such-model")
    with pytest.raises(ModelError, match="no serving model"):
        Registry(tmp_path).serving_refs()


def test_provider_preference() -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], avail) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]  # fmt: skip
    assert choose_providers([], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_onset_probability_comes_from_the_versions_demand_calibration(tmp_path: Path) -> None:
    """An alert quotes P(onset within 12 h) from the version's own calibration; a version without one gives None
    (the alert then carries the score alone)."""
    import shutil

    from vigil.demand.calibration import CALIBRATION_FILE, Calibration
    from vigil.scoring import ONSET_HORIZON_H

    reg = Registry(MODELS)
    ref = reg.serving_refs()[0]
    sc = Scorer(ref)
    onset = Calibration.load(ref.path / CALIBRATION_FILE).sepsis[ONSET_HORIZON_H]
    for risk in (0.05, 0.38, 0.55, 0.9):
        assert sc.onset_probability(risk) == pytest.approx(float(onset(np.array([risk]))[0]))
    assert sc.onset_probability(0.9) >= sc.onset_probability(0.05)  # isotonic
    shutil.copytree(ref.path, tmp_path / ref.name / ref.version)
    (tmp_path / ref.name / ref.version / CALIBRATION_FILE).unlink()
    assert Scorer(Registry(tmp_path).get(f"{ref.name}:{ref.version}")).onset_probability(0.9) is None

