"""NEWS2 (RCP 2017), qSOFA and SIRS: every chart boundary, scale 2, oxygen, missing values."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.news2 import (
    NEWS2_PARAMS,
    news2,
    news2_band,
    news2_from_last,
    news2_parts_dict,
    qsofa,
    qsofa_from_last,
    sirs,
    sirs_from_last,
)
from vigil.variables import VAR_INDEX, VARIABLES

NAN = float("nan")
NORMAL = {"resp": 16.0, "spo2": 97.0, "sbp": 120.0, "hr": 70.0, "temp": 37.0}
PART = {name: k for k, name in enumerate(NEWS2_PARAMS)}


def _score(param: str, part: str, values: list[float], **kw) -> list[int]:
    args = {k: np.full(len(values), v) for k, v in NORMAL.items()}
    args[param] = np.asarray(values, dtype=np.float64)
    return news2(**args, **kw).parts[:, PART[part]].tolist()


RESP = [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (0, 3), (60, 3)]
TEMP = [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2), (42.0, 2)]
SBP = [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
PULSE = [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)]
SPO2_1 = [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0), (50, 3)]


@pytest.mark.parametrize(
    ("param", "part", "table"),
    [
        ("resp", "resp_rate", RESP),
        ("temp", "temperature", TEMP),
        ("sbp", "systolic_bp", SBP),
        ("hr", "pulse", PULSE),
        ("spo2", "spo2", SPO2_1),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_chart_boundary(param, part, table, dtype):
    values = np.array([v for v, _ in table], dtype=dtype)
    assert _score(param, part, values.tolist()) == [s for _, s in table]
    args = {k: np.full(len(values), v, dtype=dtype) for k, v in NORMAL.items()}
    args[param] = values  # float32 inputs (as the featurizer passes them) score the same
    assert news2(**args).parts[:, PART[part]].tolist() == [s for _, s in table]


def test_values_between_cells_go_to_the_more_abnormal_cell():
    # half-way points belong to the more abnormal cell; anything else to the nearest cell
    assert _score("temp", "temperature", [35.05, 35.04, 35.06, 36.05, 38.05, 38.04, 39.05, 39.04]) == [
        3, 3, 1, 1, 1, 0, 2, 1,
    ]  # fmt: skip
    assert _score("resp", "resp_rate", [8.5, 8.6, 11.5, 11.6, 20.5, 20.4, 24.5, 24.4]) == [
        3,
        1,
        1,
        0,
        2,
        0,
        3,
        2,
    ]
    assert _score("hr", "pulse", [40.5, 50.5, 90.5, 90.4, 110.5, 130.5, 130.4]) == [3, 1, 1, 0, 2, 3, 2]
    assert _score("sbp", "systolic_bp", [90.5, 100.5, 110.5, 110.6, 219.5, 219.4]) == [3, 2, 1, 0, 3, 0]
    assert _score("spo2", "spo2", [91.5, 93.5, 95.5, 95.6]) == [3, 2, 1, 0]
    # float32 half-way values
    t32 = np.float32(38.05)
    assert _score("temp", "temperature", [float(t32)]) == [1]


def test_spo2_scale2_air_and_oxygen():
    vals = [83, 84, 85, 86, 87, 88, 92, 93, 94, 95, 96, 97, 100]
    on_air = _score(
        "spo2", "spo2", vals, spo2_scale2=np.ones(len(vals), bool), on_oxygen=np.zeros(len(vals), bool)
    )
    assert on_air == [3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    on_o2 = _score(
        "spo2", "spo2", vals, spo2_scale2=np.ones(len(vals), bool), on_oxygen=np.ones(len(vals), bool)
    )
    assert on_o2 == [3, 2, 2, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3]
    # scale 1 ignores oxygen for the SpO2 part
    assert _score("spo2", "spo2", [97], on_oxygen=[True]) == [0]


def test_oxygen_part_and_missing_flags():
    n = news2(
        [16, 16, 16], [97, 97, 97], [120, 120, 120], [70, 70, 70], [37, 37, 37], on_oxygen=[1.0, 0.0, NAN]
    )
    assert n.parts[:, PART["air_or_oxygen"]].tolist() == [2, 0, 0]
    assert n.missing[:, PART["air_or_oxygen"]].tolist() == [False, False, True]
    assert n.missing[:, PART["consciousness"]].all()
    assert n.total.tolist() == [2, 0, 0]
    assert n.total.dtype == np.int16 and n.parts.dtype == np.int8 and n.missing.dtype == bool


def test_missing_vitals_score_zero_and_are_flagged():
    n = news2([NAN], [NAN], [NAN], [NAN], [NAN])
    assert n.total.tolist() == [0]
    assert n.missing.all()


def test_consciousness():
    n = news2([16, 16], [97, 97], [120, 120], [70, 70], [37, 37], consciousness_alert=[True, False])
    assert n.parts[:, PART["consciousness"]].tolist() == [0, 3]
    assert not n.missing[:, PART["consciousness"]].any()


def test_known_totals():
    # all normal
    assert news2(
        [16], [97], [120], [70], [37.0], on_oxygen=[False], consciousness_alert=[True]
    ).total.tolist() == [0]
    # worst case: every parameter at its maximum (temperature's 3 is on the low side) -> 20
    worst = news2([30], [85], [80], [140], [34.0], on_oxygen=[True], consciousness_alert=[False])
    assert worst.total.tolist() == [20]
    assert worst.parts[0].tolist() == [3, 3, 2, 3, 3, 3, 3]
    # RCP worked example style: RR 22 (2), SpO2 95 (1), on O2 (2), SBP 105 (1), HR 105 (1), alert, T 38.5 (1)
    n = news2([22], [95], [105], [105], [38.5], on_oxygen=[True], consciousness_alert=[True])
    assert n.total.tolist() == [8]
    assert news2_band(n.total, n.parts).tolist() == [3]


def test_parts_dict():
    n = news2([25, 16], [97, NAN], [120, 120], [70, 70], [37, 37])
    d = news2_parts_dict(n, 0)
    assert d == {
        "total": 3,
        "parts": dict.fromkeys(NEWS2_PARAMS, 0) | {"resp_rate": 3},
        "missing": ["air_or_oxygen", "consciousness"],
    }
    assert news2_parts_dict(n, 1)["missing"] == ["spo2", "air_or_oxygen", "consciousness"]
    assert all(type(v) is int for v in d["parts"].values())


def test_news2_from_last():
    lv = np.full((3, len(VARIABLES)), np.nan, dtype=np.float32)
    lv[:, VAR_INDEX["Resp"]] = [25, 16, 16]
    lv[:, VAR_INDEX["O2Sat"]] = [91, 97, 97]
    lv[:, VAR_INDEX["FiO2"]] = [0.5, 0.21, np.nan]
    lv[2, VAR_INDEX["FiO2"]] = 40.0  # percent -> 0.40 -> on oxygen
    n = news2_from_last(lv)
    assert n.parts[:, PART["air_or_oxygen"]].tolist() == [2, 0, 2]
    assert n.total.tolist() == [3 + 3 + 2, 0, 2]
    assert n.missing[:, PART["consciousness"]].all()
    assert n.missing[:, PART["pulse"]].all()


def test_qsofa():
    q = qsofa(
        [100, 101, 90, NAN, 80], [22, 30, 21, NAN, 40], altered_mentation=[False, True, True, True, NAN]
    )
    assert q.total.tolist() == [2, 2, 2, 1, 2]
    assert q.positive.tolist() == [True, True, True, False, True]
    assert q.missing[:, 2].tolist() == [False, False, False, False, True]
    lv = np.full((1, len(VARIABLES)), np.nan, dtype=np.float32)
    lv[0, VAR_INDEX["SBP"]] = 95
    q2 = qsofa_from_last(lv)
    assert q2.total.tolist() == [1] and q2.missing[0].tolist() == [False, True, True]


def test_sirs():
    s = sirs(
        temp=[38.1, 36.0, 35.9, 37.0, NAN],
        hr=[91, 90, 70, 70, NAN],
        resp=[20, 21, NAN, 12, NAN],
        paco2=[31, NAN, NAN, 40, NAN],
        wbc=[12.0, 12.1, 3.9, 4.0, NAN],
    )
    assert s.total.tolist() == [3, 2, 2, 0, 0]
    assert s.positive.tolist() == [True, True, True, False, False]
    assert s.missing[2].tolist() == [False, False, True, False]
    assert s.missing[4].all()
    lv = np.full((1, len(VARIABLES)), np.nan, dtype=np.float32)
    lv[0, VAR_INDEX["Temp"]] = 39.0
    lv[0, VAR_INDEX["HR"]] = 120
    assert sirs_from_last(lv).total.tolist() == [2]


def test_length_mismatch_rejected():
    with pytest.raises(ValueError):
        news2([16, 16], [97], [120], [70], [37])


def test_parts_dicts_of_a_batch_equal_the_row_by_row_dicts() -> None:
    """news2_parts_dicts codes each row and shares one dict per code: the same dicts as row by row, on every
    pattern of parts and missing values a batch of random vitals gives (and on parts that are not NEWS2's)."""
    import numpy as np

    from vigil.news2 import News2, news2, news2_parts_dict, news2_parts_dicts

    rng = np.random.default_rng(5)
    n_rows = 3000

    def col(lo: float, hi: float) -> np.ndarray:
        v = rng.uniform(lo, hi, n_rows)
        v[rng.random(n_rows) < 0.3] = np.nan
        return v

    n = news2(col(4, 40), col(80, 100), col(60, 220), col(30, 160), col(34, 41))
    got = news2_parts_dicts(n)
    assert got == [news2_parts_dict(n, i) for i in range(n_rows)]
    assert len({id(d) for d in got}) < n_rows // 2  # shared
    odd = News2(total=np.array([9], np.int16), parts=np.array([[9, 0, 0, 0, 0, 0, 0]], np.int8),
                missing=np.zeros((1, 7), bool))  # fmt: skip
    assert news2_parts_dicts(odd) == [news2_parts_dict(odd, 0)]
