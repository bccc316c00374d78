"""What "needs the resource within h hours" means on PhysioNet-layout rows (row t = hour t of a stay).

* ``sepsis_onset``: onset in ``(t, t + h]``. Onset ``t_sepsis`` = first ``SepsisLabel`` row + 6 (the
  labels are shifted 6 h early; :data:`vigil.evaluation.alerting.LABEL_SHIFT_H`). Only rows before onset
  are in the risk set: a patient at or past onset already needs the bundle and is not a future demand.
  Septic stays end about 3 h after onset in set A, so a septic patient leaves the ward soon after.
* ``news2_emergency``: a NEWS2 total >= 7 (the RCP emergency threshold: critical-care team) at some row in
  ``(t, t + h]`` of the same stay. Every row is in the risk set. A stay's end counts as no demand (the
  patient has left the ward).

>>> import numpy as np
>>> idx = stay_index(np.array([1, 0, 0, 0, 1, 0], bool), np.array([0, 0, 0, 0, 0, 0]))
>>> idx.row.tolist(), idx.n_rows.tolist()
([0, 1, 2, 3, 0, 1], [4, 2])
>>> at_risk, y = onset_within(idx._replace(onset=np.array([3, NEVER])), 2)
>>> at_risk.astype(int).tolist(), y.astype(int).tolist()
([1, 1, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0])
>>> news2_within(idx, np.array([0, 0, 7, 0, 9, 1]), 1).astype(int).tolist()
[0, 1, 0, 0, 0, 0]
>>> recent_max(idx, np.array([3, 1, 7, 0, 9, 1]), 2).tolist()  # this row and the one before, within the stay
[3, 3, 7, 7, 9, 9]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vigil.evaluation.alerting import LABEL_SHIFT_H

__all__ = ["NEEDS", "NEVER", "NEWS2_EMERGENCY", "StayIndex", "stay_index", "onset_within", "news2_within", "recent_max"]

NEEDS = ("sepsis_onset", "news2_emergency")
NEWS2_EMERGENCY = 7
NEVER = np.iinfo(np.int64).max // 4  # onset row of a stay that never becomes septic


class StayIndex(NamedTuple):
    """Per row: ``stay`` (0..S-1) and ``row`` within the stay; per stay: ``first`` row index, ``n_rows`` and
    ``onset`` row (:data:`NEVER` when not septic)."""

    stay: np.ndarray
    row: np.ndarray
    first: np.ndarray
    n_rows: np.ndarray
    onset: np.ndarray


def stay_index(stay_start: np.ndarray, sepsis_label: np.ndarray) -> StayIndex:
    """The :class:`StayIndex` of rows sorted by stay then hour (``stay_start`` True at each stay's first row)."""
    starts = np.asarray(stay_start, dtype=bool).copy()
    n = starts.shape[0]
    if n:
        starts[0] = True
    first = np.flatnonzero(starts)
    n_rows = np.diff(np.append(first, n))
    stay = np.repeat(np.arange(first.size), n_rows)
    row = np.arange(n) - np.repeat(first, n_rows)
    onset = np.full(first.size, NEVER, dtype=np.int64)
    pos = np.flatnonzero(np.asarray(sepsis_label) == 1)
    np.minimum.at(onset, stay[pos], row[pos] + LABEL_SHIFT_H)
    return StayIndex(stay, row, first, n_rows, onset)


def onset_within(idx: StayIndex, horizon_h: int) -> tuple[np.ndarray, np.ndarray]:
    """``(at_risk, y)`` per row: not yet septic (``row < onset``), and onset in ``(row, row + h]``."""
    onset = idx.onset[idx.stay]
    at_risk = idx.row < onset
    return at_risk, at_risk & (onset <= idx.row + horizon_h)


def news2_within(idx: StayIndex, news2_total: np.ndarray, horizon_h: int, level: int = NEWS2_EMERGENCY) -> np.ndarray:
    """Per row: some later row of the same stay within ``horizon_h`` rows has NEWS2 >= ``level``."""
    n = idx.stay.shape[0]
    high = np.flatnonzero(np.asarray(news2_total) >= level)
    if not high.size:
        return np.zeros(n, dtype=bool)
    nxt = np.searchsorted(high, np.arange(n), side="right")  # first high row strictly after each row
    ok = nxt < high.size
    j = high[np.minimum(nxt, high.size - 1)]
    out: np.ndarray = ok & (idx.stay[j] == idx.stay) & (j - np.arange(n) <= horizon_h)
    return out


def recent_max(idx: StayIndex, values: np.ndarray, window_h: int) -> np.ndarray:
    """Per row: the maximum of ``values`` over this row and the ``window_h - 1`` rows before it in the same stay
    (what the live job knows at that row: :class:`vigil.demand.state.DemandState` keeps the same window)."""
    v = np.asarray(values)
    out = v.copy()
    start = idx.first[idx.stay]
    at = np.arange(v.shape[0])
    for k in range(1, max(int(window_h), 1)):
        ok = at - k >= start
        out[ok] = np.maximum(out[ok], v[at[ok] - k])
    return out
