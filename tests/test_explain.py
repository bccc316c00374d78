"""Model-based alert explanations (vigil.explain): occlusion contributions recomputed independently, trend
wording, never-measured variables, batch independence, and the sequence path of temporal models. Real ONNX
Runtime on the shipped model and on a tiny temporal ONNX model built here; no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vigil.config import REPO_ROOT
from vigil.explain import DISPLAY, MIN_CONTRIBUTION, Factor, describe, explain, explain_text
from vigil.features import (
    FEATURE_NAMES,
    NORMAL_VALUES,
    SEQUENCE_NAMES,
    SEQUENCE_SCHEMA_HASH,
    WINDOW,
    FeatureInput,
    featurize,
    inputs_for_rows,
    sequence,
)
from vigil.registry import Registry
from vigil.scoring import Scorer
from vigil.variables import STATIC, VAR_INDEX, VARIABLES

MODELS = REPO_ROOT / "models"
V = len(VARIABLES)
STATIC_ROW = np.array([67, 1, 1, 0, -5, 30], dtype=np.float32)  # Age, Gender, Unit1, Unit2, HospAdmTime, ICULOS

# {variable: {hours before t: value}}; the latest entry is the last value.
SEPTIC: dict[str, dict[int, float]] = {
    "Lactate": {6: 1.9, 0: 4.1},
    "MAP": {2: 60, 0: 58},
    "SBP": {2: 90, 0: 88},
    "DBP": {2: 46, 0: 45},
    "HR": {6: 98, 2: 118, 0: 125},
    "Resp": {2: 26, 0: 30},
    "Temp": {5: 37.1, 0: 39.2},
    "O2Sat": {2: 93, 0: 92},
    "WBC": {0: 17.0},
    "Platelets": {6: 160, 0: 90},
}
NORMAL_PATIENT: dict[str, dict[int, float]] = {
    "HR": {4: 76, 2: 78, 0: 79},
    "MAP": {2: 86, 0: 88},
    "SBP": {2: 122, 0: 124},
    "DBP": {2: 70, 0: 71},
    "Resp": {2: 15, 0: 15},
    "Temp": {4: 36.9, 0: 37.0},
    "O2Sat": {2: 97, 0: 97},
    "WBC": {0: 7.5},
}


def make_input(*patients: dict[str, dict[int, float]]) -> FeatureInput:
    """A batch with one row per patient, from {variable: {hours before t: value}}."""
    b = len(patients)
    window = np.full((b, WINDOW, V), np.nan, dtype=np.float32)
    last = np.full((b, V), np.nan, dtype=np.float32)
    hours = np.full((b, V), np.nan, dtype=np.float32)
    for i, pat in enumerate(patients):
        for var, series in pat.items():
            j = VAR_INDEX[var]
            for ago, val in series.items():
                window[i, WINDOW - 1 - ago, j] = val
            ago = min(series)
            last[i, j], hours[i, j] = series[ago], ago
    return FeatureInput(window, last, hours, np.tile(STATIC_ROW, (b, 1)))


def occluded_risk(scorer: Scorer, inp: FeatureInput, row: int, var: str) -> tuple[float, float]:
    """(risk, risk with ``var`` normal) of one row, computed here from scratch."""
    one = inp.take(np.array([row]))  # fancy indexing: copies
    j = VAR_INDEX[var]
    cf = FeatureInput(one.window.copy(), one.last_value.copy(), one.hours_since, one.static)
    cf.window[0, :, j] = np.where(np.isnan(one.window[0, :, j]), np.nan, NORMAL_VALUES[var])
    cf.last_value[0, j] = NORMAL_VALUES[var]
    seq = (sequence(one), sequence(cf)) if scorer.needs_sequence else (None, None)
    return float(scorer.predict(featurize(one), seq[0])[0]), float(scorer.predict(featurize(cf), seq[1])[0])


@pytest.fixture(scope="module")
def mlp() -> Scorer:
    return Scorer(Registry(MODELS).get("sepsis-mlp"))


def tiny_temporal_model(root: Path) -> Scorer:
    """A logistic model reading both inputs: sigmoid(-5 + 0.02 HR_locf + 0.8 lactate of hour t in the
    sequence). Lactate reaches the score through the sequence only."""
    w_feat = np.zeros((len(FEATURE_NAMES), 1), np.float32)
    w_feat[FEATURE_NAMES.index("HR_locf")] = 0.02
    w_seq = np.zeros((WINDOW * len(SEQUENCE_NAMES), 1), np.float32)
    w_seq[(WINDOW - 1) * len(SEQUENCE_NAMES) + SEQUENCE_NAMES.index("Lactate_value")] = 0.8
    inits = [
        helper.make_tensor("w_feat", TensorProto.FLOAT, list(w_feat.shape), w_feat.ravel().tolist()),
        helper.make_tensor("w_seq", TensorProto.FLOAT, list(w_seq.shape), w_seq.ravel().tolist()),
        helper.make_tensor("bias", TensorProto.FLOAT, [1], [-5.0]),
    ]
    nodes = [
        helper.make_node("Flatten", ["sequence"], ["seq_flat"], axis=1),
        helper.make_node("MatMul", ["features", "w_feat"], ["z_feat"]),
        helper.make_node("MatMul", ["seq_flat", "w_seq"], ["z_seq"]),
        helper.make_node("Add", ["z_feat", "z_seq"], ["z_sum"]),
        helper.make_node("Add", ["z_sum", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_temporal",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", len(FEATURE_NAMES)]),
            helper.make_tensor_value_info("sequence", TensorProto.FLOAT, ["B", WINDOW, len(SEQUENCE_NAMES)]),
        ],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["B", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    dst = root / "tiny-temporal" / "1"
    dst.mkdir(parents=True)
    onnx.save(model, str(dst / "model.onnx"))
    card = json.loads((MODELS / "sepsis-mlp" / "1" / "card.json").read_text())
    card.pop("canary", None)
    card.update(name="tiny-temporal", version="1")
    card["sequence_schema"] = {"names": list(SEQUENCE_NAMES), "hash": SEQUENCE_SCHEMA_HASH, "window_h": WINDOW}
    (dst / "card.json").write_text(json.dumps(card))
    return Scorer(Registry(root).get("tiny-temporal:1"))


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    sc = tiny_temporal_model(tmp_path_factory.mktemp("models"))
    assert sc.needs_sequence
    return sc


def check_factors(scorer: Scorer, inp: FeatureInput, row: int, factors: list[Factor]) -> None:
    """Sorted, above epsilon, each contribution = risk - risk with the variable normal, and readable text."""
    contribs = [f.contribution for f in factors]
    assert contribs == sorted(contribs, reverse=True)
    for f in factors:
        risk, cf = occluded_risk(scorer, inp, row, f.variable)
        assert f.contribution == pytest.approx(risk - cf, abs=6e-4), f.variable
        assert f.contribution > MIN_CONTRIBUTION
        disp = DISPLAY[f.variable]
        shown = f"{inp.last_value[row, VAR_INDEX[f.variable]]:.{disp.decimals}f}"
        assert f.text.startswith(f"{disp.short} {shown}") and disp.unit in f.text
        assert f.label == disp.label and f.unit
        if f.previous is not None:
            assert f.trend in ("up", "down", "steady") and f.previous_hours_ago is not None
            if f.trend != "steady":
                assert f"{f.trend} from {f.previous:.{disp.decimals}f} {f.previous_hours_ago} h ago" in f.text
        else:
            assert f.trend is None and f.previous_hours_ago is None and "from" not in f.text
        json.dumps(f.to_dict())  # JSON-able as it is


def test_septic_picture_is_explained_by_the_shipped_model(mlp: Scorer) -> None:
    inp = make_input(SEPTIC, NORMAL_PATIENT)
    risk = mlp.predict(featurize(inp))
    assert risk[0] > mlp.threshold
    septic, normal = explain(mlp, inp, [0, 1], risk=risk)
    assert septic, "a septic picture above the threshold must have factors"
    check_factors(mlp, inp, 0, septic)
    assert any(f.trend == "up" and "up from" in f.text for f in septic)  # temperature 37.1 -> 39.2
    assert len(normal) <= 1 and sum(f.contribution for f in normal) < 0.05
    # the same factors whether the caller passes the batch's risk or not, and the whole ranking agrees
    assert explain(mlp, inp, [0, 1]) == [septic, normal]
    everything = explain(mlp, inp, [0], top_k=V)[0]
    assert everything[: len(septic)] == septic
    text = explain_text(septic)
    assert text.startswith("Top factors: ") and text.count("; ") == len(septic) - 1
    assert explain_text([]) == ""


def test_never_measured_variables_are_never_factors(mlp: Scorer) -> None:
    inp = make_input(SEPTIC, NORMAL_PATIENT, {})
    j = VAR_INDEX["Creatinine"]
    inp.last_value[0, j], inp.hours_since[0, j] = 2.4, 30.0  # measured before the window only
    all_factors = explain(mlp, inp, [0, 1, 2], top_k=V, min_contribution=-1.0)
    for row, factors in enumerate(all_factors):
        measured = {VARIABLES[j] for j in np.flatnonzero(~np.isnan(inp.last_value[row]))}
        assert {f.variable for f in factors} == measured  # every measured one, nothing else
    assert all_factors[2] == []  # never measured anything: nothing to attribute
    empty = make_input({})
    assert explain(mlp, empty, [0], risk=mlp.predict(featurize(empty))) == [[]]  # no counterfactual at all
    creat = next(f for f in all_factors[0] if f.variable == "Creatinine")
    assert creat.previous is None and creat.text == "creatinine 2.40 mg/dL"  # last value older than the window


def test_a_row_gives_the_same_factors_alone_and_in_a_batch(mlp: Scorer) -> None:
    rng = np.random.default_rng(3)
    n = 60
    values = (np.array([NORMAL_VALUES[v] for v in VARIABLES]) * rng.normal(1.0, 0.25, (n, V))).astype(np.float32)
    values[rng.random(values.shape) < 0.6] = np.nan
    static = np.tile(STATIC_ROW, (n, 1))
    static[:, STATIC.index("ICULOS")] = np.arange(n) % 20 + 1
    start = np.zeros(n, bool)
    start[::20] = True
    batch = inputs_for_rows(values, static, start)
    rows = [5, 19, 33, 47, 59]
    before = [a.copy() for a in (batch.window, batch.last_value, batch.hours_since, batch.static)]
    together = explain(mlp, batch, rows, risk=mlp.predict(featurize(batch)), top_k=5, min_contribution=0.0)
    for a, b in zip(before, (batch.window, batch.last_value, batch.hours_since, batch.static), strict=True):
        np.testing.assert_array_equal(a, b)  # the input is not mutated
    assert any(together)
    for row, factors in zip(rows, together, strict=True):
        alone = explain(mlp, batch.take(np.array([row])), [0], top_k=5, min_contribution=0.0)[0]
        assert alone == factors
    assert explain(mlp, batch, rows[::-1], top_k=5, min_contribution=0.0) == together[::-1]
    assert explain(mlp, batch, [], top_k=5) == []


def test_temporal_model_explains_through_the_sequence(temporal: Scorer) -> None:
    inp = make_input(SEPTIC, NORMAL_PATIENT)
    factors = explain(temporal, inp, [0, 1])
    check_factors(temporal, inp, 0, factors[0])
    assert [f.variable for f in factors[0]] == ["Lactate", "HR"]  # the only two weights of the model
    lac = factors[0][0]
    z = -5 + 0.02 * 125 + 0.8 * 4.1
    want = 1 / (1 + np.exp(-z)) - 1 / (1 + np.exp(-(z - 0.8 * (4.1 - NORMAL_VALUES["Lactate"]))))
    assert lac.contribution == pytest.approx(want, abs=6e-4)
    assert lac.text == "lactate 4.1 mmol/L, up from 1.9 6 h ago" and (lac.trend, lac.previous) == ("up", 1.9)
    assert factors[1] == []  # lactate never measured, HR 79 at its normal 80: nothing above epsilon


def test_every_registered_model_reproduces_its_contributions() -> None:
    """Every model version in models/, temporal ones (sepsis-tcn) included."""
    reg = Registry(MODELS)
    inp = make_input(SEPTIC, NORMAL_PATIENT)
    for spec in [f"{name}:{v}" for name in reg.names() for v in reg.versions(name)]:
        sc = Scorer(reg.get(spec))
        factors = explain(sc, inp, [0], top_k=V, min_contribution=-1.0)[0]
        assert [f.variable for f in factors if f.contribution > MIN_CONTRIBUTION], spec
        check_factors(sc, inp, 0, [f for f in factors if f.contribution > MIN_CONTRIBUTION])


@pytest.mark.parametrize(
    ("series", "previous", "ago", "text"),
    [
        ({7: 1.5, 5: 1.8, 0: 4.1}, 1.8, 5, "lactate 4.1 mmol/L, up from 1.8 5 h ago"),  # latest of t-7..t-5
        ({4: 5.0, 3: 4.5, 0: 4.1}, 5.0, 4, "lactate 4.1 mmol/L, down from 5.0 4 h ago"),  # else earliest > 2 h
        ({3: 4.0, 0: 4.1}, 4.0, 3, "lactate 4.1 mmol/L, was 4.0 3 h ago"),  # a change under the steady band
        ({2: 1.9, 0: 4.1}, None, None, "lactate 4.1 mmol/L"),  # 2 h is too recent for a trend
        ({7: 2.0, 6: 4.1}, 2.0, 7, "lactate 4.1 mmol/L, up from 2.0 7 h ago"),  # older than the last value
    ],
)
def test_previous_value_and_trend(
    temporal: Scorer, series: dict[int, float], previous: float | None, ago: int | None, text: str
) -> None:
    (lac,) = explain(temporal, make_input({"Lactate": series, "HR": {0: 80}}), [0])[0]
    assert (lac.previous, lac.previous_hours_ago, lac.text) == (previous, ago, text)


def test_wording_and_validation(mlp: Scorer) -> None:
    assert describe("MAP", 58.0) == (None, "MAP 58 mmHg")
    assert describe("Temp", 39.2, 37.1, 5) == ("up", "temperature 39.2 °C, up from 37.1 5 h ago")
    assert describe("pH", 7.214, 7.41, 6) == ("down", "pH 7.21, down from 7.41 6 h ago")
    assert describe("BaseExcess", -0.04) == (None, "base excess 0.0 mmol/L")  # no "-0.0"
    assert set(DISPLAY) == set(VARIABLES)
    inp = make_input(SEPTIC)
    with pytest.raises(ValueError, match="rows"):
        explain(mlp, inp, [1])
    with pytest.raises(ValueError, match="risk"):
        explain(mlp, inp, [0], risk=np.zeros(3, np.float32))
