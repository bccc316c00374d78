"""The two ways a labelled site sample adapts the base model, and their ONNX graphs.

* ``recalibrate``: a logistic layer on the base model's logit, ``sigmoid(a * logit(p) + b)``, fitted on the site
  rows with the base model's class weighting (positives weighted negatives/positives), so the output keeps the
  base's scale. It is monotone: the ranking (AUROC) is the base model's; what moves is where the levels sit.
* ``boost``: continued boosting. The serving file is ONNX only (the LightGBM boosters are not kept), so the base
  booster cannot be extended in place; instead new LightGBM trees are fitted on the site rows with the base
  model's logit as ``init_score`` (the standard way to boost from an existing model's margin), early-stopped on
  the site's tuning stays. The served risk is ``sigmoid(logit(p_base) + margin_site)``: one ONNX graph holding the
  base graph, the site trees (thresholds made float32-exact as the trainer does) and the sum.

Both graphs keep the serving contract (input ``features`` [B, F] -> output ``probability`` [B, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EPS", "logit", "Recalibration", "fit_recalibration", "SiteBoost", "fit_boost", "recalibrated_onnx",
           "boosted_onnx", "site_boost_hyper"]  # fmt: skip

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit (float32 in the graph too)


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped to [EPS, 1 - EPS], in float64.

    >>> logit(np.array([0.5, 0.0])).round(3).tolist()
    [0.0, -13.816]
    """
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q / (1 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow for large |z|


@dataclass(frozen=True, slots=True)
class Recalibration:
    a: float
    b: float
    positive_weight: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a * logit(p) + self.b)


def fit_recalibration(p: np.ndarray, y: np.ndarray, positive_weight: float | None = None,
                      l2: float = 1e-3) -> Recalibration:  # fmt: skip
    """Weighted logistic regression of ``y`` on ``logit(p)`` (Newton's method; 2 parameters; a small L2 on the
    slope's distance from 1 keeps it finite on separable toy data).

    >>> rng = np.random.default_rng(0); z = rng.normal(size=4000); y = rng.random(4000) < 1 / (1 + np.exp(-2 * z))
    >>> r = fit_recalibration(1 / (1 + np.exp(-z)), y, positive_weight=1.0); round(r.a, 1)
    2.0
    """
    z = logit(p)
    yy = np.asarray(y, dtype=np.float64)
    pos = float(yy.sum())
    w_pos = (yy.size - pos) / max(pos, 1.0) if positive_weight is None else float(positive_weight)
    w = np.where(yy > 0, w_pos, 1.0)
    w = w / w.sum()
    x = np.column_stack([z, np.ones_like(z)])
    prior = np.array([1.0, 0.0])
    reg = np.diag([l2, 0.0])

    def loss(beta: np.ndarray) -> float:
        m = x @ beta  # weighted log-loss, written with logaddexp: finite for any margin
        return float(np.sum(w * (np.logaddexp(0.0, m) - yy * m)) + 0.5 * (beta - prior) @ reg @ (beta - prior))

    beta = prior.copy()
    cur = loss(beta)
    for _ in range(100):  # Newton's method with backtracking: the loss never increases
        mu = _sigmoid(x @ beta)
        grad = x.T @ (w * (mu - yy)) + reg @ (beta - prior)
        hess = (x * (w * mu * (1 - mu))[:, None]).T @ x + reg + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8 and loss(beta - t * step) > cur:
            t *= 0.5
        if t <= 1e-8:
            break
        beta = beta - t * step
        new = loss(beta)
        if cur - new < 1e-14:
            cur = new
            break
        cur = new
    return Recalibration(float(beta[0]), float(beta[1]), round(w_pos, 4))


