"""Offline inputs of the calibration and the backtest: a split of set A scored exactly as the worker scores.

:func:`score_split` rebuilds the model's patient-level split (:func:`vigil.evaluation.selection.select_rows`,
the card's seed), scores every row with :func:`vigil.offline.score_frame` (the worker's featurizer and ONNX
model) and computes the row's NEWS2 total from the same last-observed values as the worker
(:func:`vigil.news2.news2_from_last`). :func:`fit_calibration` fits the maps of
:mod:`vigil.demand.calibration` on those rows (the validation split: never the test split).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vigil.config import DemandResource
from vigil.demand.calibration import (
    HISTORY_WINDOW_H,
    NEWS2_MAX,
    Calibration,
    IsotonicMap,
    News2HistoryTable,
    News2Table,
    isotonic_fit,
    reliability,
    utc_now,
)  # fmt: skip
from vigil.demand.labels import news2_within, onset_within, recent_max, stay_index
from vigil.demand.news2_model import FEATURES, News2Model, fit_logistic
from vigil.demand.scored import ScoredRows, news2_features_of
from vigil.registry import ModelRef

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ScoredRows", "score_split", "fit_calibration", "DEFAULT_HORIZONS"]

DEFAULT_HORIZONS = (6, 12, 24)


def score_split(ref: ModelRef, data: Path, split: str | None, threads: int | None = None) -> ScoredRows:
    """Load ``split`` of ``data`` and score it (see the module docstring). Splits other than ``all`` need the
    model's training file; None: ``test`` of the training file, else ``all``
    (:func:`vigil.evaluation.selection.select_rows`)."""
    from vigil.evaluation.selection import select_rows
    from vigil.features import frame_chunks
    from vigil.news2 import news2_from_last
    from vigil.offline import score_frame
    from vigil.scoring import Scorer

    sel = select_rows(ref, Path(data), split)
    df = sel.df
    probs, stay_start = score_frame(Scorer(ref, threads=threads or max(1, min(4, os.cpu_count() or 1))), df)
    _, chunks = frame_chunks(df)
    news2 = np.concatenate([news2_from_last(inp.last_value).total for _, _, inp in chunks]).astype(np.int64)
    labels = df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
    idx = stay_index(stay_start, labels)
    units = _units(df, idx.first)
    pids = df["patient_id"].to_numpy()[idx.first].astype(str)
    return ScoredRows(probs.astype(np.float64), news2, idx, pids, units, sel.source, sel.split, list(sel.notes))


def _units(df: pd.DataFrame, first: np.ndarray) -> list[str | None]:
    """ICU unit of each stay (its first row), as the replay names it: Unit1 -> MICU, Unit2 -> SICU, else None."""

    def col(name: str) -> list[float]:
        if name not in df.columns:
            return [0.0] * first.size
        return df[name].to_numpy(dtype=np.float64, na_value=np.nan)[first].tolist()  # type: ignore[no-any-return]

    return ["MICU" if a == 1 else "SICU" if b == 1 else None for a, b in zip(col("Unit1"), col("Unit2"), strict=True)]


def fit_calibration(
    rows: ScoredRows, ref: ModelRef, horizons: Sequence[int] = DEFAULT_HORIZONS, min_bin_rows: int = 200,
    seed: int | None = None, history_window_h: int = HISTORY_WINDOW_H, history_prior_rows: float = 50.0,
    ward_effect: bool = True, resources: Sequence[DemandResource] | None = None, news2_model: bool = True,
    news2_l2: float = 1.0,
) -> Calibration:  # fmt: skip
    """Fit the maps for every horizon on ``rows`` and record the in-sample reliability; with ``news2_model`` the
    logistic model of NEWS2 >= 7 on the last 24 h (:mod:`vigil.demand.news2_model`); with ``ward_effect``
    also the shared ward effect (:mod:`vigil.demand.dispersion`) of ``resources`` (default: the default
    resources' rules)."""
    sepsis: dict[int, IsotonicMap] = {}
    news2: dict[int, News2Table] = {}
    history: dict[int, News2HistoryTable] = {}
    check: dict[str, dict[str, object]] = {"sepsis_onset": {}, "news2_emergency": {}, "news2_history": {},
                                           "news2_model": {}}  # fmt: skip
    models: dict[int, News2Model] = {}
    features = news2_features_of(rows) if news2_model else None
    totals = np.clip(rows.news2, 0, NEWS2_MAX)
    cell = totals * (NEWS2_MAX + 1) + np.maximum(recent_max(rows.idx, totals, history_window_h), totals)
    size = (NEWS2_MAX + 1) ** 2
    for h in sorted({int(x) for x in horizons}):
        at_risk, y = onset_within(rows.idx, h)
        x, yy = rows.risk[at_risk], y[at_risk].astype(np.float64)
        kx, ky = isotonic_fit(x, yy, min_bin_rows)
        sepsis[h] = IsotonicMap(kx, ky, float(yy.mean()))
        check["sepsis_onset"][str(h)] = {**reliability(sepsis[h](x), yy), "positives": int(yy.sum())}
        y2 = news2_within(rows.idx, rows.news2, h).astype(np.float64)
        counts = np.bincount(totals, minlength=NEWS2_MAX + 1).astype(np.float64)
        pos = np.bincount(totals, weights=y2, minlength=NEWS2_MAX + 1)
        news2[h] = News2Table(counts, pos, float(y2.mean()))
        check["news2_emergency"][str(h)] = {**reliability(news2[h].rates()[totals], y2), "positives": int(y2.sum())}
        shape = (NEWS2_MAX + 1, NEWS2_MAX + 1)
        history[h] = News2HistoryTable(np.bincount(cell, minlength=size).astype(np.float64).reshape(shape),
                                       np.bincount(cell, weights=y2, minlength=size).reshape(shape),
                                       history_window_h, history_prior_rows)  # fmt: skip
        grid = history[h].rates(news2[h].rates()).reshape(-1)
        check["news2_history"][str(h)] = {**reliability(grid[cell], y2), "positives": int(y2.sum())}
        if features is not None:
            lr = News2Model(fit_logistic(features, y2, l2=news2_l2))
            kx, ky = isotonic_fit(lr.logistic(features), y2, max(min_bin_rows, 500))
            models[h] = News2Model(lr.weights, kx, ky)
            check["news2_model"][str(h)] = {**reliability(models[h](features), y2), "positives": int(y2.sum())}
    meta = {
        "created_at": utc_now(),
        "fitted_on": {"data": rows.source, "split": rows.split, "seed": seed, "stays": int(rows.idx.first.size),
                      "rows": int(rows.risk.size), "notes": rows.notes},
        "method": {
            "sepsis_onset": f"isotonic regression (PAV) of onset in (t, t+h] on the model score over rows not yet "
                            f"septic; bins of >= {min_bin_rows} rows; linear between pooled blocks",
            "news2_emergency": "frequency of NEWS2 >= 7 in (t, t+h] per current NEWS2 total (0-20), all rows",
            "news2_history": f"frequency of NEWS2 >= 7 in (t, t+h] per (current total, highest total of the last "
                             f"{history_window_h} rows), shrunk to the current total's frequency with "
                             f"{history_prior_rows:g} pseudo-rows",
            **({"news2_model": f"logistic regression (IRLS, L2 {news2_l2:g}) of NEWS2 >= 7 in (t, t+h] on "
                               f"{len(FEATURES)} features of the NEWS2 course of the last 24 h, all rows, then "
                               f"isotonic regression of its output (bins of >= {max(min_bin_rows, 500)} rows)"}
               if features is not None else {}),
        },
        "feature_hash": ref.feature_hash,
        "in_sample_reliability": check,
    }  # fmt: skip
    cal = Calibration(ref.name, ref.version, sepsis, news2, meta, history, news2_model=models)
    if not ward_effect:
        return cal
    from dataclasses import replace

    from vigil.config import DemandSettings
    from vigil.demand.dispersion import FIT_CONCURRENCY, fit_ward_effect

    effect = fit_ward_effect(rows, cal, resources or DemandSettings().resources, cal.horizons)
    sizes = " and ".join(map(str, FIT_CONCURRENCY))
    meta["method"]["ward_effect"] = (f"maximum likelihood of the realised counts of the split replayed as wards "
                                     f"(Poisson admissions, {sizes} patients)")  # fmt: skip
    return replace(cal, ward_effect=effect)


def calibration_split(ref: ModelRef, data: Path) -> str:
    """The split a calibration is fitted on: ``validation`` of the model's training file, else ``all`` (a site's
    own data, e.g. another hospital's: keep the stays you evaluate on out of it)."""
    from vigil.evaluation.selection import card_training

    src = card_training(ref).get("source_file")
    return "validation" if src and Path(data).name == src else "all"


def calibrate_version(
    ref: ModelRef, data: Path, horizons: Sequence[int] = DEFAULT_HORIZONS, min_bin_rows: int = 200,
    *, out: Path | None = None, threads: int | None = None, split: str | None = None,
) -> tuple[Calibration, Path]:  # fmt: skip
    """Fit ``ref``'s demand calibration and write it: the one code path of ``vigil demand calibrate`` and of
    ``vigil train`` (which calibrates every version it registers).

    ``data`` is the model's training file: its validation split is rebuilt with the card's split seed (and
    the card's ``training.max_stays`` subset, see :func:`vigil.evaluation.selection.select_rows`), scored by
    :func:`score_split` and fitted by :func:`fit_calibration`. Other data (a site refitting on its own stays)
    is used whole (``split``: default :func:`calibration_split`). Written to ``out``, else the version
    folder's ``demand_calibration.json``; returns the calibration and the path written."""
    from vigil.demand.calibration import CALIBRATION_FILE

    rows = score_split(ref, Path(data), split or calibration_split(ref, Path(data)), threads=threads)
    seed = ref.model_card.split_seed
    cal = fit_calibration(rows, ref, tuple(horizons) or DEFAULT_HORIZONS, min_bin_rows=min_bin_rows, seed=seed)
    return cal, cal.save(Path(out) if out is not None else ref.path / CALIBRATION_FILE)


__all__ += ["calibrate_version", "calibration_split", "news2_features_of"]
