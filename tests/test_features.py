"""Contract tests of the featurizer: shapes, finiteness, purity, causality and stream/offline parity."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest

from vigil import features as F
from vigil.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_HASH,
    WINDOW,
    FeatureInput,
    featurize,
    featurize_frame,
    inputs_for_rows,
)
from vigil.variables import STATIC, VAR_INDEX, VARIABLES

V = len(VARIABLES)
NF = len(FEATURE_NAMES)


def _col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def synth_stays(rng: np.random.Generator, lengths: list[int], p_measured: float = 0.4):
    """Concatenated synthetic stays: (values [N, V], static [N, 6], stay_start [N])."""
    n = sum(lengths)
    centre = np.array([F.NORMAL_VALUES[v] for v in VARIABLES], dtype=np.float32)
    values = (centre * rng.uniform(0.6, 1.4, size=(n, V))).astype(np.float32)
    values[rng.random((n, V)) > p_measured] = np.nan
    values[rng.random((n, V)) < 0.02] = 0.0  # real zeros
    static = np.empty((n, len(STATIC)), dtype=np.float32)
    stay_start = np.zeros(n, dtype=bool)
    row = 0
    for k, ln in enumerate(lengths):
        stay_start[row] = True
        first_iculos = 1 + (k % 3)  # ICULOS may start above 1
        static[row : row + ln] = [50 + k, k % 2, 1.0, 0.0, -3.0 * k, 0]
        static[row : row + ln, 5] = np.arange(first_iculos, first_iculos + ln)
        if k % 4 == 3:
            static[row : row + ln, 2:4] = np.nan  # unit unknown
        row += ln
    return values, static, stay_start


def ring_buffer_inputs(values: np.ndarray, static: np.ndarray, stay_start: np.ndarray) -> FeatureInput:
    """Reference: what the streaming worker's per-patient ring buffer holds at each row, row by row."""
    rows_w, rows_l, rows_h = [], [], []
    buf: deque[np.ndarray] = deque(maxlen=WINDOW)
    last = np.full(V, np.nan, dtype=np.float32)
    last_row = np.full(V, -1, dtype=np.int64)
    t = -1
    for i in range(values.shape[0]):
        if stay_start[i] or i == 0:  # new patient: fresh state
            buf.clear()
            last = np.full(V, np.nan, dtype=np.float32)
            last_row = np.full(V, -1, dtype=np.int64)
            t = -1
        t += 1
        buf.append(values[i].copy())
        seen = ~np.isnan(values[i])
        last[seen] = values[i][seen]
        last_row[seen] = t
        win = np.full((WINDOW, V), np.nan, dtype=np.float32)
        win[WINDOW - len(buf) :] = np.stack(list(buf))
        rows_w.append(win)
        rows_l.append(last.copy())
        rows_h.append(np.where(last_row >= 0, t - last_row, np.nan).astype(np.float32))
    return FeatureInput(np.stack(rows_w), np.stack(rows_l), np.stack(rows_h), static.astype(np.float32))


def _single(values_row_window: np.ndarray | None = None) -> FeatureInput:
    win = (
        np.full((1, WINDOW, V), np.nan, dtype=np.float32) if values_row_window is None else values_row_window
    )
    return FeatureInput(
        window=win,
        last_value=np.full((1, V), np.nan, dtype=np.float32),
        hours_since=np.full((1, V), np.nan, dtype=np.float32),
        static=np.full((1, len(STATIC)), np.nan, dtype=np.float32),
    )


@pytest.fixture(scope="module")
def stays():
    return synth_stays(np.random.default_rng(0), [1, 3, 8, 9, 15, 30, 2, 12])


# ------------------------------------------------------------------------------------------ output
def test_shape_dtype_finite(stays):
    x = featurize(inputs_for_rows(*stays))
    assert x.shape == (stays[0].shape[0], NF)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert 80 <= NF <= 150
    assert len(set(FEATURE_NAMES)) == NF


def test_all_nan_row_is_finite_and_uses_normals():
    x = featurize(_single())
    assert np.isfinite(x).all()
    for v in VARIABLES:
        assert x[0, _col(f"{v}_locf")] == pytest.approx(F.NORMAL_VALUES[v])
        assert x[0, _col(f"{v}_hours_since")] == F.HOURS_CAP
    assert x[0, _col("unit_unknown")] == 1.0
    assert x[0, _col("gender_unknown")] == 1.0
    assert x[0, _col("labs_count8h")] == 0.0


def test_empty_batch():
    inp = FeatureInput(
        np.zeros((0, WINDOW, V), np.float32), np.zeros((0, V), np.float32),
        np.zeros((0, V), np.float32), np.zeros((0, 6), np.float32),
    )  # fmt: skip
    assert featurize(inp).shape == (0, NF)