def site_boost_hyper(**changes: Any) -> Any:
    """LightGBM settings of the site trees (the trainer's :class:`~vigil.training.gbm.GbmHyper`, smaller): small
    trees and a slow rate, since a site sample is a few thousand stays; no ADT dropout (the site's own fields)."""
    from dataclasses import replace

    from vigil.training.gbm import GbmHyper

    site = GbmHyper(learning_rate=0.03, num_leaves=15, min_child_samples=100, feature_fraction=0.5,
                    bagging_fraction=0.7, lambda_l2=5.0, max_rounds=600, patience=60, admin_dropout=0.0)  # fmt: skip
    return replace(site, **changes)


@dataclass
class SiteBoost:
    booster: Any  # lightgbm.Booster (thresholds float32-exact), margins relative to the base logit
    rounds: int
    positive_weight: float
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, p_base: np.ndarray, x: np.ndarray) -> np.ndarray:
        return _sigmoid(logit(p_base) + self.booster.predict(x, raw_score=True))


def fit_boost(x_train: np.ndarray, y_train: np.ndarray, p_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              p_val: np.ndarray, *, seed: int, threads: int = 1, h: Any = None) -> SiteBoost:  # fmt: skip
    """New trees on the site's training stays from the base margin (``init_score``), early-stopped on the
    tuning stays' AUROC; cut to the best round and made float32-exact
    (:func:`vigil.training.gbm.float32_thresholds`). ``h``: a :class:`vigil.training.gbm.GbmHyper`, default
    :func:`site_boost_hyper`."""
    import lightgbm as lgb

    from vigil.training.gbm import float32_thresholds, lgb_params

    h = h or site_boost_hyper()
    pos = float(np.sum(y_train))
    spw = round((y_train.size - pos) / max(pos, 1.0), 4)
    params = lgb_params(h, seed, spw, threads)
    train = lgb.Dataset(x_train, y_train, init_score=logit(p_train), free_raw_data=False)
    val = lgb.Dataset(x_val, y_val, init_score=logit(p_val), reference=train, free_raw_data=False)
    b = lgb.train(params, train, h.max_rounds, valid_sets=[val],
                  callbacks=[lgb.early_stopping(h.patience, verbose=False)])  # fmt: skip
    best = max(1, int(b.best_iteration or b.current_iteration()))
    cut = lgb.Booster(model_str=b.model_to_string(num_iteration=best))
    exact, _ = float32_thresholds(cut)
    probe = x_val[:50_000]
    if probe.size and not np.array_equal(cut.predict(probe, raw_score=True), exact.predict(probe, raw_score=True)):
        raise RuntimeError("rounding the site trees' thresholds to float32 changed LightGBM's predictions")
    auc = b.best_score.get("valid_0", {}).get("auc") if b.best_score else None
    info = {"rounds": best, "best_tune_auc": None if auc is None else round(float(auc), 4), "scale_pos_weight": spw,
            "hyper": {k: getattr(h, k) for k in h.__dataclass_fields__ if k != "admin_dropout"},
            "lightgbm": lgb.__version__}  # fmt: skip
    return SiteBoost(exact, best, spw, info)


# ------------------------------------------------------------------------------------------------ ONNX graphs
def _base_nodes(base: Any, prefix: str) -> tuple[list[Any], list[Any], str, dict[str, int], int]:
    """The base graph's nodes and initializers, prefixed, reading ``features``; returns its output name too."""
    from onnx import compose, helper

    m = compose.add_prefix(base, prefix)
    nodes = [helper.make_node("Identity", ["features"], [f"{prefix}features"], name=f"onb_{prefix}in")]
    nodes += list(m.graph.node)
    opsets = {op.domain: op.version for op in m.opset_import}
    return nodes, list(m.graph.initializer), m.graph.output[0].name, opsets, int(m.ir_version)


