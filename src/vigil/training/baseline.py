"""Baseline sepsis model: vigil features -> Keras MLP -> ONNX, with a model card.

``python -m vigil.training.baseline --data setA.parquet --out models`` writes
``models/<name>/<version>/model.onnx`` and ``card.json``. TensorFlow, tf2onnx and pandas are imported
inside the functions that need them: serving code imports nothing from here.

Data: a PhysioNet-layout parquet (``patient_id`` + the 40 inputs + ``SepsisLabel``, sorted by stay then
hour), a directory of PhysioNet ``.psv`` files, or a ``.tar.gz``/``.tgz``/``.zip`` of them (the file stem is
the patient id).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.evaluation.metrics import auprc, auroc
from vigil.evaluation.utility import best_threshold, normalized_utility
from vigil.features import FEATURE_NAMES, FEATURE_SCHEMA_HASH, WINDOW, featurize_frame
from vigil.training.data import load_training_frame, split_by_patient

if TYPE_CHECKING:
    pass

__all__ = ["train_baseline", "load_training_frame", "split_by_patient", "main"]

OPSET = 17
PARITY_TOL = 1e-4
PARITY_ROWS = 20_000
DATA_NAME = "PhysioNet/CinC 2019 training set A (CC BY 4.0)"
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
    " Labels are retrospective Sepsis-3 criteria, shifted 6 h early. Simple MLP baseline on row-level labels"
    " with class weights: probabilities are not calibrated (read them as a ranking; the threshold encodes the"
    " operating point). No level of consciousness, vasopressors or PaO2 in the data."
)


def _evaluate(
    probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, threshold: float
) -> dict[str, Any]:
    return {
        "auroc": round(auroc(labels, probs), 4),
        "auprc": round(auprc(labels, probs), 4),
        "utility": round(normalized_utility(labels, probs >= threshold, stay_start), 4),
        "rows": int(labels.size),
        "stays": int(stay_start.sum()),
        "positive_rows": int(labels.sum()),
        "alert_rate": round(float((probs >= threshold).mean()), 4),
    }


# ------------------------------------------------------------------------------------------ train
def train_baseline(
    data: Path,
    out_dir: Path,
    *,
    name: str = "sepsis-mlp",
    version: str = "1",
    seed: int = 7,
    epochs: int = 30,
    batch_size: int = 2048,
    max_stays: int | None = None,
    patience: int = 4,
    dropout: float = 0.3,
    l2: float = 1e-4,
    verbose: int = 2,
) -> Path:
    """Train, export and document the baseline MLP; returns ``out_dir/<name>/<version>`` (holding
    ``model.onnx`` and ``card.json``). Raises if ONNX Runtime does not reproduce Keras within 1e-4.

    Architecture: Normalization (adapted on the training split, so the ONNX file standardises its own
    input) -> Dense 64 relu -> Dense 32 relu -> Dense 1 sigmoid, with dropout after each hidden layer and
    a small L2 penalty. Without them the MLP memorises the septic training stays within 1-2 epochs (static
    features such as Age and HospAdmTime nearly identify a stay) and validation AUROC falls from 0.79 to
    0.73 over 8 epochs; with them it climbs to ~0.80. Dropout is the identity at inference and in ONNX."""
    t_all = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    import vigil

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    df = load_training_frame(Path(data), max_stays=max_stays)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x, stay_start = featurize_frame(df)
    timings["featurize_s"] = time.perf_counter() - t0
    y = df["SepsisLabel"].to_numpy(dtype=np.float32)
    masks = split_by_patient(df["patient_id"].to_numpy(), seed)
    del df
    n_feat = x.shape[1]
    xs = {k: x[m] for k, m in masks.items()}
    ys = {k: y[m] for k, m in masks.items()}
    ss = {k: stay_start[m] for k, m in masks.items()}  # splits keep whole stays, so starts stay valid

    n_pos = float(ys["train"].sum())
    n_neg = float(ys["train"].size - n_pos)
    class_weight = {0: round(ys["train"].size / (2 * n_neg), 4), 1: round(ys["train"].size / (2 * n_pos), 4)}

    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization(axis=-1, name="standardize")
    norm.adapt(xs["train"])
    reg = keras.regularizers.l2(l2) if l2 > 0 else None
    model = keras.Sequential(
        [
            keras.Input(shape=(n_feat,), name="features"),
            norm,
            keras.layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense_64"),
            keras.layers.Dropout(dropout, name="dropout_64"),
            keras.layers.Dense(32, activation="relu", kernel_regularizer=reg, name="dense_32"),
            keras.layers.Dropout(dropout, name="dropout_32"),
            keras.layers.Dense(1, activation="sigmoid", name="risk"),
        ],
        name=name.replace("-", "_"),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="auprc")],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=patience, restore_best_weights=True
    )
    t0 = time.perf_counter()
    hist = model.fit(
        xs["train"], ys["train"],
        validation_data=(xs["validation"], ys["validation"]),
        epochs=epochs, batch_size=batch_size, class_weight=class_weight,
        callbacks=[stop], shuffle=True, verbose=verbose,
    )  # fmt: skip
    timings["fit_s"] = time.perf_counter() - t0
    epochs_run = len(hist.history["loss"])

    # ---- export and parity check
    t0 = time.perf_counter()
    spec = (tf.TensorSpec((None, n_feat), tf.float32, name="features"),)
    # tf2onnx 1.17 with Keras 3 looks the outputs up by ``model.output_names`` (absent in Keras 3, so it
    # falls back to an internal tensor name and fails): name the single output explicitly.
    model.output_names = ["probability"]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto.doc_string = f"{name} v{version}: vigil features ({FEATURE_SCHEMA_HASH}) -> sepsis risk"
    onnx.checker.check_model(proto)
    target = Path(out_dir) / name / version
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "model.onnx.tmp"
    onnx.save(proto, str(tmp))
    tmp.replace(target / "model.onnx")
    timings["export_s"] = time.perf_counter() - t0

    sess = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    def onnx_probs(a: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: a})[0].reshape(-1)

    held = xs["test"][:PARITY_ROWS]
    keras_p = model.predict(held, batch_size=8192, verbose=0).reshape(-1)
    diff = float(np.max(np.abs(keras_p - onnx_probs(held)))) if held.size else 0.0
    if not diff <= PARITY_TOL:
        raise RuntimeError(f"ONNX Runtime differs from Keras by {diff:.3g} (> {PARITY_TOL}) on held-out rows")

    # ---- threshold on validation, metrics from the exported model (what serving will run)
    probs = {k: onnx_probs(xs[k]) for k in ("validation", "test")}
    thr, _ = best_threshold(probs["validation"], ys["validation"], ss["validation"])
    metrics = {k: _evaluate(probs[k], ys[k], ss[k], thr) for k in ("validation", "test")}
    timings["total_s"] = time.perf_counter() - t_all

    card = {
        "name": name,
        "version": str(version),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "task": TASK,
        "input": {"name": in_name, "dtype": "float32", "n_features": int(n_feat)},
        "output": {"name": out_name, "kind": "probability"},
        "feature_schema": {
            "names": list(FEATURE_NAMES),
            "hash": FEATURE_SCHEMA_HASH,
            "window_h": WINDOW,
            "featurizer": "vigil.features",
        },
        "threshold": round(float(thr), 4),
        "threshold_rule": "maximises normalized utility on the validation split",
        "metrics": metrics,
        "training": {
            "data": DATA_NAME if max_stays is None else f"{DATA_NAME}, first {max_stays} stays",
            "source_file": Path(data).name,
            "split": {
                "train": int(ss["train"].sum()),
                "validation": int(ss["validation"].sum()),
                "test": int(ss["test"].sum()),
                "seed": seed,
                "by": "patient",
            },
            "epochs_run": epochs_run,
            "epochs_max": epochs,
            "batch_size": batch_size,
            "architecture": (
                f"Normalization -> Dense64 relu -> Dropout {dropout} -> Dense32 relu -> Dropout {dropout}"
                f" -> Dense1 sigmoid; L2 {l2}; Adam 1e-3; binary cross-entropy; early stopping on val AUC"
                f" (patience {patience}, best weights restored)"
            ),
            "best_val_auc_keras": round(float(max(hist.history["val_auc"])), 4),
            "class_weight": {str(k): v for k, v in class_weight.items()},
            "duration_s": round(timings["total_s"], 1),
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        },
        "parity": {"keras_vs_onnx_max_abs_diff": diff, "rows": int(held.shape[0])},
        "provenance": {
            "vigil_version": vigil.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx_opset": OPSET,
            "onnxruntime": ort.__version__,
        },
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }
    (target / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m vigil.training.baseline --data setA.parquet --out models``"""
    ap = argparse.ArgumentParser(
        prog="python -m vigil.training.baseline", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--data", type=Path, required=True, help="parquet file, .psv directory or .tar.gz/.zip")
    ap.add_argument("--out", type=Path, default=Path("models"), help="model registry directory")
    ap.add_argument("--name", default="sepsis-mlp")
    ap.add_argument("--version", default="1")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--max-stays", type=int, default=None)
    args = ap.parse_args(argv)
    target = train_baseline(
        args.data, args.out, name=args.name, version=args.version, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, max_stays=args.max_stays,
    )  # fmt: skip
    card = json.loads((target / "card.json").read_text(encoding="utf-8"))
    print(json.dumps({"model_dir": str(target), "threshold": card["threshold"], "metrics": card["metrics"],
                      "timings_s": card["training"]["timings_s"]}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
