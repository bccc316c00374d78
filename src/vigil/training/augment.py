"""Training-time measurement-habit augmentation (issue 16, item 3: robustness of the base model across sites).

A hospital's charting habits leak into the features: how often labs are ordered (``*_hours_since``,
``labs_count8h``), which variables are interfaced at all (missing -> the normal reference value), and how often
vitals are charted (``*_count8h``, the 6-h aggregates). A model trained at one site learns those habits with the
physiology. :func:`augment_frame` rewrites a seeded share of the *training* stays the way another site might have
recorded them, before featurizing, so that the trees see the same physiology under varied habits:

* **lab thinning**: each rewritten stay draws its own keep probability ``U(lab_keep_min, 1)`` and every lab
  result of the stay is kept with it (a site that orders fewer labs; the ordering frequency varies per stay);
* **variable dropout**: each lab variable of a rewritten stay is removed entirely with probability ``var_drop``
  (a site that does not measure or interface it);
* **vital cadence**: each rewritten stay draws a charting interval from ``vitals_every`` (hours); vitals are kept
  only on ICU hours ``ICULOS % k == offset`` (a random offset per stay), as in ``vigil evaluate --shifts``'s
  ``vitals_q2h`` / ``vitals_q4h``.

Only measurements are removed (set to NaN): rows, stays, static fields and ``SepsisLabel`` are never changed, so
the labels and the number of training rows stay the same. Deterministic for a given seed and frame. Measured in
``docs/evaluation/robustness.md`` (``scripts/robust_units.py``).

>>> import pandas as pd
>>> df = pd.DataFrame({"patient_id": ["a"] * 4 + ["b"] * 4, "ICULOS": [1, 2, 3, 4] * 2,
...                    "HR": [80.0] * 8, "Lactate": [2.0] * 8, "SepsisLabel": [0, 0, 1, 1] * 2})
>>> out = augment_frame(df, ShiftAugment(share=1.0, lab_keep_min=0.0, var_drop=0.0, vitals_every=(2,)), seed=1)
>>> out["SepsisLabel"].tolist() == df["SepsisLabel"].tolist(), int(out["HR"].notna().sum())
(True, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vigil.variables import LABS, VITALS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ShiftAugment", "augment_frame", "describe"]


@dataclass(frozen=True, slots=True)
class ShiftAugment:
    """What :func:`augment_frame` does to a seeded ``share`` of the stays (the others are left as recorded)."""

    share: float = 0.5  # share of the stays rewritten (whole stays)
    lab_keep_min: float = 0.3  # each rewritten stay keeps its lab results with probability U(lab_keep_min, 1)
    var_drop: float = 0.1  # each lab variable of a rewritten stay is removed entirely with this probability
    vitals_every: tuple[int, ...] = (1, 2, 4)  # charting interval (h) drawn per rewritten stay; 1 = as recorded

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError("ShiftAugment.share must be within [0, 1]")
        if not 0.0 <= self.lab_keep_min <= 1.0:
            raise ValueError("ShiftAugment.lab_keep_min must be within [0, 1]")
        if not 0.0 <= self.var_drop <= 1.0:
            raise ValueError("ShiftAugment.var_drop must be within [0, 1]")
        if not self.vitals_every or any(int(k) < 1 for k in self.vitals_every):
            raise ValueError("ShiftAugment.vitals_every must be one or more intervals >= 1 h")


def describe(a: ShiftAugment) -> str:
    """One line for the model card."""
    every = "/".join(str(int(k)) for k in a.vitals_every)
    return (f"measurement-habit augmentation on {a.share:.0%} of training stays: lab results kept with a per-stay"
            f" probability U({a.lab_keep_min:g}, 1), each lab variable removed with probability {a.var_drop:g},"
            f" vitals charted every {every} h (drawn per stay); labels unchanged")  # fmt: skip


def augment_frame(df: pd.DataFrame, aug: ShiftAugment, seed: int) -> pd.DataFrame:
    """A copy of the PhysioNet-layout frame ``df`` (sorted by stay then hour, ``patient_id`` column) in which a
    seeded ``aug.share`` of the stays is recorded with other habits (see the module docstring). Only measurement
    columns become NaN; every other column, the row count and the order are unchanged."""
    out = df.copy()
    n = len(out)
    if n == 0 or aug.share <= 0.0:
        return out
    pid = out["patient_id"].to_numpy()
    start = np.ones(n, dtype=bool)
    start[1:] = pid[1:] != pid[:-1]
    stay = np.cumsum(start) - 1  # stay index of every row
    n_stays = int(stay[-1]) + 1
    rng = np.random.default_rng(seed)
    # every draw is made for every stay (picked or not), so one stay's draws do not depend on the share
    picked = rng.random(n_stays) < aug.share
    keep_p = aug.lab_keep_min + (1.0 - aug.lab_keep_min) * rng.random(n_stays)
    labs = [c for c in LABS if c in out.columns]
    dropped = rng.random((n_stays, len(LABS))) < aug.var_drop
    every = np.asarray(aug.vitals_every, dtype=np.int64)[rng.integers(0, len(aug.vitals_every), n_stays)]
    offset = rng.integers(0, np.iinfo(np.int32).max, n_stays) % every
    row_u = rng.random((n, len(LABS)))

    picked_row = picked[stay]
    for j, c in enumerate(LABS):
        if c not in labs:
            continue
        remove = picked_row & ((row_u[:, j] >= keep_p[stay]) | dropped[stay, j])
        v = out[c].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        v[remove] = np.nan
        out[c] = v
    if "ICULOS" in out.columns:
        hour = np.nan_to_num(out["ICULOS"].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0).astype(np.int64)
    else:
        hour = np.arange(n) - np.flatnonzero(start)[stay]
    off_cadence = picked_row & (hour % every[stay] != offset[stay])
    for c in VITALS:
        if c in out.columns:
            v = out[c].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
            v[off_cadence] = np.nan
            out[c] = v
    return out
