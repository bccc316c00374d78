"""Offline training. Nothing heavy is imported here: :func:`train_baseline` is resolved lazily and loads
TensorFlow only when called, so serving code never pays for (or needs) the training stack."""

from __future__ import annotations

from typing import Any

__all__ = ["train_baseline"]


def __getattr__(name: str) -> Any:
    if name == "train_baseline":
        from vigil.training.baseline import train_baseline

        return train_baseline
    raise AttributeError(f"module 'vigil.training' has no attribute {name!r}")
