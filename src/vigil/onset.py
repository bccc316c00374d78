"""The onset probability of a model version: its isotonic map from risk score to P(sepsis onset within h hours).

The map is part of the model version: the ``sepsis_onset`` section of ``demand_calibration.json`` in the
version's folder (fitted on the validation split by ``vigil demand calibrate``; format in
:mod:`vigil.demand.calibration`, which builds on this module). The worker reads it here to quote an onset
probability beside an alert's score (:meth:`vigil.scoring.Scorer.onset_probability`) and the demand job reads
the same maps through :class:`vigil.demand.calibration.Calibration`; this module is serving-side, so the worker
imports nothing from :mod:`vigil.demand`.

>>> m = IsotonicMap.from_json({"x": [0.0, 1.0], "y": [0.0, 0.5], "base_rate": 0.05})
>>> m(np.array([0.0, 0.5, 1.0])).tolist()
[0.0, 0.25, 0.5]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.errors import ConfigError

if TYPE_CHECKING:
    from vigil.registry import ModelRef

__all__ = ["CALIBRATION_FILE", "FORMAT", "IsotonicMap", "check_format", "load_onset_maps", "onset_map"]

CALIBRATION_FILE = "demand_calibration.json"  # in the model version's folder
FORMAT = "vigil-demand-calibration"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsotonicMap:
    """Score -> probability for one horizon (knots of :func:`vigil.demand.calibration.isotonic_fit`), and the
    base rate."""

    x: np.ndarray
    y: np.ndarray
    base_rate: float

    def __call__(self, risk: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(np.asarray(risk, dtype=np.float64), self.x, self.y), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y], "base_rate": self.base_rate}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> IsotonicMap:
        x, y = np.asarray(d["x"], dtype=np.float64), np.asarray(d["y"], dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or not x.size or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            msg = "sepsis_onset knots must be two non-empty, equally long, non-decreasing lists"
            raise ValueError(msg)
        return cls(x, y, float(d["base_rate"]))


def check_format(d: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``d`` is a calibration document of the version this code reads."""
    if d.get("format") != FORMAT or d.get("v") != 1:
        msg = f"not a {FORMAT} v1 document"
        raise ValueError(msg)


def read_calibration_doc(path: Path) -> dict[str, Any]:
    """The JSON document of the calibration file at ``path`` (not yet checked); :class:`ConfigError` when it is
    missing or unreadable. The one reader for the worker (:func:`load_onset_maps`) and the demand job
    (:meth:`vigil.demand.calibration.Calibration.load`)."""
    path = Path(path)
    if not path.is_file():
        msg = (f"no demand calibration at {path}: fit one with `vigil demand calibrate --out {path}` "
               "(or point demand.calibration_file / --calibration at one)")  # fmt: skip
        raise ConfigError(msg)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read the demand calibration {path}: {exc}"
        raise ConfigError(msg) from exc
    return doc  # type: ignore[no-any-return]


def load_onset_maps(path: Path) -> tuple[str, str, dict[int, IsotonicMap]]:
    """``(model name, version, {horizon h: map})`` of the calibration file at ``path``; :class:`ConfigError`
    when it is missing or malformed."""
    doc = read_calibration_doc(path)
    try:
        check_format(doc)
        maps = {int(h): IsotonicMap.from_json(m) for h, m in doc["sepsis_onset"].items()}
        return str(doc["model"]["name"]), str(doc["model"]["version"]), maps
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"{path}: bad demand calibration: {type(exc).__name__}: {exc}"
        raise ConfigError(msg) from exc


def onset_map(ref: ModelRef, horizon_h: int) -> IsotonicMap | None:
    """The ``sepsis_onset`` map at ``horizon_h`` of ``ref``'s calibration, or None (logged) when the version has
    none, it is malformed, or it belongs to another version or lacks the horizon."""
    path = ref.path / CALIBRATION_FILE
    if not path.is_file():
        log.warning("model %s:%s has no %s: alerts will not quote an onset probability", ref.name, ref.version,
                    CALIBRATION_FILE)  # fmt: skip
        return None
    try:
        name, version, maps = load_onset_maps(path)
    except ConfigError as exc:
        log.warning("model %s:%s: %s; alerts will not quote an onset probability", ref.name, ref.version, exc)
        return None
    if (name, version) != (ref.name, ref.version) or horizon_h not in maps:
        log.warning("model %s:%s: its demand calibration is for %s:%s or lacks %d h; no onset probability",
                    ref.name, ref.version, name, version, horizon_h)  # fmt: skip
        return None
    return maps[horizon_h]
