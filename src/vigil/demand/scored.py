"""The scored rows of one split (:class:`ScoredRows`): the shared input of the calibration fit
(:mod:`vigil.demand.fitting`), the backtest (:mod:`vigil.demand.backtest`) and the ward-effect fit
(:mod:`vigil.demand.dispersion`). Kept below all three so that they import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vigil.demand.labels import StayIndex
from vigil.demand.news2_model import history_features

__all__ = ["ScoredRows", "news2_features_of"]


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


def news2_features_of(rows: ScoredRows) -> np.ndarray:
    """:func:`vigil.demand.news2_model.history_features` of every row of ``rows`` (the live job's inputs)."""
    return history_features(rows.news2, rows.idx.row, rows.idx.first[rows.idx.stay])
