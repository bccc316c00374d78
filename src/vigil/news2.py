"""Bedside early-warning scores, vectorised: NEWS2, qSOFA and SIRS.

NEWS2 follows the Royal College of Physicians' National Early Warning Score 2 (RCP, 2017): seven
parameters scored 0-3 and summed to 0-20. Response bands: 0 routine, 1-4 low, a 3 in any single
parameter low-medium, 5-6 medium (urgent review), >= 7 high (emergency). qSOFA (Sepsis-3, Singer et al.,
JAMA 2016) and SIRS (ACCP/SCCM 1992) are the classic sepsis screens; both are positive at >= 2.

**Values between the table's cells.** The NEWS2 table is written in whole units (0.1 degC for
temperature), but monitors send e.g. ``pulse 90.5`` or ``temp 35.05``. Every boundary is placed half-way
between two adjacent cells (pulse 90 | 91 -> 90.5, temp 35.0 | 35.1 -> 35.05) and a value lying *exactly*
on a half-way point scores the **more abnormal** of the two cells (fail-safe: an ambiguous reading never
lowers the score). Inputs are rounded to 1e-4 before comparison so that float32 readings such as
``np.float32(38.05)`` (stored as 38.0499992...) hit the half-way point they denote. Every value written in
the table scores exactly as the table says.

**Missing values** (NaN) score 0 and are flagged in ``missing``: the total is then a lower bound, which is
what a ward chart with a missing observation shows too.

>>> n = news2(resp=[26.0], spo2=[95.0], sbp=[105.0], hr=[95.0], temp=[38.5], on_oxygen=[True])
>>> int(n.total[0]), n.parts[0].tolist()
(9, [3, 1, 2, 1, 1, 0, 1])
>>> news2_parts_dict(n, 0)["missing"]
['consciousness']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.variables import VAR_INDEX

__all__ = [
    "NEWS2_PARAMS",
    "QSOFA_PARAMS",
    "SIRS_PARAMS",
    "News2",
    "Criteria",
    "news2",
    "news2_from_last",
    "news2_parts_dict",
    "news2_band",
    "qsofa",
    "qsofa_from_last",
    "sirs",
    "sirs_from_last",
    "fio2_fraction",
]

NEWS2_PARAMS: tuple[str, ...] = (
    "resp_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness", "temperature",
)  # fmt: skip
QSOFA_PARAMS: tuple[str, ...] = ("systolic_bp", "resp_rate", "altered_mentation")
SIRS_PARAMS: tuple[str, ...] = ("temperature", "heart_rate", "respiratory", "wbc")

_ROUND = 4  # decimals kept before comparing with the half-way thresholds
ROOM_AIR_FIO2 = 0.21


@dataclass(frozen=True, slots=True)
class News2:
    """NEWS2 of a batch: ``total`` int16 [B] (0..20), ``parts`` int8 [B, 7] and ``missing`` bool [B, 7]
    in :data:`NEWS2_PARAMS` order."""

    total: np.ndarray
    parts: np.ndarray
    missing: np.ndarray


@dataclass(frozen=True, slots=True)
class Criteria:
    """A count-of-criteria screen (qSOFA, SIRS): ``total`` int8 [B], ``met`` bool [B, k],
    ``missing`` bool [B, k] (criterion not assessable: counted as not met) and ``positive`` bool [B]
    (total >= 2)."""

    total: np.ndarray
    met: np.ndarray
    missing: np.ndarray
    positive: np.ndarray


# ----------------------------------------------------------------------------------------- helpers
def _num(x: Any) -> np.ndarray:
    """1-D float64 copy of a numeric input, rounded to the comparison precision (NaN stays NaN)."""
    return np.round(np.atleast_1d(np.asarray(x, dtype=np.float64)), _ROUND)


def _flag(x: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, known) of an optional boolean input: None -> all unknown; float NaN -> unknown."""
    if x is None:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    a = np.atleast_1d(np.asarray(x))
    if a.dtype == bool:
        return np.broadcast_to(a, (n,)).copy(), np.ones(n, dtype=bool)
    f = np.broadcast_to(a.astype(np.float64), (n,))
    known = ~np.isnan(f)
    return known & (f != 0), known


