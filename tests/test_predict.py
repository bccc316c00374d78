"""`vigil predict`: one challenge-format line per input row, causal, identical to the worker's scores."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from vigil.cli import cli
from vigil.config import load_settings
from vigil.physionet import iter_stays
from vigil.predict import _offline, predict_stay, predict_stays


def test_predict_writes_one_line_per_row(tmp_path, sample_path) -> None:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(cli, ["predict", "--input", str(sample_path), "--output", str(tmp_path), "--limit", "4"])
    assert res.exit_code == 0, res.output
    for stay in iter_stays(sample_path, limit=4):
        lines = (tmp_path / f"{stay.stay_id}.psv").read_text().splitlines()
        assert lines[0] == "PredictedProbability|PredictedLabel"
        assert len(lines) == 1 + len(stay.values)
        for line in lines[1:]:
            p, label = line.split("|")
            assert 0.0 <= float(p) <= 1.0 and label in ("0", "1")


def test_predictions_are_causal(sample_path) -> None:  # type: ignore[no-untyped-def]
    """Row t's prediction does not change when rows after t are removed."""
    s = load_settings(None)
    key = s.pseudonym_key.get_secret_value()
    stay = next(iter(iter_stays(sample_path, limit=1)))
    full, _ = predict_stay(_offline(s, None), stay, key)
    cut = len(stay.values) // 2
    label = None if stay.label is None else stay.label[:cut]
    short = type(stay)(stay.stay_id, stay.values[:cut], stay.static[:cut], label)
    part, _ = predict_stay(_offline(s, None), short, key)
    np.testing.assert_allclose(part, full[:cut], atol=1e-9)


def test_a_batch_of_stays_scores_each_stay_as_alone(sample_path) -> None:  # type: ignore[no-untyped-def]
    """Several stays through the Processor in one batch (one ONNX call) give each stay's own predictions."""
    s = load_settings(None)
    key = s.pseudonym_key.get_secret_value()
    stays = list(iter_stays(sample_path, limit=4))
    together = predict_stays(_offline(s, None), stays, key)
    for stay, risks in zip(stays, together, strict=True):
        alone, _ = predict_stay(_offline(s, None), stay, key)
        assert len(risks) == len(stay.values)
        np.testing.assert_allclose(risks, alone, atol=1e-9)
