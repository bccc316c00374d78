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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vigil.demand.calibration import NEWS2_MAX, Calibration, IsotonicMap, News2Table, isotonic_fit, reliability, utc_now
from vigil.demand.labels import StayIndex, news2_within, onset_within, stay_index
from vigil.registry import ModelRef

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ScoredRows", "score_split", "fit_calibration", "DEFAULT_HORIZONS"]

DEFAULT_HORIZONS = (6, 12, 24)


@dataclass
class ScoredRows:
    """Per row: the model's ``risk`` and the ``news2`` total; per stay (``idx``): the patient id and ICU unit."""

    risk: np.ndarray
    news2: np.ndarray
    idx: StayIndex
    patient_ids: np.ndarray
    units: list[str | None]
    source: str
    split: str
    notes: list[str] = field(default_factory=list)


def score_split(ref: ModelRef, data: Path, split: str, threads: int | None = None) -> ScoredRows:
    """Load ``split`` of ``data`` (the model's training file) and score it (see the module docstring)."""
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
    seed: int | None = None,
) -> Calibration:  # fmt: skip
    """Fit both maps for every horizon on ``rows`` and record the in-sample reliability."""
    sepsis: dict[int, IsotonicMap] = {}
    news2: dict[int, News2Table] = {}
    check: dict[str, dict[str, object]] = {"sepsis_onset": {}, "news2_emergency": {}}
    totals = np.clip(rows.news2, 0, NEWS2_MAX)
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
    meta = {
        "created_at": utc_now(),
        "fitted_on": {"data": rows.source, "split": rows.split, "seed": seed, "stays": int(rows.idx.first.size),
                      "rows": int(rows.risk.size), "notes": rows.notes},
        "method": {
            "sepsis_onset": f"isotonic regression (PAV) of onset in (t, t+h] on the model score over rows not yet "
                            f"septic; bins of >= {min_bin_rows} rows; linear between pooled blocks",
            "news2_emergency": "frequency of NEWS2 >= 7 in (t, t+h] per current NEWS2 total (0-20), all rows",
        },
        "feature_hash": ref.feature_hash,
        "in_sample_reliability": check,
    }  # fmt: skip
    return Calibration(ref.name, ref.version, sepsis, news2, meta)