def _band(
    x: np.ndarray, low: tuple[tuple[float, int], ...], high: tuple[tuple[float, int], ...]
) -> np.ndarray:
    """Score ``x`` by ascending ``low`` cut-offs (``x <= cut`` -> score, first match wins) and descending
    ``high`` cut-offs (``x >= cut`` -> score). Half-way points go to the more abnormal cell."""
    s = np.zeros(x.shape, dtype=np.int8)
    done = np.isnan(x)
    for cut, score in low:
        hit = ~done & (x <= cut)
        s[hit] = score
        done |= hit
    for cut, score in high:
        hit = ~done & (x >= cut)
        s[hit] = score
        done |= hit
    return s


# Half-way cut-offs of the RCP 2017 chart.
_RESP = (((8.5, 3), (11.5, 1)), ((24.5, 3), (20.5, 2)))
_SPO2_1 = (((91.5, 3), (93.5, 2), (95.5, 1)), ())
_SPO2_2_LOW = ((83.5, 3), (85.5, 2), (87.5, 1))
_SPO2_2_O2 = ((96.5, 3), (94.5, 2), (92.5, 1))
_SBP = (((90.5, 3), (100.5, 2), (110.5, 1)), ((219.5, 3),))
_PULSE = (((40.5, 3), (50.5, 1)), ((130.5, 3), (110.5, 2), (90.5, 1)))
_TEMP = (((35.05, 3), (36.05, 1)), ((39.05, 2), (38.05, 1)))


def fio2_fraction(fio2: Any) -> np.ndarray:
    """FiO2 as a fraction: values above 1 are taken as percent (``40`` -> ``0.40``). NaN stays NaN.

    >>> fio2_fraction([0.5, 40.0, float("nan")]).tolist()[:2]
    [0.5, 0.4]
    """
    f = np.asarray(fio2, dtype=np.float64)
    return np.where(f > 1.0, f / 100.0, f)


# ------------------------------------------------------------------------------------------- NEWS2
def news2(
    resp: Any,
    spo2: Any,
    sbp: Any,
    hr: Any,
    temp: Any,
    on_oxygen: Any = None,
    consciousness_alert: Any = None,
    spo2_scale2: Any = None,
) -> News2:
    """NEWS2 for a batch of observation sets (1-D array-likes of equal length; NaN = not observed).

    ``on_oxygen`` and ``consciousness_alert`` are booleans (or floats with NaN = unknown); ``None`` means
    unknown for every row (scored 0, flagged missing). ``spo2_scale2`` (bool) selects SpO2 scale 2 for
    patients with a prescribed 88-92 % target; default scale 1. On scale 2, unknown oxygen counts as air.

    >>> n = news2(resp=[8, 9, 11.5, 21], spo2=[91, 92, 96, 99], sbp=[90, 91, 111, 220],
    ...           hr=[40, 41, 51, 131], temp=[35.0, 35.1, 36.1, 39.1])
    >>> n.total.tolist()
    [15, 7, 1, 10]
    """
    r, o, s, h, t = (_num(v) for v in (resp, spo2, sbp, hr, temp))
    n = r.shape[0]
    if not all(a.shape == (n,) for a in (o, s, h, t)):
        raise ValueError("news2: all vital-sign inputs must be 1-D arrays of the same length")
    oxy, oxy_known = _flag(on_oxygen, n)
    alert, alert_known = _flag(consciousness_alert, n)
    scale2, _ = _flag(spo2_scale2, n)

    parts = np.zeros((n, len(NEWS2_PARAMS)), dtype=np.int8)
    missing = np.zeros((n, len(NEWS2_PARAMS)), dtype=bool)
    parts[:, 0] = _band(r, *_RESP)
    sp1 = _band(o, *_SPO2_1)
    sp2 = np.where(oxy, _band(o, _SPO2_2_LOW, _SPO2_2_O2), _band(o, _SPO2_2_LOW, ()))
    parts[:, 1] = np.where(scale2, sp2, sp1)
    parts[:, 2] = np.where(oxy_known & oxy, 2, 0)
    parts[:, 3] = _band(s, *_SBP)
    parts[:, 4] = _band(h, *_PULSE)
    parts[:, 5] = np.where(alert_known & ~alert, 3, 0)
    parts[:, 6] = _band(t, *_TEMP)
    missing[:, 0], missing[:, 1] = np.isnan(r), np.isnan(o)
    missing[:, 2], missing[:, 3], missing[:, 4] = ~oxy_known, np.isnan(s), np.isnan(h)
    missing[:, 5], missing[:, 6] = ~alert_known, np.isnan(t)
    return News2(total=parts.sum(axis=1, dtype=np.int16), parts=parts, missing=missing)


