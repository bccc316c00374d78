"""Why did the model alert? The top contributing factors of a score, computed from the model itself.

Method: per-variable occlusion. For a scored row and each clinical variable ``v`` measured in the stay
(the 34 of :data:`vigil.variables.VARIABLES`), build a counterfactual row in which ``v`` looks normal:
its last value and every value of ``v`` measured in the window are replaced by
:data:`vigil.features.NORMAL_VALUES` ``[v]``, while *when* it was measured (``hours_since``, the window's
missingness pattern, hence the measurement counts) is kept. The counterfactual rows of every requested
row are featurized (and sequenced, for a temporal model) and scored in **one** ``predict`` call, and

    contribution(v) = risk(row) - risk(row with v normal)

in probability units (the scale of the risk score and of the threshold). Every feature computed from
``v`` moves with it: the LOCF value, the 6-h vital aggregates and delta, and the derived scores (shock
index, partial SOFA, NEWS2, qSOFA, SIRS). The ``top_k`` variables with the largest positive
contribution above ``min_contribution`` are the factors, ties broken by variable order, so the same
inputs always give the same factors (an alert replayed after a crash carries the same explanation).

Limits, to read the factors right:

* It is a local, model-based attribution: it says what *this model* responds to for *this row*, not what
  is clinically causal, and it is only as good as the model.
* "Normal" is one reference value per variable; a value already near it contributes about nothing,
  whatever the model learned about it.
* Interactions are not separated: if two variables only matter together, each one's occlusion may
  carry the joint effect (or neither may), and the contributions need not add up to the risk.
* A variable never measured in the stay is already featurized as normal, so it gets no contribution and
  is never a factor. The static context (age, sex, unit, admission times, hours in ICU) is held fixed and
  is not attributed: it has no "normal" value and is not a finding a clinician can act on.

Cost: one featurize and one ``predict`` over (rows x variables measured) rows, the featurize dominating.
On the shipped MLP (one CPU thread, all 34 variables measured): about 0.4 ms for a batch with one alert,
about 0.16 ms per alert when a batch has several.

>>> describe("Lactate", 4.1, 1.9, 6)
('up', 'lactate 4.1 mmol/L, up from 1.9 6 h ago')
>>> describe("MAP", 58.0)
(None, 'MAP 58 mmHg')
>>> describe("Platelets", 90.0, 160.0, 6)
('down', 'platelets 90 x10^3/uL, down from 160 6 h ago')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from vigil.features import NORMAL_VALUES, RECENT_H, WINDOW, FeatureInput, featurize, sequence
from vigil.variables import CANONICAL_UNITS, VARIABLES

if TYPE_CHECKING:
    from vigil.scoring import Scorer

__all__ = ["Factor", "Display", "DISPLAY", "MIN_CONTRIBUTION", "explain", "explain_text", "describe"]

MIN_CONTRIBUTION: float = 0.01  # contributions at or below this (probability units) are not factors
_ROUND = 3  # decimals of a contribution
_FALLBACK_MIN_H = 3  # an earlier value for the trend must be older than 2 h

Trend = Literal["up", "down", "steady"]


class Display(NamedTuple):
    """How a variable reads in a sentence."""

    label: str  # plain words
    short: str  # the name in the sentence (plain words, or the abbreviation every clinician uses)
    unit: str  # the unit as written for people ("" = none)
    decimals: int  # decimals of the value
    steady: float  # |change| below this (canonical units) reads as "steady"


DISPLAY: dict[str, Display] = {
    "HR": Display("heart rate", "heart rate", "bpm", 0, 5.0),
    "O2Sat": Display("oxygen saturation", "SpO2", "%", 0, 2.0),
    "Temp": Display("temperature", "temperature", "°C", 1, 0.3),
    "SBP": Display("systolic blood pressure", "systolic BP", "mmHg", 0, 5.0),
    "MAP": Display("mean arterial pressure", "MAP", "mmHg", 0, 5.0),
    "DBP": Display("diastolic blood pressure", "diastolic BP", "mmHg", 0, 5.0),
    "Resp": Display("respiratory rate", "respiratory rate", "/min", 0, 2.0),
    "EtCO2": Display("end-tidal CO2", "EtCO2", "mmHg", 0, 3.0),
    "BaseExcess": Display("base excess", "base excess", "mmol/L", 1, 1.0),
    "HCO3": Display("bicarbonate", "bicarbonate", "mmol/L", 0, 2.0),
    "FiO2": Display("inspired oxygen fraction", "FiO2", "", 2, 0.05),
    "pH": Display("blood pH", "pH", "", 2, 0.03),
    "PaCO2": Display("arterial CO2", "PaCO2", "mmHg", 0, 3.0),
    "SaO2": Display("arterial oxygen saturation", "SaO2", "%", 0, 2.0),
    "AST": Display("AST (liver enzyme)", "AST", "U/L", 0, 10.0),
    "BUN": Display("blood urea nitrogen", "BUN", "mg/dL", 0, 2.0),
    "Alkalinephos": Display("alkaline phosphatase", "alkaline phosphatase", "U/L", 0, 10.0),
    "Calcium": Display("calcium", "calcium", "mg/dL", 1, 0.2),
    "Chloride": Display("chloride", "chloride", "mmol/L", 0, 2.0),
    "Creatinine": Display("creatinine", "creatinine", "mg/dL", 2, 0.1),
    "Bilirubin_direct": Display("direct bilirubin", "direct bilirubin", "mg/dL", 1, 0.1),
    "Glucose": Display("glucose", "glucose", "mg/dL", 0, 10.0),
    "Lactate": Display("lactate", "lactate", "mmol/L", 1, 0.3),
    "Magnesium": Display("magnesium", "magnesium", "mg/dL", 1, 0.1),
    "Phosphate": Display("phosphate", "phosphate", "mg/dL", 1, 0.2),
    "Potassium": Display("potassium", "potassium", "mmol/L", 1, 0.2),
    "Bilirubin_total": Display("bilirubin", "bilirubin", "mg/dL", 1, 0.2),
    "TroponinI": Display("troponin I", "troponin I", "ng/mL", 2, 0.01),
    "Hct": Display("haematocrit", "haematocrit", "%", 0, 2.0),
    "Hgb": Display("haemoglobin", "haemoglobin", "g/dL", 1, 0.5),
    "PTT": Display("partial thromboplastin time", "PTT", "s", 0, 3.0),
    "WBC": Display("white cell count", "white cells", "x10^3/uL", 1, 1.0),
    "Fibrinogen": Display("fibrinogen", "fibrinogen", "mg/dL", 0, 20.0),
    "Platelets": Display("platelets", "platelets", "x10^3/uL", 0, 10.0),
}
assert tuple(DISPLAY) == VARIABLES  # the table covers every variable, in order

_V = len(VARIABLES)
_NORMAL = np.array([NORMAL_VALUES[v] for v in VARIABLES], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Factor:
    """One contributing factor of a score: a variable, its value and trend, and how much it adds."""

    variable: str  # canonical name (vigil.variables.VARIABLES)
    label: str  # plain words
    value: float  # last value, canonical unit, rounded as displayed
    unit: str  # canonical unit (UCUM, vigil.variables.CANONICAL_UNITS)
    contribution: float  # risk minus the risk with this variable normal, probability units, 3 decimals
    trend: Trend | None  # against ``previous``; None when there is no earlier value in the window
    previous: float | None  # the value about 6 h earlier (see :func:`explain`)
    previous_hours_ago: int | None
    text: str  # the plain sentence, e.g. "lactate 4.1 mmol/L, up from 1.9 6 h ago"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields (plain Python numbers and strings)."""
        return dataclasses.asdict(self)