def test_zero_is_a_measurement_not_missing():
    v = np.full((2, V), np.nan, dtype=np.float32)
    v[1, VAR_INDEX["BaseExcess"]] = 0.0
    v[1, VAR_INDEX["HR"]] = 0.0
    v[1, VAR_INDEX["SBP"]] = 0.0
    st = np.zeros((2, 6), dtype=np.float32)
    inp = inputs_for_rows(v, st, np.array([True, False]))
    assert inp.last_value[1, VAR_INDEX["BaseExcess"]] == 0.0
    assert inp.hours_since[1, VAR_INDEX["BaseExcess"]] == 0.0
    x = featurize(inp)
    assert np.isfinite(x).all()
    assert x[1, _col("BaseExcess_hours_since")] == 0.0
    assert x[0, _col("BaseExcess_hours_since")] == F.HOURS_CAP
    assert x[1, _col("HR_locf")] == 0.0
    assert x[1, _col("HR_count8h")] == 1.0
    assert x[1, _col("HR_min6h")] == 0.0
    assert x[1, _col("labs_count8h")] == 1.0
    assert x[1, _col("news2_pulse")] == 3.0  # HR 0 scores, it is not "missing"
    assert x[1, _col("sofa_map")] == 0.0  # MAP never measured -> normal
    # zero SBP: shock index stays finite
    assert x[1, _col("shock_index")] == 0.0


@pytest.mark.parametrize("value", [0.0, -1.0, 1e-30, 1e6, 3e38, -3e38, np.inf, -np.inf])
def test_extreme_values_stay_finite(value):
    win = np.full((1, WINDOW, V), value, dtype=np.float32)
    inp = FeatureInput(
        window=win,
        last_value=np.full((1, V), value, dtype=np.float32),
        hours_since=np.full((1, V), 1e9, dtype=np.float32),
        static=np.full((1, 6), value, dtype=np.float32),
    )
    x = featurize(inp)
    assert np.isfinite(x).all()
    assert x[0, _col("HR_hours_since")] == F.HOURS_CAP


def test_boundary_sofa_and_news2_features():
    v = np.full((1, V), np.nan, dtype=np.float32)
    v[0, VAR_INDEX["Platelets"]] = 150.0  # not < 150 -> 0
    v[0, VAR_INDEX["Creatinine"]] = 1.2  # >= 1.2 -> 1
    v[0, VAR_INDEX["Bilirubin_total"]] = 12.0  # >= 12 -> 4
    v[0, VAR_INDEX["MAP"]] = 70.0  # not < 70 -> 0
    v[0, VAR_INDEX["Resp"]] = 25.0  # NEWS2 3
    v[0, VAR_INDEX["FiO2"]] = 0.21  # room air -> 0
    x = featurize(inputs_for_rows(v, np.zeros((1, 6), np.float32), np.array([True])))
    assert x[0, _col("sofa_platelets")] == 0
    assert x[0, _col("sofa_creatinine")] == 1
    assert x[0, _col("sofa_bilirubin")] == 4
    assert x[0, _col("sofa_map")] == 0
    assert x[0, _col("sofa_partial")] == 5
    assert x[0, _col("news2_resp_rate")] == 3
    assert x[0, _col("news2_air_or_oxygen")] == 0
    assert x[0, _col("news2_total")] == 3


def test_window_aggregates_and_delta():
    hr = [60, np.nan, 70, 80, np.nan, 90, 100, np.nan, 110]  # 9 rows, one stay
    v = np.full((9, V), np.nan, dtype=np.float32)
    v[:, VAR_INDEX["HR"]] = hr
    x = featurize(inputs_for_rows(v, np.zeros((9, 6), np.float32), np.eye(1, 9, 0, dtype=bool)[0]))
    t = 8  # hours 3..8 -> 80, nan, 90, 100, nan, 110
    assert x[t, _col("HR_mean6h")] == pytest.approx(95.0)
    assert x[t, _col("HR_min6h")] == 80.0
    assert x[t, _col("HR_max6h")] == 110.0
    assert x[t, _col("HR_delta6h")] == pytest.approx(110.0 - 80.0)  # latest of hours 1..3 is 80 (hour 3)
    assert x[t, _col("HR_count8h")] == 5.0  # hours 1..8
    assert x[t, _col("HR_hours_since")] == 0.0
    assert x[7, _col("HR_hours_since")] == 1.0
    assert x[7, _col("HR_locf")] == 100.0
    # row 1 (HR missing, history only row 0)
    assert x[1, _col("HR_mean6h")] == 60.0 and x[1, _col("HR_delta6h")] == 0.0