def news2_from_last(last_value: np.ndarray) -> News2:
    """NEWS2 from LOCF values [B, V] in :data:`vigil.variables.VARIABLES` order.

    Uses Resp, O2Sat (scale 1), SBP, HR, Temp. Oxygen: ``FiO2 > 0.21`` where FiO2 is known (percent values
    are converted, see :func:`fio2_fraction`), else unknown (scored as air, flagged missing). PhysioNet has
    no level of consciousness: it is scored as alert and flagged missing.
    """
    lv = np.asarray(last_value)
    if lv.ndim != 2 or lv.shape[1] != len(VAR_INDEX):
        raise ValueError(f"news2_from_last: expected [B, {len(VAR_INDEX)}], got {lv.shape}")
    f = fio2_fraction(lv[:, VAR_INDEX["FiO2"]])
    on_o2 = np.where(np.isnan(f), np.nan, (f > ROOM_AIR_FIO2).astype(np.float64))
    return news2(
        resp=lv[:, VAR_INDEX["Resp"]],
        spo2=lv[:, VAR_INDEX["O2Sat"]],
        sbp=lv[:, VAR_INDEX["SBP"]],
        hr=lv[:, VAR_INDEX["HR"]],
        temp=lv[:, VAR_INDEX["Temp"]],
        on_oxygen=on_o2,
        consciousness_alert=None,
    )


def news2_band(total: Any, parts: Any | None = None) -> np.ndarray:
    """RCP clinical-risk band per row: 0 low (0-4), 1 low-medium (a 3 in any single parameter),
    2 medium (5-6, urgent response), 3 high (>= 7, emergency response).

    >>> news2_band([0, 3, 5, 7], [[0] * 7, [3, 0, 0, 0, 0, 0, 0], [0] * 7, [0] * 7]).tolist()
    [0, 1, 2, 3]
    """
    t = np.atleast_1d(np.asarray(total))
    band = np.where(t >= 7, 3, np.where(t >= 5, 2, 0)).astype(np.int8)
    if parts is not None:
        red = (np.asarray(parts) >= 3).any(axis=-1)
        band = np.where((band == 0) & red, 1, band).astype(np.int8)
    return band


def news2_parts_dict(n: News2, i: int) -> dict[str, Any]:
    """Row ``i`` of a :class:`News2` as a JSON-ready dict for score records.

    >>> d = news2_parts_dict(news2([30], [float("nan")], [120], [80], [37.0]), 0)
    >>> d["total"], d["parts"]["resp_rate"], d["missing"]
    (3, 3, ['spo2', 'air_or_oxygen', 'consciousness'])
    """
    parts, missing = n.parts[i].tolist(), n.missing[i].tolist()  # one conversion per row, not one per item
    return {
        "total": int(n.total[i]),
        "parts": dict(zip(NEWS2_PARAMS, parts, strict=True)),
        "missing": [p for p, m in zip(NEWS2_PARAMS, missing, strict=True) if m],
    }


_PARTS_CODE = 4 ** np.arange(7, dtype=np.int64)  # a part is 0..3: two bits each
_MISSING_CODE = 2 ** np.arange(7, dtype=np.int64) << 14
_DICTS: dict[int, dict[str, Any]] = {}  # row code -> its dict (a few hundred distinct rows in practice)


def news2_parts_dicts(n: News2) -> list[dict[str, Any]]:
    """:func:`news2_parts_dict` of every row. The worker builds one per scored row, and rows repeat a few hundred
    patterns: each row's parts and missing flags are coded as one integer (vectorised) and rows with the same
    code share one dict (the total is the sum of the parts), built once. **Read-only**: they are serialised into
    score and alert records, never changed.

    >>> n = news2([30, 12, 30], [float("nan"), 97, float("nan")], [120, 120, 120], [80, 80, 80], [37.0, 37.0, 37.0])
    >>> d = news2_parts_dicts(n)
    >>> d == [news2_parts_dict(n, 0), news2_parts_dict(n, 1), news2_parts_dict(n, 0)] and d[0] is d[2]
    True
    """
    if len(n.total) and (n.parts.min() < 0 or n.parts.max() > 3):  # not a NEWS2 part: no code, one dict per row
        return [news2_parts_dict(n, i) for i in range(len(n.total))]
    codes = (n.parts.astype(np.int64) @ _PARTS_CODE) | (n.missing.astype(np.int64) @ _MISSING_CODE)
    if len(_DICTS) > 1 << 16:  # bounded (4^7 * 2^7 codes exist)
        _DICTS.clear()
    out, cache = [], _DICTS
    for i, code in enumerate(codes.tolist()):
        d = cache.get(code)
        if d is None:
            d = cache[code] = news2_parts_dict(n, i)
        out.append(d)
    return out


