"""``vigil train``: historical PhysioNet data -> the serving featurizer -> Keras -> ONNX -> the registry.

Steps (one :class:`Prepared` dataset is shared by every family trained in a run):

1. load (parquet, ``.psv`` directory or ``.tar.gz``) and featurize with :mod:`vigil.features`, the code
   the worker runs — vectorised, in stay-aligned chunks with a progress bar;
2. label as the challenge does (``SepsisLabel``: onset within 6 h or septic) and split by patient
   (seeded; no stay in two splits);
3. fit (class weights for the ~2% positive rows, early stopping on validation AUROC with the best weights
   restored, fixed seeds): Keras for ``logreg``, ``mlp`` and ``tcn``; LightGBM for ``gbm``
   (:mod:`vigil.training.gbm`);
4. export (tf2onnx; onnxmltools for LightGBM) and register only if ONNX Runtime reproduces the framework on
   held-out rows within :data:`PARITY_TOL`;
5. choose the operating threshold on the validation split (maximum normalized utility) — never on the
   test split — and write the model card: data, split, feature and sequence schema hashes, metrics,
   threshold, canary probabilities, drift reference distributions, provenance, intended use, limitations;
6. fit the version's resource-demand calibration (``demand_calibration.json``, :func:`calibrate_demand`:
   the code of ``vigil demand calibrate``, on the validation split of the same file and selection), which
   ``vigil models promote`` requires.

TensorFlow, tf2onnx, LightGBM, onnxmltools and pandas are imported inside the functions: serving code never
loads them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vigil.card import CARD_FILE, write_card
from vigil.errors import ConfigError
from vigil.evaluation.metrics import auprc, auroc
from vigil.evaluation.report import jsonable
from vigil.evaluation.utility import best_threshold, normalized_utility
from vigil.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_HASH,
    SEQUENCE_NAMES,
    SEQUENCE_SCHEMA_HASH,
    WINDOW,
    featurize,
    frame_chunks,
    sequence,
)
from vigil.onboarding.prior import fit_prior_shift
from vigil.scoring import canary_inputs
from vigil.training.data import SPLITS, load_training_frame, split_by_patient
from vigil.training.gbm import GbmHyper
from vigil.training.models import FAMILIES, Hyper, build_model, describe

__all__ = [
    "Prepared", "prepare", "train_family", "calibrate_demand", "PARITY_TOL", "DRIFT_FEATURES", "reference_bins",
]  # fmt: skip

OPSET = 17
PARITY_TOL = 1e-4
PARITY_ROWS = 20_000
DATA_NAME = "PhysioNet/CinC 2019 training set A (CC BY 4.0)"
# Features whose distribution the worker compares with the training reference (population stability).
DRIFT_FEATURES = (
    "HR_locf", "MAP_locf", "Resp_locf", "Temp_locf", "O2Sat_locf", "WBC_locf", "Lactate_locf",
    "Creatinine_locf", "news2_total", "Lactate_hours_since", "labs_count8h", "iculos",
)  # fmt: skip
TASK = (
    "Per-hour probability that an ICU patient meets the PhysioNet 2019 SepsisLabel (Sepsis-3 onset within"
    " the next 6 h or already septic), from vitals and labs seen so far."
)
INTENDED_USE = (
    "Research and demonstration of real-time sepsis risk scoring in vigil. A decision-support signal for"
    " clinicians alongside NEWS2, never an autonomous diagnosis or a trigger for treatment."
)
LIMITATIONS = (
    "Trained and tested on one hospital system (PhysioNet 2019 set A); top challenge models lost most of"
    " their utility on an unseen hospital, so expect degradation elsewhere and validate locally before use."
    " Labels are retrospective Sepsis-3 criteria, shifted 6 h early. Trained on row-level labels with class"
    " weights: probabilities are not calibrated (read them as a ranking; the threshold encodes the"
    " operating point). No level of consciousness, vasopressors or PaO2 in the data."
)


@dataclass
class Prepared:
    """A featurized, labelled, split dataset (arrays per split)."""

    source: Path
    max_stays: int | None
    seed: int
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    stay_start: dict[str, np.ndarray]
    seq: dict[str, np.ndarray] | None
    timings: dict[str, float] = field(default_factory=dict)

    def stays(self, split: str) -> int:
        return int(self.stay_start[split].sum())


def _progress(total: int, desc: str) -> Any:
    from vigil.progress import progress  # a bar on a terminal, periodic log lines elsewhere

    return progress(total, desc, unit="row")


def prepare(data: Path, *, seed: int = 7, max_stays: int | None = None, with_sequence: bool = True) -> Prepared:
    """Load, featurize (and build the hourly sequences if ``with_sequence``), label and split ``data``."""
    t0 = time.perf_counter()
    df = load_training_frame(Path(data), max_stays=max_stays)
    timings = {"load_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    stay_start, chunks = frame_chunks(df)
    n = stay_start.shape[0]
    x = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    seq = np.empty((n, WINDOW, len(SEQUENCE_NAMES)), dtype=np.float32) if with_sequence else None
    with _progress(n, "featurize") as bar:
        for a, b, inp in chunks:
            x[a:b] = featurize(inp)
            if seq is not None:
                seq[a:b] = sequence(inp)
            bar.update(b - a)
    timings["featurize_s"] = time.perf_counter() - t0
    y = df["SepsisLabel"].to_numpy(dtype=np.float32)
    masks = split_by_patient(df["patient_id"].to_numpy(), seed)
    del df
    return Prepared(
        source=Path(data),
        max_stays=max_stays,
        seed=seed,
        x={k: x[m] for k, m in masks.items()},
        y={k: y[m] for k, m in masks.items()},
        stay_start={k: stay_start[m] for k, m in masks.items()},  # splits keep whole stays
        seq={k: seq[m] for k, m in masks.items()} if seq is not None else None,
        timings=timings,
    )


def _evaluate(probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "auroc": round(auroc(labels, probs), 4),
        "auprc": round(auprc(labels, probs), 4),
        "utility": round(normalized_utility(labels, probs >= threshold, stay_start), 4),
        "brier": round(float(np.mean((probs.astype(np.float64) - labels) ** 2)), 4),
        "rows": int(labels.size),
        "stays": int(stay_start.sum()),
        "positive_rows": int(labels.sum()),
        "alert_rate": round(float((probs >= threshold).mean()), 4),
    }


def reference_bins(values: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Quantile bin edges of ``values`` (inner edges; ties merged) and the fraction of values per bin —
    the training reference a worker compares live data with (population stability index).

    >>> r = reference_bins(np.arange(100, dtype=np.float32), bins=4)
    >>> r["edges"], r["fractions"]
    ([24.75, 49.5, 74.25], [0.25, 0.25, 0.25, 0.25])
    """
    v = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])) if v.size else np.zeros(0)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1)
    frac = counts / max(v.size, 1)
    return {"edges": [round(float(e), 6) for e in edges], "fractions": [round(float(f), 6) for f in frac]}


