"""ONNX Runtime scoring with a provider preference (TensorRT, CUDA, CPU by default).

A model reads ``features`` [B, F] (the featurizer's vector of the scored row) and, for temporal models,
``sequence`` [B, W, K] (the hourly sequence of :func:`vigil.features.sequence`). Each input's schema hash
in the model card must match this featurizer's, or the model is refused.

ONNX Runtime silently falls back to the CPU when a GPU provider cannot start, so the provider actually
in use is read back from the session (``session.get_providers()``), logged and exported as a metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from vigil.abstain import Abstainer, with_member_outputs
from vigil.errors import ModelError
from vigil.features import FEATURE_SCHEMA_HASH, SEQUENCE_NAMES, SEQUENCE_SCHEMA_HASH, WINDOW
from vigil.onset import onset_map
from vigil.registry import ModelRef

__all__ = ["Scorer", "choose_providers", "canary_inputs", "CANARY_TOL", "ONSET_HORIZON_H"]

CANARY_TOL = 1e-4  # a loaded model must reproduce the card's canary probabilities this closely
ONSET_HORIZON_H = 12  # alerts quote the calibrated probability of sepsis onset within this many hours
_UNSET: object = object()

log = logging.getLogger(__name__)


def choose_providers(preference: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers that this ONNX Runtime build offers, in preference order, CPU last.

    >>> choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> choose_providers(["TensorrtExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    chosen = [p for p in preference if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def canary_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Fixed canary rows (features [4, F], sequence [4, W, K]): a well patient, a septic picture, a
    hypothermic hypotensive one and a patient never measured. The trainer records each model's
    probabilities on them in the card; a worker loading the model must reproduce them (:data:`CANARY_TOL`)
    before it serves it.

    >>> x, seq = canary_inputs()
    >>> x.shape[0], seq.shape[:2] == (4, WINDOW), bool(np.isfinite(x).all() and np.isfinite(seq).all())
    (4, True, True)
    """
    from vigil.features import FeatureInput, featurize, sequence
    from vigil.variables import STATIC, VAR_INDEX, VARIABLES

    rows = [
        {"HR": 78, "O2Sat": 98, "Temp": 36.8, "SBP": 124, "MAP": 88, "DBP": 70, "Resp": 15, "WBC": 7.5},
        {"HR": 124, "O2Sat": 91, "Temp": 39.2, "SBP": 86, "MAP": 58, "DBP": 45, "Resp": 29, "WBC": 18.0,
         "Lactate": 4.1, "Creatinine": 2.4, "Platelets": 90, "FiO2": 0.5},
        {"HR": 52, "O2Sat": 93, "Temp": 35.1, "SBP": 82, "MAP": 60, "DBP": 48, "Resp": 9, "Glucose": 60},
        {},
    ]  # fmt: skip
    b, v = len(rows), len(VARIABLES)
    window = np.full((b, WINDOW, v), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        for name, val in r.items():
            window[i, -3:, VAR_INDEX[name]] = [val * 0.98, val, val * 1.01]  # last three hours
    last = window[:, -1].copy()
    hours = np.where(np.isnan(last), np.nan, 0.0).astype(np.float32)
    static = np.tile(np.array([67, 1, 1, 0, -12.5, 10], dtype=np.float32), (b, 1))
    assert static.shape[1] == len(STATIC)
    inp = FeatureInput(window, last, hours, static)
    return featurize(inp), sequence(inp)


class Scorer:
    """One loaded model. ``predict`` takes a feature matrix [B, F] and returns probabilities [B]."""

    def __init__(self, ref: ModelRef, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 1):
        import onnxruntime as ort

        if ref.feature_hash != FEATURE_SCHEMA_HASH:
            msg = (
                f"model {ref.name}:{ref.version} was trained on feature schema {ref.feature_hash}, "
                f"but this featurizer produces {FEATURE_SCHEMA_HASH}"
            )
            raise ModelError(msg)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        wanted = choose_providers(providers, ort.get_available_providers())
        # abstention (vigil.abstain): the card's block, and the member probabilities exposed as outputs if needed
        self.abstainer = Abstainer.from_spec(ref.model_card.abstention)
        self.member_names: list[str] = []
        model: str | bytes = str(ref.onnx_path)
        try:
            if self.abstainer is not None and self.abstainer.needs_members:
                model, self.member_names = with_member_outputs(ref.onnx_path)
            self.session = ort.InferenceSession(model, sess_options=opts, providers=wanted)
        except Exception as exc:
            msg = f"cannot load {ref.onnx_path}: {exc}"
            raise ModelError(msg) from exc
        self.ref = ref
        self._onset_map: Any = _UNSET
        self.provider = self.session.get_providers()[0]
        self.output_name = self.session.get_outputs()[0].name
        card = ref.model_card  # the typed card (vigil.card.ModelCard), validated
        self.n_features = int(card.input.n_features or len(card.feature_schema.names))
        self._canary = None if card.canary is None else card.canary.probabilities
        names = [i.name for i in self.session.get_inputs()]
        unknown = sorted(set(names) - {"features", "sequence"})
        if unknown or "features" not in names:
            msg = f"model {ref.name}:{ref.version} has inputs {names}; vigil provides 'features' and 'sequence'"
            raise ModelError(msg)
        self.input_name = "features"
        self.needs_sequence = "sequence" in names
        if self.needs_sequence:
            seq_hash = None if card.sequence_schema is None else card.sequence_schema.hash
            if seq_hash != SEQUENCE_SCHEMA_HASH:
                msg = (
                    f"model {ref.name}:{ref.version} reads an hourly sequence with schema {seq_hash}, "
                    f"but this featurizer produces {SEQUENCE_SCHEMA_HASH}"
                )
                raise ModelError(msg)
        if wanted[0] != self.provider:
            log.warning("model %s:%s wanted %s but runs on %s", ref.name, ref.version, wanted[0], self.provider)
        log.info("model %s:%s loaded on %s", ref.name, ref.version, self.provider)

    def check_canary(self) -> np.ndarray:
        """Run the canary rows; raise :class:`ModelError` unless the probabilities are finite, in [0, 1]
        and (when the card records them) equal to the card's within :data:`CANARY_TOL`."""
        x, seq = canary_inputs()
        got = self.predict(x, seq)
        if not np.all(np.isfinite(got)) or got.min() < 0 or got.max() > 1:
            msg = f"canary inference of {self.name}:{self.version} gave {got.tolist()}"
            raise ModelError(msg)
        want = self._canary
        if want is not None:
            diff = float(np.max(np.abs(np.asarray(want, dtype=np.float64) - got)))
            if not diff <= CANARY_TOL:
                msg = (
                    f"model {self.name}:{self.version} does not reproduce its card's canary probabilities "
                    f"(max difference {diff:.3g} > {CANARY_TOL}): the ONNX file and the card disagree"
                )
                raise ModelError(msg)
        return got

    def onset_probability(self, risk: float) -> float | None:
        """The calibrated probability that a patient with this score meets sepsis onset within
        :data:`ONSET_HORIZON_H` hours: the isotonic map of the version's resource-demand calibration
        (``demand_calibration.json``, fitted on the validation split; patients not yet septic). The model's own
        score is a ranking (class weights inflate it), so an alert quotes this number beside it. None when the
        version has no usable calibration (logged once)."""
        if self._onset_map is _UNSET:
            self._onset_map = _onset_map(self.ref)
        if self._onset_map is None:
            return None
        return float(self._onset_map(np.asarray([risk], dtype=np.float64))[0])

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def threshold(self) -> float:
        return self.ref.threshold

    @property
    def alert_level(self) -> float:
        return self.ref.alert_level

    def predict_flagged(
        self, x: np.ndarray, seq: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, list[str | None] | None]:
        """Probabilities [B] and, when the card has an abstention block, the indeterminate flags [B] and each
        row's reason (None where determinate); ``(probabilities, None, None)`` without a block."""
        if self.abstainer is None or not self.abstainer.needs_members or not self.member_names or x.shape[0] == 0:
            p = self.predict(x, seq)
            if self.abstainer is None:
                return p, None, None
            if x.shape[0] == 0:
                return p, np.zeros(0, bool), []
            ind, why = self.abstainer.flags(p, None, x)  # a measure without members (low_coverage): one output
            return p, ind, why
        feeds = self._feeds(x, seq)
        outs = self.session.run([self.output_name, *self.member_names], feeds)
        members = np.concatenate([np.asarray(o, dtype=np.float32).reshape(-1, 1) for o in outs[1:]], axis=1)
        p = np.asarray(outs[0], dtype=np.float32).reshape(-1)
        flags, reasons = self.abstainer.flags(p, members, x)
        return p, flags, reasons

    def predict(self, x: np.ndarray, seq: np.ndarray | None = None) -> np.ndarray:
        """Probabilities [B] for features ``x`` [B, F] (and, for a temporal model, ``seq`` [B, W, K])."""
        if x.ndim == 2 and x.shape[0] == 0 and x.shape[1] == self.n_features:
            return np.zeros(0, dtype=np.float32)
        out = self.session.run([self.output_name], self._feeds(x, seq))[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _feeds(self, x: np.ndarray, seq: np.ndarray | None) -> dict[str, np.ndarray]:
        if x.ndim != 2 or x.shape[1] != self.n_features:
            msg = f"expected features of shape [B, {self.n_features}], got {x.shape}"
            raise ModelError(msg)
        feeds = {"features": np.ascontiguousarray(x, np.float32)}
        if self.needs_sequence:
            want = (x.shape[0], WINDOW, len(SEQUENCE_NAMES))
            if seq is None or seq.shape != want:
                got = None if seq is None else seq.shape
                msg = f"model {self.name}:{self.version} needs a sequence of shape {want}, got {got}"
                raise ModelError(msg)
            feeds["sequence"] = np.ascontiguousarray(seq, np.float32)
        return feeds


def _onset_map(ref: ModelRef) -> Any:
    """The ``sepsis_onset`` map at :data:`ONSET_HORIZON_H` of ``ref``'s calibration (:mod:`vigil.onset`), or None."""
    return onset_map(ref, ONSET_HORIZON_H)
