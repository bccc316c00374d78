"""Keras model families for the sepsis risk model (TensorFlow is imported by the caller, lazily).

Every family reads ``features`` [B, F] (the featurizer's vector of the scored row); the temporal family
also reads ``sequence`` [B, W, K] (:func:`vigil.features.sequence`). Each model standardises its own
inputs with ``Normalization`` layers adapted on the training split, so the exported ONNX file takes the
raw feature values the worker computes. Dropout is the identity at inference and in ONNX.

* ``logreg``: logistic regression (one sigmoid unit) with an L2 penalty — the transparent reference.
* ``mlp``: Dense 64 relu -> Dense 32 relu -> Dense 1 sigmoid, dropout after each hidden layer, small L2.
  Without dropout/L2 the MLP memorises the septic training stays within 1-2 epochs (static features such
  as Age and HospAdmTime nearly identify a stay) and validation AUROC falls from 0.79 to 0.73.
* ``tcn``: a temporal convolutional network over the last W hours: three causal dilated 1-D convolutions
  (kernel 2, dilations 1, 2, 4: the receptive field is the whole 8-h window), flattened, joined with a
  dense projection of the feature vector, then Dense 64 -> Dense 32 -> sigmoid. ``filters`` sets its
  size: 64 trains in minutes on 2 CPU cores; 128-256 is where a GPU pays off. A TCN rather than a GRU
  because tf2onnx turns Keras 3 recurrent layers into ONNX Loop graphs whose parity and GPU speed are
  fragile, while convolutions export to plain, fast Conv nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FAMILIES", "KERAS_FAMILIES", "Hyper", "build_model", "describe"]

KERAS_FAMILIES = ("logreg", "mlp", "tcn")
FAMILIES = (*KERAS_FAMILIES, "gbm")  # gbm: LightGBM trees, vigil.training.gbm


@dataclass(frozen=True, slots=True)
class Hyper:
    """Hyper-parameters shared by the families (each uses the ones it needs)."""

    dropout: float = 0.3
    l2: float = 1e-4
    learning_rate: float = 1e-3
    filters: int = 64


def describe(family: str, h: Hyper) -> str:
    """One line for the model card."""
    if family == "logreg":
        return f"Normalization -> Dense1 sigmoid (logistic regression); L2 {h.l2}; Adam {h.learning_rate}"
    if family == "mlp":
        return (
            f"Normalization -> Dense64 relu -> Dropout {h.dropout} -> Dense32 relu -> Dropout {h.dropout}"
            f" -> Dense1 sigmoid; L2 {h.l2}; Adam {h.learning_rate}"
        )
    return (
        f"sequence [W, K] -> Normalization -> 3 x causal Conv1D({h.filters}, k=2, dilation 1/2/4) relu ->"
        f" Flatten -> Dropout {h.dropout}; features -> Normalization -> Dense{2 * h.filters} relu; concat ->"
        f" Dense64 relu -> Dropout {h.dropout} -> Dense32 relu -> Dense1 sigmoid; L2 {h.l2}; Adam {h.learning_rate}"
    )


def build_model(
    family: str, keras: Any, x_train: np.ndarray, seq_train: np.ndarray | None, h: Hyper, name: str
) -> Any:
    """A compiled Keras model of ``family`` with its input normalisation adapted on the training split."""
    if family not in KERAS_FAMILIES:
        raise ValueError(f"unknown Keras model family {family!r}; choose from {KERAS_FAMILIES}")
    layers = keras.layers
    reg = keras.regularizers.l2(h.l2) if h.l2 > 0 else None
    f_in = keras.Input(shape=(x_train.shape[1],), name="features")
    norm = layers.Normalization(axis=-1, name="standardize")
    norm.adapt(x_train)
    f = norm(f_in)
    inputs = [f_in]
    if family == "logreg":
        out = layers.Dense(1, activation="sigmoid", kernel_regularizer=reg, name="risk")(f)
    elif family == "mlp":
        z = layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense_64")(f)
        z = layers.Dropout(h.dropout, name="dropout_64")(z)
        z = layers.Dense(32, activation="relu", kernel_regularizer=reg, name="dense_32")(z)
        z = layers.Dropout(h.dropout, name="dropout_32")(z)
        out = layers.Dense(1, activation="sigmoid", name="risk")(z)
    else:
        assert seq_train is not None, "the tcn family needs the hourly sequence"
        s_in = keras.Input(shape=seq_train.shape[1:], name="sequence")
        inputs.append(s_in)
        s_norm = layers.Normalization(axis=-1, name="standardize_sequence")
        s_norm.adapt(seq_train.reshape(-1, seq_train.shape[-1]))
        s = s_norm(s_in)
        for i, d in enumerate((1, 2, 4)):
            s = layers.Conv1D(h.filters, 2, padding="causal", dilation_rate=d, activation="relu",
                              kernel_regularizer=reg, name=f"tcn_{i}")(s)  # fmt: skip
        s = layers.Flatten(name="tcn_flat")(s)
        s = layers.Dropout(h.dropout, name="tcn_dropout")(s)
        g = layers.Dense(2 * h.filters, activation="relu", kernel_regularizer=reg, name="features_dense")(f)
        z = layers.Concatenate(name="join")([s, g])
        z = layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense_64")(z)
        z = layers.Dropout(h.dropout, name="dropout_64")(z)
        z = layers.Dense(32, activation="relu", kernel_regularizer=reg, name="dense_32")(z)
        out = layers.Dense(1, activation="sigmoid", name="risk")(z)
    model = keras.Model(inputs=inputs, outputs=out, name=name.replace("-", "_"))
    model.compile(
        optimizer=keras.optimizers.Adam(h.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="auprc")],
    )
    return model
