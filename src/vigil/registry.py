"""The model registry on disk: ``models/<name>/<version>/{model.onnx, card.json}`` + ``models/serving.json``.

``serving.json`` maps each model name to the version that workers serve. The model card carries the
feature schema (names and hash), the operating threshold, metrics and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vigil.errors import ModelError

__all__ = ["ModelRef", "Registry"]


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    path: Path  # the version folder
    card: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def feature_hash(self) -> str:
        return str(self.card["feature_schema"]["hash"])


class Registry:
    """Read access to the on-disk registry.

    >>> from vigil.config import REPO_ROOT
    >>> reg = Registry(REPO_ROOT / "models")
    >>> "sepsis-mlp" in reg.serving()
    True
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def serving(self) -> dict[str, str]:
        path = self.root / "serving.json"
        if not path.exists():
            return {}
        return {str(k): str(v) for k, v in orjson.loads(path.read_bytes()).items()}

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / "card.json").exists() and (p / "model.onnx").exists()]
        return sorted(found, key=lambda v: (len(v), v))

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def get(self, spec: str) -> ModelRef:
        """Resolve ``NAME`` (the serving version, else the newest) or ``NAME:VERSION``."""
        name, _, version = spec.partition(":")
        if not version:
            version = self.serving().get(name) or (self.versions(name) or [""])[-1]
        path = self.root / name / version
        card_path = path / "card.json"
        if not version or not card_path.exists() or not (path / "model.onnx").exists():
            msg = f"model {spec!r} not found in registry {self.root} (have: {self.names()})"
            raise ModelError(msg)
        card = orjson.loads(card_path.read_bytes())
        for key in ("name", "version", "feature_schema", "threshold", "input", "output"):
            if key not in card:
                msg = f"model card {card_path} lacks required field {key!r}"
                raise ModelError(msg)
        return ModelRef(name=name, version=version, path=path, card=card)

    def serving_refs(self, specs: list[str] | None = None) -> list[ModelRef]:
        specs = specs or list(self.serving())
        if not specs:
            msg = f"no serving model in {self.root}/serving.json and none configured"
            raise ModelError(msg)
        return [self.get(s) for s in specs]
