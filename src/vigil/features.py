"""The featurizer: one piece of code for the streaming worker and the offline trainer.

A row ``t`` of an ICU stay is described by a :class:`FeatureInput` (the last :data:`WINDOW` hourly rows,
the last value and its age for every variable, and the static context). The streaming worker builds it
from its per-patient ring buffer; the trainer builds it for every row of many stays at once with
:func:`inputs_for_rows`. :func:`featurize` turns either into the same feature matrix, so a model sees
exactly the same numbers offline and online.

Feature groups (after the lessons of the PhysioNet/CinC 2019 winners: forward fill, measurement counts,
min/max over ~6 h, shock index, partial SOFA):

* ``<var>_locf`` (34): last observed value; never measured -> a fixed normal reference value
  (:data:`NORMAL_VALUES`), so "not measured" reads as "presumed normal", as a clinician would.
* ``<var>_hours_since`` (34): hours since the last measurement, capped at :data:`HOURS_CAP`;
  never measured counts as the cap. Sparse labs are ordered when someone is worried: the age of a lab is
  itself informative.
* vitals (8 x 4): mean/min/max over the last 6 h (hours t-5..t) and the change of the current value
  against the value 5-7 h earlier; no measurement -> the LOCF value / no change.
* measurement counts in the 8-h window: one per vital, one for all labs together.
* derived from the LOCF values: shock index HR/SBP, pulse pressure, BUN/creatinine ratio, partial SOFA
  (platelets, bilirubin, MAP < 70, creatinine and their sum), NEWS2 total and parts, partial qSOFA,
  SIRS count (see :mod:`vigil.news2`).
* static: age, sex, ICU unit (NaN -> 0 with an "unknown" flag), hospital-to-ICU hours, ICULOS.

All outputs are finite: inputs are clipped to +-1e5 (no variable in PhysioNet comes near it) and every
division has a floored denominator. A value of 0 is a real measurement: only NaN means "not measured".

>>> import numpy as np
>>> from vigil.variables import VARIABLES
>>> v = np.full((3, len(VARIABLES)), np.nan, dtype=np.float32); v[:, 0] = [80, np.nan, 120]
>>> st = np.tile(np.array([60, 1, 1, 0, -5, 1], dtype=np.float32), (3, 1)); st[:, 5] = [1, 2, 3]
>>> x = featurize(inputs_for_rows(v, st, np.array([True, False, False])))
>>> x.shape == (3, len(FEATURE_NAMES)), bool(np.isfinite(x).all())
(True, True)
>>> x[:, FEATURE_NAMES.index("HR_locf")].tolist(), x[:, FEATURE_NAMES.index("HR_hours_since")].tolist()
([80.0, 80.0, 120.0], [0.0, 1.0, 0.0])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vigil.news2 import news2_from_last, qsofa_from_last, sirs_from_last
from vigil.variables import STATIC, STATIC_INDEX, VAR_INDEX, VARIABLES, VITALS

if TYPE_CHECKING:  # pandas is a training/offline dependency only
    import pandas as pd

__all__ = [
    "WINDOW",
    "RECENT_H",
    "HOURS_CAP",
    "FEATURIZER_VERSION",
    "NORMAL_VALUES",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA_HASH",
    "FeatureInput",
    "featurize",
    "inputs_for_rows",
    "featurize_frame",
    "frame_chunks",
    "schema_hash",
    "SEQUENCE_NAMES",
    "SEQUENCE_SCHEMA_HASH",
    "sequence",
]

WINDOW: int = 8  # hours of history in the window (row t and the 7 before it)
RECENT_H: int = 6  # hours for the vital-sign mean/min/max
HOURS_CAP: float = 72.0  # cap of the hours-since-last-measurement features
FEATURIZER_VERSION: str = "vigil.features/1"
_CLIP: float = 1e5
_V = len(VARIABLES)
_NV = len(VITALS)

# Normal adult reference values (PhysioNet units, see vigil.variables.CANONICAL_UNITS) used in place of a
# variable that was never measured in the stay.
NORMAL_VALUES: dict[str, float] = {
    "HR": 80.0, "O2Sat": 97.0, "Temp": 37.0, "SBP": 120.0, "MAP": 85.0, "DBP": 70.0, "Resp": 16.0,
    "EtCO2": 35.0, "BaseExcess": 0.0, "HCO3": 24.0, "FiO2": 0.21, "pH": 7.40, "PaCO2": 40.0,
    "SaO2": 97.0, "AST": 25.0, "BUN": 14.0, "Alkalinephos": 80.0, "Calcium": 9.2, "Chloride": 102.0,
    "Creatinine": 0.9, "Bilirubin_direct": 0.2, "Glucose": 110.0, "Lactate": 1.2, "Magnesium": 2.0,
    "Phosphate": 3.5, "Potassium": 4.1, "Bilirubin_total": 0.7, "TroponinI": 0.01, "Hct": 40.0,
    "Hgb": 13.5, "PTT": 30.0, "WBC": 8.0, "Fibrinogen": 300.0, "Platelets": 250.0,
}  # fmt: skip
_AGE_DEFAULT = 62.0  # median adult ICU age, used only if Age is unknown

_DERIVED: tuple[str, ...] = (
    "shock_index", "pulse_pressure", "bun_creatinine_ratio",
    "sofa_platelets", "sofa_bilirubin", "sofa_map", "sofa_creatinine", "sofa_partial",
    "news2_total", "news2_resp_rate", "news2_spo2", "news2_air_or_oxygen", "news2_systolic_bp",
    "news2_pulse", "news2_temperature", "qsofa_partial", "sirs_count",
)  # fmt: skip
_STATIC_FEATURES: tuple[str, ...] = (
    "age", "gender_male", "gender_unknown", "unit_micu", "unit_sicu", "unit_unknown",
    "hosp_adm_time", "iculos",
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"{v}_locf" for v in VARIABLES)
    + tuple(f"{v}_hours_since" for v in VARIABLES)
    + tuple(f"{v}_{agg}" for v in VITALS for agg in ("mean6h", "min6h", "max6h", "delta6h"))
    + tuple(f"{v}_count8h" for v in VITALS)
    + ("labs_count8h",)
    + _DERIVED
    + _STATIC_FEATURES
)


def schema_hash(names: tuple[str, ...] | list[str], window: int, version: str) -> str:
    """``sha256:<hex>`` over the canonical JSON of the feature names, window and featurizer version."""
    payload = json.dumps(
        {"featurizer_version": version, "names": list(names), "window": int(window)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(payload.encode("ascii")).hexdigest()


FEATURE_SCHEMA_HASH: str = schema_hash(FEATURE_NAMES, WINDOW, FEATURIZER_VERSION)

# The hourly sequence that temporal models read beside the feature vector: for each of the WINDOW hours
# t-W+1..t, every variable's value carried forward (see :func:`sequence`) and whether it was measured in
# that hour.
SEQUENCE_NAMES: tuple[str, ...] = tuple(f"{v}_value" for v in VARIABLES) + tuple(
    f"{v}_measured" for v in VARIABLES
)
SEQUENCE_VERSION: str = "vigil.features.sequence/1"
SEQUENCE_SCHEMA_HASH: str = schema_hash(SEQUENCE_NAMES, WINDOW, SEQUENCE_VERSION)

_NORMAL_ARR = np.array([NORMAL_VALUES[v] for v in VARIABLES], dtype=np.float64)
_I = VAR_INDEX
_S = STATIC_INDEX


@dataclass(frozen=True, slots=True)
class FeatureInput:
    """What the featurizer needs for a batch of B scored rows (V = 34 variables, W = :data:`WINDOW`).

    * ``window`` float32 [B, W, V]: hourly rows t-W+1..t (``window[:, -1]`` is row t); NaN = not measured
      in that hour, and every row before the stay's first row is NaN.
    * ``last_value`` float32 [B, V]: last measured value at or before t (NaN = never measured).
    * ``hours_since`` float32 [B, V]: t minus the row of that measurement (NaN = never measured).
    * ``static`` float32 [B, 6] in :data:`vigil.variables.STATIC` order (ICULOS of row t); NaN = unknown.
    """

    window: np.ndarray
    last_value: np.ndarray
    hours_since: np.ndarray
    static: np.ndarray

    def __len__(self) -> int:
        return int(self.last_value.shape[0])

    def take(self, rows: slice | np.ndarray) -> FeatureInput:
        """The inputs of a subset of rows (a view for slices)."""
        return FeatureInput(
            self.window[rows], self.last_value[rows], self.hours_since[rows], self.static[rows]
        )


def _check(inp: FeatureInput) -> int:
    b = inp.last_value.shape[0] if inp.last_value.ndim == 2 else -1
    shapes = {
        "window": (inp.window.shape, (b, WINDOW, _V)),
        "last_value": (inp.last_value.shape, (b, _V)),
        "hours_since": (inp.hours_since.shape, (b, _V)),
        "static": (inp.static.shape, (b, len(STATIC))),
    }
    for name, (got, want) in shapes.items():
        if tuple(got) != want:
            raise ValueError(f"FeatureInput.{name}: expected shape {want}, got {tuple(got)}")
    return b


def _f64(a: np.ndarray) -> np.ndarray:
    """Float64 copy clipped to +-_CLIP (NaN stays NaN, +-inf becomes +-_CLIP). Never aliases the input."""
    return np.clip(np.asarray(a, dtype=np.float64), -_CLIP, _CLIP)


def _steps(x: np.ndarray, cuts: tuple[float, ...], strict: bool) -> np.ndarray:
    """Number of cut-offs passed: ``x >= cut`` (strict=False) or ``x < cut`` (strict=True, descending)."""
    if strict:
        return np.sum([x < c for c in cuts], axis=0, dtype=np.float64)
    return np.sum([x >= c for c in cuts], axis=0, dtype=np.float64)


def featurize(inp: FeatureInput) -> np.ndarray:
    """Feature matrix float32 [B, F] (F = ``len(FEATURE_NAMES)``) of a batch; pure and deterministic.

    Each row depends on its own inputs only, so a batch of one and a batch of many give the same row.
    """
    b = _check(inp)
    last = _f64(inp.last_value)
    known = ~np.isnan(last)
    filled = np.where(known, last, _NORMAL_ARR)
    hs = np.asarray(inp.hours_since, dtype=np.float64)
    hours = np.where(np.isnan(hs), HOURS_CAP, np.clip(hs, 0.0, HOURS_CAP))

    # --- vital-sign window aggregates
    vw = _f64(inp.window[:, :, :_NV])  # [B, W, 8]
    recent = vw[:, -RECENT_H:, :]
    m = ~np.isnan(recent)
    n = m.sum(axis=1)
    has = n > 0
    fv = filled[:, :_NV]
    mean = np.where(has, np.where(m, recent, 0.0).sum(axis=1) / np.maximum(n, 1), fv)
    vmin = np.where(has, np.where(m, recent, np.inf).min(axis=1), fv)
    vmax = np.where(has, np.where(m, recent, -np.inf).max(axis=1), fv)
    past = np.full((b, _NV), np.nan)
    for w in range(WINDOW - RECENT_H, -1, -1):  # latest measured of hours t-5, t-6, t-7
        past = np.where(np.isnan(past), vw[:, w, :], past)
    delta = np.where(known[:, :_NV] & ~np.isnan(past), last[:, :_NV] - past, 0.0)
    vit_agg = np.stack([mean, vmin, vmax, delta], axis=2).reshape(b, _NV * 4)
    counts = (~np.isnan(inp.window[:, :, :_NV])).sum(axis=1).astype(np.float64)
    lab_count = (~np.isnan(inp.window[:, :, _NV:])).sum(axis=(1, 2)).astype(np.float64)

    # --- derived scores from the LOCF values (never-measured -> normal)
    hr, sbp, dbp, mapp = (filled[:, _I[k]] for k in ("HR", "SBP", "DBP", "MAP"))
    bun, cr, plt, bili = (filled[:, _I[k]] for k in ("BUN", "Creatinine", "Platelets", "Bilirubin_total"))
    shock = hr / np.maximum(sbp, 1.0)
    pulse_p = sbp - dbp
    bun_cr = bun / np.maximum(cr, 0.1)
    s_plt = _steps(plt, (150.0, 100.0, 50.0, 20.0), strict=True)
    s_bili = _steps(bili, (1.2, 2.0, 6.0, 12.0), strict=False)
    s_map = (mapp < 70.0).astype(np.float64)
    s_cr = _steps(cr, (1.2, 2.0, 3.5, 5.0), strict=False)
    sofa = s_plt + s_bili + s_map + s_cr
    nw = news2_from_last(last)  # FiO2 > 0.21 -> on oxygen (percent values converted there)
    nw_parts = nw.parts[:, [0, 1, 2, 3, 4, 6]].astype(np.float64)  # consciousness is never known here
    q = qsofa_from_last(last).total.astype(np.float64)
    si = sirs_from_last(last).total.astype(np.float64)
    derived = np.column_stack(
        [
            shock,
            pulse_p,
            bun_cr,
            s_plt,
            s_bili,
            s_map,
            s_cr,
            sofa,
            nw.total.astype(np.float64),
            nw_parts,
            q,
            si,
        ]
    )

    # --- static context
    st = _f64(inp.static)
    age = np.where(np.isnan(st[:, _S["Age"]]), _AGE_DEFAULT, st[:, _S["Age"]])
    g = st[:, _S["Gender"]]
    u1, u2 = st[:, _S["Unit1"]], st[:, _S["Unit2"]]
    unit_unknown = np.isnan(u1) & np.isnan(u2)
    static_f = np.column_stack(
        [
            age,
            np.nan_to_num(g, nan=0.0),
            np.isnan(g).astype(np.float64),
            np.nan_to_num(u1, nan=0.0),
            np.nan_to_num(u2, nan=0.0),
            unit_unknown.astype(np.float64),
            np.nan_to_num(st[:, _S["HospAdmTime"]], nan=0.0),
            np.nan_to_num(st[:, _S["ICULOS"]], nan=0.0),
        ]
    )

    x = np.concatenate([filled, hours, vit_agg, counts, lab_count[:, None], derived, static_f], axis=1)
    # Safety net only: every group above is finite by construction.
    x = np.nan_to_num(x, nan=0.0, posinf=_CLIP, neginf=-_CLIP)
    return x.astype(np.float32)


def sequence(inp: FeatureInput) -> np.ndarray:
    """Hourly sequence float32 [B, W, 2V] (:data:`SEQUENCE_NAMES` per hour) for temporal models.

    Values are carried forward inside the window; hours before the window's first measurement of a
    variable take that first measurement, and a variable not measured in the window takes its last
    value (older than the window) or, never measured, the normal reference value. Causal: row t's
    sequence uses rows <= t only, and each row depends on its own inputs only.

    >>> from vigil.variables import VARIABLES
    >>> w = np.full((1, WINDOW, len(VARIABLES)), np.nan, dtype=np.float32); w[0, 3, 0] = 90; w[0, 6, 0] = 100
    >>> inp = FeatureInput(w, w[:, -2].copy() * 0 + w[0, 6], np.zeros((1, len(VARIABLES)), np.float32),
    ...                    np.zeros((1, 6), np.float32))
    >>> sequence(inp)[0, :, 0].tolist(), sequence(inp)[0, :, len(VARIABLES)].tolist()
    ([90.0, 90.0, 90.0, 90.0, 90.0, 90.0, 100.0, 100.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    """
    _check(inp)
    w = _f64(inp.window)  # [B, W, V]
    measured = ~np.isnan(w)
    last = _f64(inp.last_value)
    base = np.where(np.isnan(last), _NORMAL_ARR, last)  # [B, V]
    first = np.full_like(base, np.nan)
    for i in range(WINDOW - 1, -1, -1):  # the first measurement inside the window
        first = np.where(measured[:, i], w[:, i], first)
    carry = np.where(np.isnan(first), base, first)
    vals = np.empty_like(w)
    for i in range(WINDOW):
        carry = np.where(measured[:, i], w[:, i], carry)
        vals[:, i] = carry
    return np.concatenate([vals, measured.astype(np.float64)], axis=2).astype(np.float32)


def inputs_for_rows(values: np.ndarray, static: np.ndarray, stay_start: np.ndarray) -> FeatureInput:
    """Causal :class:`FeatureInput` for every row of many stays concatenated in time order.

    ``values`` float32 [N, V] hourly rows; ``static`` [N, 6]; ``stay_start`` bool [N], True at each stay's
    first row (row 0 always starts a stay). Row t sees rows <= t of its own stay only, exactly as the
    streaming ring buffer does: ``window[t, w] = values[t - W + 1 + w]`` when that row is in the same stay,
    else NaN; ``last_value``/``hours_since`` come from a forward fill that restarts at every stay.
    Vectorised: a loop over the W window offsets only.
    """
    vals = np.asarray(values, dtype=np.float32)
    if vals.ndim != 2 or vals.shape[1] != _V:
        raise ValueError(f"inputs_for_rows: values must be [N, {_V}], got {vals.shape}")
    n = vals.shape[0]
    st = np.asarray(static, dtype=np.float32)
    starts = np.asarray(stay_start, dtype=bool)
    if st.shape != (n, len(STATIC)) or starts.shape != (n,):
        raise ValueError("inputs_for_rows: static must be [N, 6] and stay_start [N]")
    idx = np.arange(n, dtype=np.int64)
    start_idx = np.maximum.accumulate(np.where(starts, idx, 0)) if n else idx
    pos = idx - start_idx

    window = np.full((n, WINDOW, _V), np.nan, dtype=np.float32)
    for w in range(WINDOW):
        lag = WINDOW - 1 - w
        ok = pos >= lag
        window[ok, w, :] = vals[idx[ok] - lag]

    last_idx = np.where(~np.isnan(vals), idx[:, None], -1)
    np.maximum.accumulate(last_idx, axis=0, out=last_idx)
    valid = last_idx >= start_idx[:, None]
    safe = np.where(valid, last_idx, 0)
    last_value = np.where(valid, np.take_along_axis(vals, safe, axis=0), np.float32(np.nan)).astype(
        np.float32
    )
    hours_since = np.where(valid, (idx[:, None] - last_idx).astype(np.float32), np.float32(np.nan))
    return FeatureInput(
        window=window, last_value=last_value, hours_since=hours_since.astype(np.float32), static=st.copy()
    )


def _frame_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(df)
    values = np.full((n, _V), np.nan, dtype=np.float32)
    for j, v in enumerate(VARIABLES):
        if v in df.columns:
            values[:, j] = df[v].to_numpy(dtype=np.float32, na_value=np.nan)
    static = np.full((n, len(STATIC)), np.nan, dtype=np.float32)
    for j, s in enumerate(STATIC):
        if s in df.columns:
            static[:, j] = df[s].to_numpy(dtype=np.float32, na_value=np.nan)
    if "patient_id" in df.columns:
        pid = df["patient_id"].to_numpy()
        stay_start = np.ones(n, dtype=bool)
        stay_start[1:] = pid[1:] != pid[:-1]
    else:
        stay_start = np.zeros(n, dtype=bool)
        stay_start[:1] = True
    return values, static, stay_start


def frame_chunks(
    df: pd.DataFrame, chunk_rows: int = 131_072
) -> tuple[np.ndarray, Iterator[tuple[int, int, FeatureInput]]]:
    """(stay_start bool [N], an iterator of ``(a, b, FeatureInput of rows a..b-1)``) over a
    PhysioNet-layout frame sorted by stay then hour, in chunks cut at stay boundaries (bounded memory).

    A new stay starts wherever ``patient_id`` changes (no ``patient_id`` column: one stay). Missing
    variable columns are treated as never measured.
    """
    values, static, stay_start = _frame_arrays(df)
    n = values.shape[0]
    starts = np.flatnonzero(stay_start)
    if n:
        at = np.searchsorted(starts, np.arange(0, n, max(int(chunk_rows), 1)))
        cuts = np.unique(starts[np.minimum(at, len(starts) - 1)])
    else:
        cuts = starts
    bounds = [*cuts.tolist(), n]

    def chunks() -> Iterator[tuple[int, int, FeatureInput]]:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            yield a, b, inputs_for_rows(values[a:b], static[a:b], stay_start[a:b])

    return stay_start, chunks()


def featurize_frame(df: pd.DataFrame, chunk_rows: int = 131_072) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [N, F], stay_start bool [N]) of a PhysioNet-layout frame sorted by stay then hour
    (see :func:`frame_chunks`); the result does not depend on ``chunk_rows``.
    """
    stay_start, chunks = frame_chunks(df, chunk_rows)
    x = np.empty((stay_start.shape[0], len(FEATURE_NAMES)), dtype=np.float32)
    for a, b, inp in chunks:
        x[a:b] = featurize(inp)
    return x, stay_start