def _fmt(variable: str, value: float) -> str:
    d = DISPLAY[variable].decimals
    return f"{round(float(value), d) + 0.0:.{d}f}"  # + 0.0: no "-0"


def describe(
    variable: str, value: float, previous: float | None = None, hours_ago: int | None = None
) -> tuple[Trend | None, str]:
    """(trend, plain sentence) for a variable's value and, optionally, an earlier value ``hours_ago`` h
    before. The trend is "steady" when the change is under the variable's :attr:`Display.steady` band."""
    disp = DISPLAY[variable]
    head = f"{disp.short} {_fmt(variable, value)}" + (f" {disp.unit}" if disp.unit else "")
    if previous is None or hours_ago is None:
        return None, head
    change = float(value) - float(previous)
    trend: Trend = "steady" if abs(change) < disp.steady else ("up" if change > 0 else "down")
    prev = _fmt(variable, previous)
    if trend == "steady":
        return trend, f"{head}, was {prev} {hours_ago} h ago"
    return trend, f"{head}, {trend} from {prev} {hours_ago} h ago"


def _previous(window_v: np.ndarray, hours_since: float) -> tuple[float | None, int | None]:
    """(value, hours ago) of the earlier measurement used for the trend, from one variable's window
    column [W]: the latest at hours t-7..t-5, else the earliest older than 2 h; always strictly older
    than the last value (``hours_since`` h ago)."""
    newest_old = WINDOW - RECENT_H  # window index of hour t-5 (t-7..t-5 are indices 0..2)
    last_age = 0.0 if np.isnan(hours_since) else float(hours_since)
    candidates = [*range(newest_old, -1, -1), *range(newest_old + 1, WINDOW - _FALLBACK_MIN_H)]
    for i in candidates:
        age = WINDOW - 1 - i
        if age > last_age and not np.isnan(window_v[i]):
            return float(window_v[i]), age
    return None, None