# ---------------------------------------------------------------------------------- qSOFA and SIRS
def _criteria(met: np.ndarray, missing: np.ndarray) -> Criteria:
    met = met & ~missing
    total = met.sum(axis=1, dtype=np.int8)
    return Criteria(total=total, met=met, missing=missing, positive=total >= 2)


def qsofa(sbp: Any, resp: Any, altered_mentation: Any = None) -> Criteria:
    """qSOFA (Sepsis-3): SBP <= 100 mmHg, respiratory rate >= 22 /min, altered mentation (GCS < 15).

    PhysioNet 2019 has no GCS/mentation: pass ``None`` and the criterion is flagged missing, so the score
    is a partial qSOFA (0-2). Values are compared as given (no half-way rule: these are inequalities).

    >>> q = qsofa(sbp=[100, 101, float("nan")], resp=[22, 21.9, 30])
    >>> q.total.tolist(), q.positive.tolist()
    ([2, 0, 1], [True, False, False])
    """
    s, r = _num(sbp), _num(resp)
    n = s.shape[0]
    if r.shape != (n,):
        raise ValueError("qsofa: inputs must be 1-D arrays of the same length")
    am, am_known = _flag(altered_mentation, n)
    met = np.stack([s <= 100.0, r >= 22.0, am], axis=1)
    missing = np.stack([np.isnan(s), np.isnan(r), ~am_known], axis=1)
    return _criteria(met, missing)


def sirs(temp: Any, hr: Any, resp: Any, paco2: Any = None, wbc: Any = None) -> Criteria:
    """SIRS: temperature > 38 or < 36 degC; HR > 90 /min; RR > 20 /min or PaCO2 < 32 mmHg;
    WBC > 12 or < 4 x10^3/uL.

    PhysioNet 2019 lacks the immature-band (> 10 % bands) alternative of the WBC criterion, so the WBC
    criterion can be under-counted. The respiratory criterion is missing only when both RR and PaCO2 are.

    >>> s = sirs(temp=[38.5, 37.0], hr=[95, 80], resp=[18, 18], paco2=[30, float("nan")], wbc=[3.5, 8])
    >>> s.total.tolist(), s.positive.tolist()
    ([4, 0], [True, False])
    """
    t, h, r = _num(temp), _num(hr), _num(resp)
    n = t.shape[0]
    pc = _num(paco2) if paco2 is not None else np.full(n, np.nan)
    w = _num(wbc) if wbc is not None else np.full(n, np.nan)
    if not all(a.shape == (n,) for a in (h, r, pc, w)):
        raise ValueError("sirs: inputs must be 1-D arrays of the same length")
    met = np.stack(
        [(t > 38.0) | (t < 36.0), h > 90.0, (r > 20.0) | (pc < 32.0), (w > 12.0) | (w < 4.0)], axis=1
    )
    missing = np.stack([np.isnan(t), np.isnan(h), np.isnan(r) & np.isnan(pc), np.isnan(w)], axis=1)
    return _criteria(met, missing)


def qsofa_from_last(last_value: np.ndarray) -> Criteria:
    """Partial qSOFA (SBP, Resp; mentation missing) from LOCF values [B, V]."""
    lv = np.asarray(last_value)
    return qsofa(lv[:, VAR_INDEX["SBP"]], lv[:, VAR_INDEX["Resp"]])


def sirs_from_last(last_value: np.ndarray) -> Criteria:
    """SIRS from LOCF values [B, V] (Temp, HR, Resp, PaCO2, WBC)."""
    lv = np.asarray(last_value)
    return sirs(
        lv[:, VAR_INDEX["Temp"]], lv[:, VAR_INDEX["HR"]], lv[:, VAR_INDEX["Resp"]],
        lv[:, VAR_INDEX["PaCO2"]], lv[:, VAR_INDEX["WBC"]],
    )  # fmt: skip
