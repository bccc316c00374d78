"""`vigil onboard --unlabelled --prevalence P` (vigil.onboarding.prior): the site's stated share of septic stays
moves the base's threshold by Bayes' rule, reading no label. The contract: under a pure prior shift the moved
threshold is the score at which the *site's* true posterior equals the base's posterior at its threshold; the card
block the trainer writes is what the rule reads; the CLI refuses what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vigil.card import PriorShiftSpec
from vigil.cli import cli
from vigil.errors import ConfigError
from vigil.onboarding import prior
from vigil.registry import Registry


def _posterior(x: np.ndarray, pi: float, mu: float = 1.0) -> np.ndarray:
    """True P(y=1 | x) for x ~ N(+mu, 1) (y=1) / N(-mu, 1) (y=0) at prior ``pi``: logit = 2 mu x + log-odds(pi)."""
    return 1.0 / (1.0 + np.exp(-(2 * mu * x + np.log(pi / (1 - pi)))))


def test_under_a_pure_prior_shift_the_moved_threshold_is_where_the_sites_posterior_matches() -> None:
    rng = np.random.default_rng(0)
    pi_base, n = 0.05, 400_000
    y = rng.random(n) < pi_base
    x = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    # the base's score is class-weighted (not calibrated): a monotone map of the true posterior
    score = _posterior(x, 0.5)
    starts = np.zeros(n, bool)
    starts[::40] = True  # 40-row stays; the rule reads the row prior, stays only for the stated -> row conversion
    block = prior.fit_prior_shift(score, y, starts, "synthetic")
    assert block["slope"] == pytest.approx(1.0, abs=0.02) and block["row_prior"] == pytest.approx(pi_base, abs=0.002)
    PriorShiftSpec.model_validate(block)
    for pi_site in (0.01, 0.05, 0.2):
        t = prior.shifted_threshold(block, 0.4, pi_site)
        x_base = 0.5 * np.log(0.4 / 0.6)  # the base's threshold in x (score = sigmoid(2x))
        x_site = np.log(t / (1 - t)) / 2
        # the site's true posterior at its new threshold equals the base's true posterior at its own
        assert _posterior(np.array([x_site]), pi_site)[0] == pytest.approx(
            _posterior(np.array([x_base]), pi_base)[0], rel=0.03)
    assert prior.shifted_threshold(block, 0.4, 0.01) > 0.4 > prior.shifted_threshold(block, 0.4, 0.2)


def test_the_stated_stay_prevalence_becomes_a_row_prior_with_the_bases_rows_per_septic_stay() -> None:
    y = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 1])
    s = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 0], bool)
    assert prior.stay_counts(y, s) == (3, 2, 10)
    block = {"positive_rows_per_septic_stay": 1.5}
    assert prior.site_row_prior(block, 0.1, 30.0) == pytest.approx(0.005)
    assert prior.site_row_prior(block, 0.999, 1.0) == prior.PRIOR_CLIP[1]  # clipped to a plausible share
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="0 < P < 1"):
            prior.check_prevalence(block, "m:1", bad)
    with pytest.raises(ConfigError, match="fit_prior_shift.py --model m:1"):
        prior.check_prevalence(None, "m:1", 0.05)
    with pytest.raises(ConfigError, match="septic and non-septic"):
        prior.fit_prior_shift(np.full(10, 0.3), np.zeros(10), s, "no septic stay")


def test_the_shipped_feature_vector_models_carry_a_prior_shift_block() -> None:
    reg = Registry(Path(__file__).resolve().parents[1] / "models")
    for spec in ("sepsis-gbm:1", "sepsis-logreg:1", "sepsis-mlp:1", "sepsis-mlp:2"):
        block = PriorShiftSpec.model_validate(reg.get(spec).card["prior_shift"])
        assert block.fitted_on and "validation" in block.fitted_on and 0.0 < block.row_prior < block.stay_prevalence


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> dict[str, Path]:
    pytest.importorskip("lightgbm", reason="the [train] extra is part of `make test` (make install-train)")
    import pandas as pd

    from vigil.training import trainer
    from vigil.training.data import load_training_frame
    from vigil.training.gbm import GbmHyper

    root = tmp_path_factory.mktemp("onboard-prior")
    data = root / "site.parquet"
    load_training_frame(sample_path).to_parquet(data)
    bare = root / "nolabels.parquet"  # the site's sample has no label at all: the rule cannot read one
    pd.read_parquet(data).drop(columns=["SepsisLabel"]).to_parquet(bare)
    reg = root / "registry"
    ds = trainer.prepare(data, seed=7, with_sequence=False)
    path = trainer.train_family(ds, "gbm", reg, name="sepsis-gbm", members=1,
                                gbm=GbmHyper(num_leaves=7, min_child_samples=20, max_rounds=40, patience=20))
    trainer.calibrate_demand(path, data)
    Registry(reg)._write_serving({"sepsis-gbm": "1"})
    return {"root": root, "data": data, "bare": bare, "registry": reg}


def _onboard(registry: dict[str, Path], *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["onboard", "--model", "sepsis-gbm:1", "--seed", "3", "--out",
                                   str(registry["root"] / "report"), *args],
                             env={"VIGIL_MODELS_DIR": str(registry["registry"])})  # fmt: skip
    return res.exit_code, res.output


def test_vigil_onboard_moves_the_threshold_to_the_stated_prevalence_without_a_label(registry: dict[str, Path]) -> None:
    reg = Registry(registry["registry"])
    base = reg.get("sepsis-gbm:1")
    block = base.card["prior_shift"]  # written by vigil train on its validation split
    assert block["fitted_on"].startswith("validation") and block["septic_stays"] >= 1
    moved = {}
    for factor in (0.5, 2.0):
        code, out = _onboard(registry, "--data", str(registry["bare"]), "--unlabelled", "--prevalence",
                             str(block["stay_prevalence"] * factor))  # fmt: skip
        assert code == 0, out
        line = json.loads(out.strip().splitlines()[-1])
        ref = reg.get(line["model"])
        by = ref.card["onboarding"]["threshold_by_prior_shift"]
        assert ref.threshold == line["threshold"] == pytest.approx(by["threshold"], abs=1e-6)
        assert "stated prevalence" in ref.card["threshold_rule"] and by["base_threshold"] == base.threshold
        # rows per stay of the sample's fit stays (train + tune), the row prior from the base's rows per septic stay
        sp = ref.card["onboarding"]["split"]
        fit_rows, fit_stays = (sum(sp[k][c] for k in ("train", "tune")) for c in ("rows", "stays"))
        assert by["site_rows_per_stay"] == pytest.approx(fit_rows / fit_stays, abs=1e-3)
        pi = block["stay_prevalence"] * factor * block["positive_rows_per_septic_stay"] * fit_stays / fit_rows
        assert by["site_row_prior"] == pytest.approx(pi, rel=1e-4)
        # Bayes' rule, restated: the site's posterior logit at the new threshold = the base's at its threshold
        a, b = block["slope"], block["intercept"]
        lo = lambda p: np.log(p / (1 - p))  # noqa: E731
        assert a * lo(ref.threshold) + b + lo(pi) - lo(block["row_prior"]) == pytest.approx(
            a * lo(base.threshold) + b, abs=1e-3)
        # the same graph: the base's map still describes it, marked as inherited
        assert ref.card["prior_shift"]["inherited_from"] == "sepsis-gbm:1"
        assert ref.card["onboarding"]["site_sample"]["labels_used"] is False
        assert f"stated prevalence of septic stays ({by['stated_stay_prevalence']:g})" in (
            registry["root"] / "report" / "report.md").read_text()
        moved[factor] = ref.threshold
    assert moved[0.5] > moved[2.0]  # rarer sepsis at the site: a higher threshold


def test_vigil_onboard_refuses_a_prevalence_it_cannot_use(registry: dict[str, Path]) -> None:
    code, out = _onboard(registry, "--data", str(registry["data"]), "--prevalence", "0.05")
    assert code != 0 and "use it with --unlabelled" in out
    code, out = _onboard(registry, "--data", str(registry["bare"]), "--unlabelled", "--prevalence", "1.5")
    assert code != 0 and "--prevalence" in out
    versions = Registry(registry["registry"]).versions("sepsis-gbm")
    # a base without the block (trained before vigil train wrote it) is refused before any work
    from vigil.card import read_card, write_card

    card_path = registry["registry"] / "sepsis-gbm" / "1" / "card.json"
    card = read_card(card_path)
    write_card(card_path, {k: v for k, v in card.items() if k != "prior_shift"})
    try:
        code, out = _onboard(registry, "--data", str(registry["bare"]), "--unlabelled", "--prevalence", "0.05")
        assert code != 0 and "scripts/fit_prior_shift.py" in out
    finally:
        write_card(card_path, card)
    assert Registry(registry["registry"]).versions("sepsis-gbm") == versions  # nothing was registered