def _rows(rows: np.ndarray | Sequence[int], b: int) -> np.ndarray:
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= b):
        raise ValueError(f"explain: rows must be in [0, {b}), got {idx.tolist()}")
    return idx


def explain(
    scorer: Scorer,
    inp: FeatureInput,
    rows: np.ndarray | Sequence[int],
    risk: np.ndarray | None = None,
    top_k: int = 3,
    min_contribution: float = MIN_CONTRIBUTION,
) -> list[list[Factor]]:
    """The top factors of the scores of ``rows`` of the batch ``inp``, one list per requested row (in the
    order of ``rows``; empty when nothing contributes more than ``min_contribution``).

    ``risk`` is the model's probabilities for the whole batch [B] (what the worker already has); without
    it, the rows are scored again in the same ``predict`` call as their counterfactuals. Each factor's
    ``previous`` is the latest measurement at hours t-7..t-5 of the window, else the earliest one older
    than 2 h (and older than the last value), else None. Each row's result depends on its own inputs only.
    """
    b = len(inp)
    idx = _rows(rows, b)
    if risk is not None:
        risk = np.asarray(risk, dtype=np.float64).reshape(-1)
        if risk.shape != (b,):
            raise ValueError(f"explain: risk must have one value per batch row ({b}), got shape {risk.shape}")
    if idx.size == 0:
        return []
    win = np.asarray(inp.window, dtype=np.float32)[idx]  # [R, W, V] copies
    last = np.asarray(inp.last_value, dtype=np.float32)[idx]
    hours = np.asarray(inp.hours_since, dtype=np.float32)[idx]
    static = np.asarray(inp.static, dtype=np.float32)[idx]

    measured = ~np.isnan(last)  # [R, V]; a window measurement implies a last value
    r_of, v_of = np.nonzero(measured)  # counterfactual k occludes variable v_of[k] of row r_of[k]
    base = np.arange(idx.size) if risk is None else np.zeros(0, dtype=np.int64)
    src = np.concatenate([base, r_of])  # rows fed to the model: [base rows?] + counterfactuals
    n_base, n = base.size, src.size
    cf_w, cf_last = win[src], last[src]
    k = np.arange(n_base, n)
    col = cf_w[k, :, v_of]  # [K, W]
    cf_w[k, :, v_of] = np.where(np.isnan(col), np.float32(np.nan), _NORMAL[v_of][:, None])
    cf_last[k, v_of] = _NORMAL[v_of]
    cf = FeatureInput(cf_w, cf_last, hours[src], static[src])
    seq = sequence(cf) if scorer.needs_sequence else None
    p = np.asarray(scorer.predict(featurize(cf), seq), dtype=np.float64)
    base_risk = p[:n_base] if risk is None else risk[idx]

    contrib = np.zeros((idx.size, _V), dtype=np.float64)
    contrib[r_of, v_of] = base_risk[r_of] - p[n_base:]
    out: list[list[Factor]] = []
    for r in range(idx.size):
        rounded = np.round(contrib[r], _ROUND)
        keep = [j for j in range(_V) if measured[r, j] and contrib[r, j] > min_contribution]
        order = sorted(keep, key=lambda j: (-rounded[j], j))
        out.append([_factor(VARIABLES[j], win[r, :, j], last[r, j], hours[r, j], rounded[j]) for j in order[:top_k]])
    return out


def _factor(variable: str, window_v: np.ndarray, value: float, hours_since: float, contribution: float) -> Factor:
    prev, ago = _previous(window_v, hours_since)
    trend, text = describe(variable, value, prev, ago)
    d = DISPLAY[variable].decimals
    return Factor(
        variable=variable,
        label=DISPLAY[variable].label,
        value=round(float(value), d) + 0.0,
        unit=CANONICAL_UNITS[variable],
        contribution=float(contribution) + 0.0,
        trend=trend,
        previous=None if prev is None else round(prev, d) + 0.0,
        previous_hours_ago=ago,
        text=text,
    )


def explain_text(factors: Sequence[Factor]) -> str:
    """One line for an alert: ``"Top factors: lactate 4.1 mmol/L, up from 1.9 6 h ago; MAP 58 mmHg"``
    ("" when there is no factor)."""
    if not factors:
        return ""
    return "Top factors: " + "; ".join(f.text for f in factors)