def _next_version(out_dir: Path, name: str) -> str:
    base = Path(out_dir) / name
    have = [p.name for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return str(max((int(v) for v in have if v.isdigit()), default=0) + 1)


@dataclass
class _Fitted:
    """What a family's fit hands to the common export-check-register steps."""

    proto: Any  # onnx.ModelProto: input features [B, F] (and sequence [B, W, K]) -> one probability output
    native: Callable[[list[np.ndarray]], np.ndarray]  # the framework's own probabilities (the parity reference)
    reference: str  # "keras" or "lightgbm"
    training: dict[str, Any]  # family-specific facts for the card's "training" block
    provenance: dict[str, Any]
    timings: dict[str, float]


def train_family(
    ds: Prepared,
    family: str,
    out_dir: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    epochs: int = 30,
    batch_size: int = 2048,
    patience: int = 4,
    hyper: Hyper | None = None,
    members: int = 1,
    verbose: int | None = None,
    gbm: GbmHyper | None = None,
) -> Path:
    """Train one model family on ``ds``, export it, check ONNX parity and write the card; returns
    ``out_dir/<name>/<version>``. ``members`` > 1 trains that many copies with consecutive seeds (each
    early-stopped on its own) and exports their mean probability as one ONNX graph. Raises
    ``RuntimeError`` if ONNX Runtime differs from the framework (Keras, LightGBM) by more than
    :data:`PARITY_TOL` (nothing is registered then)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
    if family == "tcn" and ds.seq is None:
        raise ValueError("the tcn family needs prepare(..., with_sequence=True)")
    import onnx
    import onnxruntime as ort

    import vigil

    name = name or f"sepsis-{family}"
    version = version or _next_version(out_dir, name)
    t_all = time.perf_counter()
    uses_seq = family == "tcn"

    def inputs(split: str) -> list[np.ndarray]:
        return [ds.x[split], ds.seq[split]] if uses_seq and ds.seq is not None else [ds.x[split]]

    seeds = [ds.seed + i for i in range(max(1, members))]
    doc = f"{name} v{version}: vigil features ({FEATURE_SCHEMA_HASH}) -> sepsis risk"
    if family == "gbm":
        fitted = _fit_gbm(ds, seeds, gbm or GbmHyper(), doc)
    else:
        fitted = _fit_keras(ds, family, name, seeds, inputs, hyper or Hyper(), doc, epochs=epochs,
                            batch_size=batch_size, patience=patience, verbose=verbose)  # fmt: skip
    timings = dict(fitted.timings)

    # ---- parity on held-out rows before anything is registered
    t0 = time.perf_counter()
    proto = fitted.proto
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out_name = sess.get_outputs()[0].name
    in_names = [i.name for i in sess.get_inputs()]

    def onnx_probs(arrs: list[np.ndarray], chunk: int = 65_536) -> np.ndarray:
        n = arrs[0].shape[0]
        res = np.empty(n, dtype=np.float32)
        for a in range(0, n, chunk):
            feeds = {k: v[a : a + chunk] for k, v in zip(in_names, arrs, strict=True)}
            res[a : a + chunk] = sess.run([out_name], feeds)[0].reshape(-1)
        return res

    held = [a[:PARITY_ROWS] for a in inputs("test")]
    diff = float(np.max(np.abs(fitted.native(held) - onnx_probs(held)))) if held[0].size else 0.0
    if not diff <= PARITY_TOL:
        engine = {"keras": "Keras", "lightgbm": "LightGBM"}.get(fitted.reference, fitted.reference)
        msg = f"ONNX Runtime differs from {engine} by {diff:.3g} (> {PARITY_TOL}) on held-out rows"
        raise RuntimeError(msg)
    timings["parity_s"] = time.perf_counter() - t0

    # ---- threshold on validation; metrics from the exported model (what serving runs)
    probs = {k: onnx_probs(inputs(k)) for k in SPLITS}
    thr, _ = best_threshold(probs["validation"], ds.y["validation"], ds.stay_start["validation"])
    metrics = {k: _evaluate(probs[k], ds.y[k], ds.stay_start[k], thr) for k in ("validation", "test")}
    cx, cseq = canary_inputs()
    canary = onnx_probs([cx, cseq] if uses_seq else [cx])
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    reference = {
        "split": "train",
        "features": {f: reference_bins(ds.x["train"][:, col[f]]) for f in DRIFT_FEATURES},
        "score": reference_bins(probs["train"]),
        "alert_rate": round(float((probs["train"] >= thr).mean()), 4),
    }
    timings["total_s"] = time.perf_counter() - t_all + sum(ds.timings.values())

    target = Path(out_dir) / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "model.onnx.tmp"
    onnx.save(proto, str(tmp))
    tmp.replace(target / "model.onnx")
    card: dict[str, Any] = {
        "name": name,
        "version": str(version),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "task": TASK,
        "input": {"name": "features", "dtype": "float32", "n_features": len(FEATURE_NAMES)},
        "output": {"name": out_name, "kind": "probability"},
        "feature_schema": {
            "names": list(FEATURE_NAMES), "hash": FEATURE_SCHEMA_HASH, "window_h": WINDOW,
            "featurizer": "vigil.features",
        },  # fmt: skip
        "threshold": round(float(thr), 4),
        "threshold_rule": "maximises normalized utility on the validation split",
        "metrics": metrics,
        "training": {
            "family": family,
            "data": DATA_NAME if ds.max_stays is None else f"{DATA_NAME}, first {ds.max_stays} stays",
            "source_file": ds.source.name,
            "max_stays": ds.max_stays,
            "split": {
                "train": ds.stays("train"), "validation": ds.stays("validation"), "test": ds.stays("test"),
                "seed": ds.seed, "by": "patient", "fractions": [0.70, 0.15, 0.15],
            },  # fmt: skip
            "members": len(seeds),
            "member_seeds": seeds,
            **fitted.training,
            "duration_s": round(timings["total_s"], 1),
            "timings_s": {k: round(v, 2) for k, v in {**ds.timings, **timings}.items()},
            "cpu_count": os.cpu_count(),
        },
        "parity": {
            "reference": fitted.reference, "max_abs_diff": diff, f"{fitted.reference}_vs_onnx_max_abs_diff": diff,
            "rows": int(held[0].shape[0]), "tolerance": PARITY_TOL,
        },  # fmt: skip
        "canary": {"probabilities": [round(float(p), 7) for p in canary], "tolerance": 1e-4},
        "reference": reference,
        "provenance": {"vigil_version": vigil.__version__, **fitted.provenance, "onnxruntime": ort.__version__},
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }
    # score -> row posterior on the rows the threshold was chosen on: `vigil onboard --prevalence` moves the
    # threshold with it (vigil.onboarding.prior); none when the validation split has no septic stay (tiny runs)
    with contextlib.suppress(ConfigError):
        card["prior_shift"] = fit_prior_shift(probs["validation"], ds.y["validation"], ds.stay_start["validation"],
                                              "validation split (the trainer's patient-level split)")  # fmt: skip
    if uses_seq:
        card["input"]["sequence"] = {"name": "sequence", "shape": [WINDOW, len(SEQUENCE_NAMES)]}
        card["sequence_schema"] = {"names": list(SEQUENCE_NAMES), "hash": SEQUENCE_SCHEMA_HASH, "window_h": WINDOW}
    # strict JSON: an undefined metric (e.g. AUROC of a split without a septic stay) is null, not NaN, which the
    # registry's reader would refuse; the card is validated (vigil.card.ModelCard) before it is written
    write_card(target / CARD_FILE, jsonable(card))
    return target


def _fit_keras(
    ds: Prepared, family: str, name: str, seeds: list[int], inputs: Callable[[str], list[np.ndarray]], h: Hyper,
    doc: str, *, epochs: int, batch_size: int, patience: int, verbose: int | None,
) -> _Fitted:  # fmt: skip
    """Fit the Keras family (one copy per seed, averaged in one graph) and export it with tf2onnx."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    verbose = (1 if sys.stderr.isatty() else 2) if verbose is None else verbose
    uses_seq = family == "tcn"
    y_tr = ds.y["train"]
    n_pos = float(y_tr.sum())
    n_neg = float(y_tr.size - n_pos)
    class_weight = {0: round(y_tr.size / (2 * n_neg), 4), 1: round(y_tr.size / (2 * max(n_pos, 1.0)), 4)}
    seq_train = ds.seq["train"] if uses_seq and ds.seq is not None else None
    fitted, histories = [], []
    t0 = time.perf_counter()
    for i, member_seed in enumerate(seeds):
        keras.utils.set_random_seed(member_seed)
        member = build_model(family, keras, ds.x["train"], seq_train, h, f"{name}-m{i}" if len(seeds) > 1 else name)
        stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                             restore_best_weights=True)  # fmt: skip
        hist = member.fit(
            inputs("train"), y_tr,
            validation_data=(inputs("validation"), ds.y["validation"]),
            epochs=epochs, batch_size=batch_size, class_weight=class_weight,
            callbacks=[stop], shuffle=True, verbose=verbose,
        )  # fmt: skip
        fitted.append(member)
        histories.append(hist.history)
    fit_s = time.perf_counter() - t0
    if len(fitted) == 1:
        model = fitted[0]
    else:  # one graph: the members side by side, their probabilities averaged
        ins = [keras.Input(shape=t.shape[1:], name=t.name) for t in fitted[0].inputs]
        outs = [m(ins if len(ins) > 1 else ins[0]) for m in fitted]
        model = keras.Model(ins, keras.layers.Average(name="risk_mean")(outs), name=name.replace("-", "_"))
    epochs_run = [len(hh["loss"]) for hh in histories]

    t0 = time.perf_counter()
    spec = [tf.TensorSpec((None, len(FEATURE_NAMES)), tf.float32, name="features")]
    if uses_seq:
        spec.append(tf.TensorSpec((None, WINDOW, len(SEQUENCE_NAMES)), tf.float32, name="sequence"))
    # tf2onnx 1.17 with Keras 3 looks the outputs up by ``model.output_names`` (absent in Keras 3): name it.
    model.output_names = ["probability"]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=tuple(spec), opset=OPSET)
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    export_s = time.perf_counter() - t0
    members = len(fitted)
    training = {
        "epochs_run": epochs_run if len(epochs_run) > 1 else epochs_run[0],
        "epochs_max": epochs,
        "batch_size": batch_size,
        "architecture": (f"mean of {members} independently trained copies of: " if members > 1 else "")
        + describe(family, h) + f"; binary cross-entropy; early stopping on val AUC (patience"
        f" {patience}, best weights restored)",
        "parameters": int(model.count_params()),
        "best_val_auc_keras": [round(float(max(hh["val_auc"])), 4) for hh in histories],
        "class_weight": {str(k): v for k, v in class_weight.items()},
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }
    return _Fitted(
        proto=proto,
        native=lambda arrs: model.predict(arrs, batch_size=8192, verbose=0).reshape(-1),
        reference="keras", training=training,
        provenance={"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                    "onnx_opset": OPSET},
        timings={"fit_s": fit_s, "export_s": export_s},
    )  # fmt: skip


def _fit_gbm(ds: Prepared, seeds: list[int], h: GbmHyper, doc: str) -> _Fitted:
    """Fit LightGBM members (:mod:`vigil.training.gbm`) and export their mean with onnxmltools."""
    import onnxmltools

    from vigil.training import gbm

    t0 = time.perf_counter()
    boosters, info = gbm.fit_members(ds.x["train"], ds.y["train"], ds.x["validation"], ds.y["validation"], seeds,
                                     h, threads=max(1, os.cpu_count() or 1),
                                     train_stay_start=ds.stay_start["train"])  # fmt: skip
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proto = gbm.to_onnx(boosters, len(FEATURE_NAMES), doc)
    export_s = time.perf_counter() - t0
    members = len(boosters)
    training = {
        "rounds": info["rounds"] if members > 1 else info["rounds"][0],
        "rounds_max": h.max_rounds,
        "architecture": (f"mean probability of {members} boosters (seeds differ) of: " if members > 1 else "")
        + gbm.describe(h),
        "parameters": info["leaves"],
        "parameters_are": "tree leaves",
        "best_val_auc": info["best_val_auc"],
        "class_weight": {"0": 1.0, "1": info["scale_pos_weight"]},
        "thresholds_rounded_to_float32": info["thresholds_rounded"],
        "devices": ["CPU"],
    }
    return _Fitted(
        proto=proto, native=lambda arrs: gbm.predict(boosters, arrs[0]), reference="lightgbm", training=training,
        provenance={"lightgbm": info["lightgbm"], "onnxmltools": onnxmltools.__version__,
                    "onnx_opset": gbm.OPSET},
        timings={"fit_s": fit_s, "export_s": export_s},
    )  # fmt: skip


def calibrate_demand(target: Path, data: Path) -> Path:
    """Fit and write the demand calibration of the version registered at ``target`` (``<root>/<name>/<version>``,
    as returned by :func:`train_family`) on the validation split of ``data``, the file it was trained on (the
    card's seed and ``max_stays`` rebuild the same split); returns the file written. Errors propagate: the
    caller decides how to report them (the version stays registered either way)."""
    from vigil.demand.fitting import calibrate_version
    from vigil.registry import Registry

    target = Path(target)
    ref = Registry(target.parent.parent).get(f"{target.parent.name}:{target.name}")
    _, path = calibrate_version(ref, Path(data))
    return path
