"""Robustness options of the trainer (issue 16, item 3; docs/evaluation/robustness.md).

Training-time measurement-habit augmentation (``vigil.training.augment``) on small synthetic stays: deterministic
with a seed, labels / rows / static fields never changed, only measurements removed, and each kind of thinning
does what it says (share of stays, per-stay lab keep rate, whole-variable dropout, vital cadence). The LightGBM
``transfer`` preset (``vigil train --gbm-preset transfer``) with real LightGBM on small data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.training.augment import ShiftAugment, augment_frame
from vigil.variables import LABS, STATIC, VITALS

STAYS, HOURS = 200, 24


def _frame(seed: int = 0) -> pd.DataFrame:
    """STAYS stays of HOURS hourly rows with every variable measured every hour (so every NaN is the augmentation's)."""
    rng = np.random.default_rng(seed)
    n = STAYS * HOURS
    df = pd.DataFrame({"patient_id": np.repeat([f"p{i:04d}" for i in range(STAYS)], HOURS)})
    for c in VITALS + LABS:
        df[c] = rng.normal(50.0, 10.0, n)
    for c in STATIC:
        df[c] = rng.normal(0.0, 1.0, n)
    df["ICULOS"] = np.tile(np.arange(1, HOURS + 1), STAYS).astype(float)
    df["SepsisLabel"] = (rng.random(n) < 0.1).astype(np.int64)
    return df


def _touched_stays(before: pd.DataFrame, after: pd.DataFrame) -> np.ndarray:
    cols = list(VITALS + LABS)
    changed = after[cols].isna().to_numpy().any(axis=1)
    return np.unique(after["patient_id"].to_numpy()[changed])


def test_deterministic_with_a_seed_and_different_across_seeds() -> None:
    df = _frame()
    a = augment_frame(df, ShiftAugment(), seed=3)
    b = augment_frame(df, ShiftAugment(), seed=3)
    c = augment_frame(df, ShiftAugment(), seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a[list(LABS)].isna().equals(c[list(LABS)].isna())


def test_never_changes_labels_rows_order_static_or_kept_values() -> None:
    df = _frame()
    out = augment_frame(df, ShiftAugment(share=1.0, lab_keep_min=0.0, var_drop=0.5, vitals_every=(2, 4)), seed=1)
    assert len(out) == len(df) and list(out.columns) == list(df.columns)
    assert out["SepsisLabel"].tolist() == df["SepsisLabel"].tolist()
    assert out["patient_id"].tolist() == df["patient_id"].tolist()
    pd.testing.assert_frame_equal(out[list(STATIC)], df[list(STATIC)])
    meas = list(VITALS + LABS)
    kept = out[meas].notna().to_numpy()
    assert np.array_equal(out[meas].to_numpy()[kept], df[meas].to_numpy()[kept])  # removed, never altered
    assert df[meas].notna().all().all()  # the input frame is not modified in place


def test_share_of_stays_rewritten_and_nothing_when_off() -> None:
    df = _frame()
    out = augment_frame(df, ShiftAugment(share=0.3, lab_keep_min=0.0, var_drop=0.0), seed=2)
    touched = _touched_stays(df, out).size
    assert 0.2 * STAYS <= touched <= 0.4 * STAYS  # 60 expected; binomial sd ~6.5
    pd.testing.assert_frame_equal(augment_frame(df, ShiftAugment(share=0.0), seed=2), df)
    same = ShiftAugment(share=1.0, lab_keep_min=1.0, var_drop=0.0, vitals_every=(1,))
    pd.testing.assert_frame_equal(augment_frame(df, same, seed=2), df)  # keep everything: as recorded


def test_labs_thinned_at_the_per_stay_rate() -> None:
    df = _frame()
    out = augment_frame(df, ShiftAugment(share=1.0, lab_keep_min=0.2, var_drop=0.0, vitals_every=(1,)), seed=5)
    assert out[list(VITALS)].notna().all().all()  # vitals untouched at cadence 1
    kept = out[list(LABS)].notna().to_numpy().reshape(STAYS, HOURS * len(LABS)).mean(axis=1)
    # per-stay keep rates spread over U(0.2, 1): mean ~0.6, each within [0.2 - noise, 1]
    assert 0.5 <= kept.mean() <= 0.7
    assert kept.min() >= 0.1 and kept.max() <= 1.0
    assert np.std(kept) > 0.15  # the rate varies per stay (U(0.2,1) sd = 0.23), not one global rate


def test_whole_lab_variables_dropped_per_stay() -> None:
    df = _frame()
    out = augment_frame(df, ShiftAugment(share=1.0, lab_keep_min=1.0, var_drop=0.25, vitals_every=(1,)), seed=6)
    present = out[list(LABS)].notna().to_numpy().reshape(STAYS, HOURS, len(LABS))
    per_var = present.any(axis=1)  # [stay, lab]
    assert np.array_equal(per_var, present.all(axis=1))  # a lab variable is either all there or all gone
    assert 0.2 <= 1.0 - per_var.mean() <= 0.3  # 25 % of (stay, variable) pairs removed


def test_vitals_kept_on_the_drawn_cadence() -> None:
    df = _frame()
    out = augment_frame(df, ShiftAugment(share=1.0, lab_keep_min=1.0, var_drop=0.0, vitals_every=(4,)), seed=7)
    assert out[list(LABS)].notna().all().all()
    hr = out["HR"].notna().to_numpy().reshape(STAYS, HOURS)
    assert (hr.sum(axis=1) == HOURS // 4).all()  # one row in four per stay
    hours = df["ICULOS"].to_numpy().reshape(STAYS, HOURS)
    for s in range(STAYS):
        assert np.unique(hours[s][hr[s]] % 4).size == 1  # a regular cadence (one offset per stay)
    assert np.array_equal(out[list(VITALS)].notna().to_numpy(), np.repeat(hr.reshape(-1, 1), len(VITALS), axis=1))


@pytest.mark.parametrize("bad", [{"share": 1.5}, {"lab_keep_min": -0.1}, {"var_drop": 2.0}, {"vitals_every": ()},
                                 {"vitals_every": (0,)}])  # fmt: skip
def test_invalid_settings_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        ShiftAugment(**bad)


def test_gbm_transfer_preset_fits_small_trees_and_the_default_is_unchanged() -> None:
    pytest.importorskip("lightgbm", reason="the [train] extra is part of `make test` (make install-train)")
    from dataclasses import replace

    from vigil.training import gbm

    assert gbm.PRESETS["default"] == gbm.GbmHyper()
    h = replace(gbm.PRESETS["transfer"], max_rounds=30, patience=10)
    assert (h.num_leaves, h.min_child_samples) == (7, 2000)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12_000, 5)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=1.0, size=x.shape[0])) > 1.5).astype(np.float32)
    boosters, info = gbm.fit_members(x[:9000], y[:9000], x[9000:], y[9000:], [7], h, threads=1)
    trees = boosters[0].dump_model()["tree_info"]
    assert trees and max(t["num_leaves"] for t in trees) <= 7
    assert info["best_val_auc"][0] > 0.7  # it learns the signal


def test_train_cli_offers_the_preset() -> None:
    from click.testing import CliRunner

    from vigil.cli import cli

    out = CliRunner().invoke(cli, ["train", "--help"])
    assert out.exit_code == 0 and "--gbm-preset" in out.output and "transfer" in out.output