# ------------------------------------------------------------------------------------------ purity
def test_input_not_mutated_and_deterministic(stays):
    inp = inputs_for_rows(*stays)
    copies = [a.copy() for a in (inp.window, inp.last_value, inp.hours_since, inp.static)]
    x1 = featurize(inp)
    x2 = featurize(inp)
    for a, b in zip((inp.window, inp.last_value, inp.hours_since, inp.static), copies, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x1, x2)
    values_copy = stays[0].copy()
    inputs_for_rows(*stays)
    np.testing.assert_array_equal(stays[0], values_copy)


def test_rows_independent_of_batch(stays):
    inp = inputs_for_rows(*stays)
    x = featurize(inp)
    for i in (0, 5, len(inp) - 1):
        np.testing.assert_array_equal(featurize(inp.take(slice(i, i + 1)))[0], x[i])


# ------------------------------------------------------------------------------------------ causality
def test_causality_future_rows_do_not_matter(stays):
    values, static, start = stays
    x = featurize(inputs_for_rows(values, static, start))
    rng = np.random.default_rng(1)
    for t in (0, 7, 20, len(values) - 2):
        v2 = values.copy()
        v2[t + 1 :] = rng.normal(100, 50, size=v2[t + 1 :].shape).astype(np.float32)
        st2 = static.copy()
        st2[t + 1 :] = 99.0
        x2 = featurize(inputs_for_rows(v2, st2, start))
        np.testing.assert_array_equal(x2[: t + 1], x[: t + 1])


def test_stays_do_not_leak():
    rng = np.random.default_rng(2)
    a = synth_stays(rng, [10])
    b = synth_stays(rng, [6])
    both = tuple(np.concatenate([p, q]) for p, q in zip(a, b, strict=True))
    x_both = featurize(inputs_for_rows(*both))
    x_b = featurize(inputs_for_rows(*b))
    np.testing.assert_array_equal(x_both[10:], x_b)
    inp = inputs_for_rows(*both)
    assert np.isnan(inp.window[10, :-1]).all()  # first row of stay b sees nothing of stay a


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_inputs_for_rows_matches_ring_buffer(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=6).tolist()
    values, static, start = synth_stays(rng, lengths, p_measured=float(rng.uniform(0.05, 0.9)))
    off = inputs_for_rows(values, static, start)
    ref = ring_buffer_inputs(values, static, start)
    for field in ("window", "last_value", "hours_since", "static"):
        got, want = getattr(off, field), getattr(ref, field)
        assert got.dtype == np.float32, field
        np.testing.assert_array_equal(got, want, err_msg=field)
    np.testing.assert_array_equal(featurize(off), featurize(ref))
    # streaming scores one row at a time
    for i in range(0, len(values), 7):
        np.testing.assert_array_equal(featurize(ref.take(slice(i, i + 1)))[0], featurize(off)[i])


def test_featurize_frame_matches_and_chunking_is_invisible():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(6)
    values, static, start = synth_stays(rng, [5, 9, 1, 14, 7])
    df = pd.DataFrame(values, columns=list(VARIABLES))
    for j, s in enumerate(STATIC):
        df[s] = static[:, j]
    df.insert(0, "patient_id", np.cumsum(start).astype(str))
    x, ss = featurize_frame(df)
    np.testing.assert_array_equal(ss, start)
    np.testing.assert_array_equal(x, featurize(inputs_for_rows(values, static, start)))
    x_small, _ = featurize_frame(df, chunk_rows=4)
    np.testing.assert_array_equal(x_small, x)


# ------------------------------------------------------------------------------------------ schema
def test_schema_hash_stable_and_matches_names():
    payload = json.dumps(
        {"featurizer_version": F.FEATURIZER_VERSION, "names": list(FEATURE_NAMES), "window": WINDOW},
        sort_keys=True, separators=(",", ":"),
    )  # fmt: skip
    import hashlib

    assert FEATURE_SCHEMA_HASH == "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
    assert F.schema_hash(FEATURE_NAMES, WINDOW, F.FEATURIZER_VERSION) == FEATURE_SCHEMA_HASH
    assert F.schema_hash(FEATURE_NAMES[:-1], WINDOW, F.FEATURIZER_VERSION) != FEATURE_SCHEMA_HASH
    assert F.schema_hash(FEATURE_NAMES, WINDOW + 1, F.FEATURIZER_VERSION) != FEATURE_SCHEMA_HASH
    # pinned: changing the features must be a deliberate act (bump FEATURIZER_VERSION, retrain models)
    assert FEATURE_SCHEMA_HASH == "sha256:67b1cadb696b74f39a1bd06fb86ef8c18e0e2506894a246b7d774e6e053978a4"


def test_bad_shapes_rejected():
    inp = _single()
    with pytest.raises(ValueError):
        featurize(FeatureInput(inp.window[:, 1:], inp.last_value, inp.hours_since, inp.static))
    with pytest.raises(ValueError):
        inputs_for_rows(np.zeros((3, 5), np.float32), np.zeros((3, 6), np.float32), np.ones(3, bool))