def _logit_nodes(src: str, out: str, tag: str) -> tuple[list[Any], list[Any]]:
    from onnx import TensorProto, helper

    inits = [helper.make_tensor(f"{tag}_lo", TensorProto.FLOAT, [], [EPS]),
             helper.make_tensor(f"{tag}_hi", TensorProto.FLOAT, [], [1 - EPS]),
             helper.make_tensor(f"{tag}_one", TensorProto.FLOAT, [], [1.0])]  # fmt: skip
    nodes = [
        helper.make_node("Clip", [src, f"{tag}_lo", f"{tag}_hi"], [f"{tag}_p"], name=f"{tag}_clip"),
        helper.make_node("Sub", [f"{tag}_one", f"{tag}_p"], [f"{tag}_q"], name=f"{tag}_1mp"),
        helper.make_node("Div", [f"{tag}_p", f"{tag}_q"], [f"{tag}_odds"], name=f"{tag}_odds"),
        helper.make_node("Log", [f"{tag}_odds"], [out], name=f"{tag}_log"),
    ]
    return nodes, inits


def _finish(nodes: list[Any], inits: list[Any], opsets: dict[str, int], ir: int, n_features: int, doc: str,
            name: str) -> Any:  # fmt: skip
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
    model.ir_version = ir
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def recalibrated_onnx(base: Any, r: Recalibration, n_features: int, doc: str = "") -> Any:
    """``sigmoid(a * logit(p_base) + b)`` around the base graph."""
    from onnx import TensorProto, helper

    nodes, inits, out, opsets, ir = _base_nodes(base, "base_")
    opsets[""] = max(opsets.get("", 13), 13)
    ln, li = _logit_nodes(out, "onb_zb", "onb_logit_b")
    inits += li + [helper.make_tensor("onb_a", TensorProto.FLOAT, [], [r.a]),
                   helper.make_tensor("onb_b", TensorProto.FLOAT, [], [r.b])]  # fmt: skip
    nodes += ln + [
        helper.make_node("Mul", ["onb_zb", "onb_a"], ["onb_az"], name="onb_scale"),
        helper.make_node("Add", ["onb_az", "onb_b"], ["onb_margin"], name="onb_shift"),
        helper.make_node("Sigmoid", ["onb_margin"], ["probability"], name="onb_sigmoid"),
    ]
    return _finish(nodes, inits, opsets, ir, n_features, doc, "site_recalibrated")


def boosted_onnx(base: Any, boost: SiteBoost, n_features: int, doc: str = "") -> Any:
    """``sigmoid(logit(p_base) + logit(p_trees))`` where ``p_trees`` is the site trees' own probability (so its
    logit is their margin)."""
    from onnx import TensorProto, compose, helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    from vigil.training.gbm import OPSET

    nodes, inits, out, opsets, ir = _base_nodes(base, "base_")
    m = convert_lightgbm(boost.booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                         zipmap=False, target_opset=OPSET)  # fmt: skip
    m = compose.add_prefix(m, "site_")
    ir = min(ir, int(m.ir_version))
    for op in m.opset_import:
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    opsets[""] = max(opsets.get("", 13), 13)
    nodes.append(helper.make_node("Identity", ["features"], ["site_features"], name="onb_site_in"))
    nodes += list(m.graph.node)
    inits += list(m.graph.initializer)
    probs = next(o.name for o in m.graph.output if o.name.endswith("probabilities"))
    inits.append(helper.make_tensor("onb_class_1", TensorProto.INT64, [1], [1]))
    nodes.append(helper.make_node("Gather", [probs, "onb_class_1"], ["onb_p1"], axis=1, name="onb_gather_1"))
    ln, li = _logit_nodes(out, "onb_zb", "onb_logit_b")
    tn, ti = _logit_nodes("onb_p1", "onb_zs", "onb_logit_s")
    nodes += ln + tn + [
        helper.make_node("Add", ["onb_zb", "onb_zs"], ["onb_margin"], name="onb_sum"),
        helper.make_node("Sigmoid", ["onb_margin"], ["probability"], name="onb_sigmoid"),
    ]
    return _finish(nodes, inits + li + ti, opsets, ir, n_features, doc, "site_boosted")
