"""Gradient-boosted trees (LightGBM) for the sepsis risk model, exported to ONNX with onnxmltools.

Why a tree family beside the Keras ones: the PhysioNet 2019 winner's edge came from gradient-boosted trees,
and on the same 134 features of set A's validation split single LightGBM models reached AUROC 0.833-0.838 and
utility 0.447-0.455 against 0.814 / 0.411 for the TCN ensemble (one run per setting, 5 settings). Trees split raw
values (ICU hours, hours since a lab, counts) without the standardisation the networks need, and are cheap:
about 20 s per member on 2 CPU cores; the 5-member graph scores 512 rows in 5.6 ms on one CPU thread.

Export: ``onnxmltools.convert_lightgbm`` (the maintained converter of the ONNX project) gives a
``TreeEnsembleClassifier`` (ai.onnx.ml) per member. ONNX Runtime stores its split thresholds as float32 while
LightGBM compares in double, so a value that lies between a double threshold and its float32 rounding goes
the other way (measured: 0.016 probability difference on validation rows). :func:`float32_thresholds`
therefore rounds every threshold *down* to the nearest float32 before export: the features are float32, so no
input lies strictly between the two values and LightGBM's own decisions do not change (checked at training
time); ONNX Runtime then compares against the same number. Each member's probability of class 1 is taken
(``Gather``) and the members are averaged (``Mean``) into one output ``probability`` [B, 1]: the same contract
as the Keras families (input ``features`` [B, F], raw featurizer values).

Class imbalance: ``scale_pos_weight`` = negatives / positives of the training split (the balanced weighting the
Keras families use through ``class_weight``), so the probabilities are a ranking, not calibrated.
Early stopping on validation AUROC. LightGBM, onnxmltools and their imports belong to the ``[train]`` extra;
serving runs the ONNX file with ONNX Runtime only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "GbmHyper", "PRESETS", "UNKNOWN_ADMIN", "admin_dropout", "describe", "fit_members", "float32_thresholds",
    "lgb_params", "predict", "to_onnx", "OPSET",
]  # fmt: skip

OPSET = 15  # the highest default-domain opset onnxmltools' LightGBM converter supports


@dataclass(frozen=True, slots=True)
class GbmHyper:
    """LightGBM settings (chosen on the validation split of set A; the test split was not used)."""

    learning_rate: float = 0.02
    num_leaves: int = 63
    min_child_samples: int = 200
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.7
    lambda_l2: float = 1.0
    max_rounds: int = 3000
    patience: int = 150
    admin_dropout: float = 0.2  # share of training stays shown with hospital-to-ICU time and unit unknown


# Named settings for ``vigil train --gbm-preset``. "transfer" (a much simpler tree model: 7 leaves, >= 2000 rows per
# leaf) transferred better between set A's two ICU units without any label of the other unit (issue 16, item 3;
# docs/evaluation/robustness.md): trained on one unit's ~3,700 training stays, its AUROC at the other unit rose in
# both directions over three model seeds of one split, but not at a second split, and the utility at the other unit
# swung with the threshold; never measured on another hospital, so it is an option, not the default.
PRESETS: dict[str, GbmHyper] = {
    "default": GbmHyper(),
    "transfer": GbmHyper(num_leaves=7, min_child_samples=2000),
}


def describe(h: GbmHyper) -> str:
    """One line for the model card."""
    return (
        f"LightGBM gradient-boosted trees (binary log-loss; {h.num_leaves} leaves, learning rate {h.learning_rate},"
        f" >= {h.min_child_samples} rows per leaf, feature fraction {h.feature_fraction}, bagging"
        f" {h.bagging_fraction}, L2 {h.lambda_l2}; up to {h.max_rounds} rounds, early stopping on val AUC after"
        f" {h.patience}; hospital-to-ICU time and ICU unit shown as unknown for {h.admin_dropout:.0%} of training"
        f" stays)"
    )


# How the featurizer encodes an unknown HospAdmTime / Unit1 / Unit2 (NaN -> 0, the unit's "unknown" flag set);
# a test checks this against vigil.features.featurize.
UNKNOWN_ADMIN: dict[str, float] = {"hosp_adm_time": 0.0, "unit_micu": 0.0, "unit_sicu": 0.0, "unit_unknown": 1.0}


def admin_dropout(x: np.ndarray, stay_start: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A copy of the training features ``x`` in which a seeded ``share`` of the stays (whole stays) show the
    hospital-to-ICU time and the ICU unit as unknown.

    Why: on set A these fields are almost always present and the trees lean on them; a site whose ADT feed does
    not carry them (``vigil evaluate --shifts``, ``no_admin``) then saw half as many rows flagged and lost 0.04
    validation utility. Shown unknown for 20 % of training stays, the trees learn what "unknown" means: the
    validation utility was unchanged (0.449 -> 0.452, one seed) and under ``no_admin`` it stayed at 0.450.

    >>> from vigil.features import FEATURE_NAMES
    >>> x = np.ones((4, len(FEATURE_NAMES)), np.float32); starts = np.array([True, False, True, True])
    >>> out = admin_dropout(x, starts, 1.0, 0)
    >>> out[:, FEATURE_NAMES.index("unit_unknown")].tolist(), float(x.min())
    ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    from vigil.features import FEATURE_NAMES

    stay = np.cumsum(stay_start) - 1
    picked = np.random.default_rng(seed).random(int(stay_start.sum())) < share
    rows = picked[stay]
    out = x.copy()
    for name, value in UNKNOWN_ADMIN.items():
        out[rows, FEATURE_NAMES.index(name)] = value
    return out


def lgb_params(h: GbmHyper, seed: int, scale_pos_weight: float, threads: int) -> dict[str, Any]:
    """LightGBM's parameters for ``h`` (binary, AUROC metric, deterministic, row bagging every iteration); the
    trainer's members and onboarding's site trees both use them."""
    d = asdict(h)
    for k in ("max_rounds", "patience", "admin_dropout"):
        d.pop(k)
    return {
        "objective": "binary", "metric": "auc", "verbosity": -1, "num_threads": threads, "seed": seed,
        "deterministic": True, "force_row_wise": True, "bagging_freq": 1, "scale_pos_weight": scale_pos_weight,
        **d,
    }  # fmt: skip


def float32_thresholds(booster: Any) -> tuple[Any, int]:
    """``booster`` with every split threshold rounded down to the nearest float32 (and how many changed).

    For float32 inputs ``x <= t`` and ``x <= floor32(t)`` agree (no float32 lies in ``(floor32(t), t]``), so the
    model's decisions are unchanged, and a runtime that stores thresholds as float32 reproduces them exactly.
    LightGBM's text format is edited: each tree's ``threshold=`` line; the ``tree_sizes`` index is dropped
    (it holds byte offsets; LightGBM parses the trees in order without it).
    """
    import lightgbm as lgb

    lines = booster.model_to_string().split("\n")
    changed = 0
    for i, line in enumerate(lines):
        if not line.startswith("threshold="):
            continue
        t = np.array([float(v) for v in line[len("threshold=") :].split()], dtype=np.float64)
        f = t.astype(np.float32)
        f = np.where(f.astype(np.float64) > t, np.nextafter(f, np.float32(-np.inf)), f).astype(np.float64)
        changed += int(np.sum(f != t))
        lines[i] = "threshold=" + " ".join(repr(float(v)) for v in f)
    text = "\n".join(line for line in lines if not line.startswith("tree_sizes="))
    return lgb.Booster(model_str=text), changed


def fit_members(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seeds: list[int],
    h: GbmHyper, threads: int, train_stay_start: np.ndarray | None = None,
) -> tuple[list[Any], dict[str, Any]]:  # fmt: skip
    """One booster per seed, early-stopped on validation AUROC and cut to its best round, its thresholds made
    float32-exact (:func:`float32_thresholds`; raises ``RuntimeError`` if that changed a validation prediction).
    With ``train_stay_start`` and ``h.admin_dropout`` > 0 the training rows go through :func:`admin_dropout`
    (seeded by the first seed). Returns the boosters and the card's training facts."""
    import lightgbm as lgb

    n_pos = float(np.sum(y_train))
    spw = round(float(y_train.size - n_pos) / max(n_pos, 1.0), 4)
    if train_stay_start is not None and h.admin_dropout > 0:
        x_train = admin_dropout(x_train, train_stay_start, h.admin_dropout, seeds[0])
    train = lgb.Dataset(x_train, y_train, free_raw_data=False)
    val = lgb.Dataset(x_val, y_val, reference=train, free_raw_data=False)
    boosters, rounds, best_auc, changed = [], [], [], 0
    for seed in seeds:
        b = lgb.train(lgb_params(h, seed, spw, threads), train, h.max_rounds, valid_sets=[val],
                      callbacks=[lgb.early_stopping(h.patience, verbose=False)])  # fmt: skip
        best = int(b.best_iteration or b.current_iteration())
        cut = lgb.Booster(model_str=b.model_to_string(num_iteration=best))
        exact, n = float32_thresholds(cut)
        probe = x_val[: min(len(x_val), 50_000)]
        if probe.size and not np.array_equal(cut.predict(probe), exact.predict(probe)):
            raise RuntimeError("rounding the split thresholds to float32 changed LightGBM's predictions")
        boosters.append(exact)
        rounds.append(best)
        best_auc.append(round(float(b.best_score["valid_0"]["auc"]), 4) if b.best_score else None)
        changed += n
    info = {
        "rounds": rounds, "best_val_auc": best_auc, "scale_pos_weight": spw, "thresholds_rounded": changed,
        "trees": [b.num_trees() for b in boosters],
        "leaves": int(sum(t["num_leaves"] for b in boosters for t in b.dump_model()["tree_info"])),
        "lightgbm": lgb.__version__,
    }  # fmt: skip
    return boosters, info


def predict(boosters: list[Any], x: np.ndarray) -> np.ndarray:
    """Mean probability of the members (LightGBM's own computation: the parity reference)."""
    return np.mean([b.predict(x) for b in boosters], axis=0)


def to_onnx(boosters: list[Any], n_features: int, doc: str = "") -> Any:
    """One ONNX graph: input ``features`` float32 [B, F] -> output ``probability`` float32 [B, 1], the mean of
    the members' class-1 probabilities. Checked with ``onnx.checker``."""
    import onnx
    from onnx import TensorProto, compose, helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    nodes: list[Any] = []
    inits: list[Any] = [helper.make_tensor("class_1", TensorProto.INT64, [1], [1])]
    outs: list[str] = []
    opsets: dict[str, int] = {"": OPSET}
    ir = onnx.IR_VERSION
    for i, b in enumerate(boosters):
        m = convert_lightgbm(b, initial_types=[("features", FloatTensorType([None, n_features]))], zipmap=False,
                             target_opset=OPSET)  # fmt: skip
        m = compose.add_prefix(m, f"m{i}_")
        ir = min(ir, m.ir_version)
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        nodes.append(helper.make_node("Identity", ["features"], [f"m{i}_features"], name=f"m{i}_in"))
        nodes.extend(m.graph.node)
        inits.extend(m.graph.initializer)
        probs = next(o.name for o in m.graph.output if o.name.endswith("probabilities"))
        nodes.append(helper.make_node("Gather", [probs, "class_1"], [f"m{i}_p1"], axis=1, name=f"m{i}_class_1"))
        outs.append(f"m{i}_p1")
    nodes.append(helper.make_node("Mean", outs, ["probability"], name="members_mean"))
    graph = helper.make_graph(
        nodes, "sepsis_gbm",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
    model.ir_version = ir
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model
