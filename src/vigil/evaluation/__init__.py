"""Offline evaluation: the PhysioNet 2019 normalized utility and ranking metrics (pure numpy)."""

from vigil.evaluation.metrics import auprc, auroc
from vigil.evaluation.utility import (
    StayUtility,
    best_threshold,
    normalized_utility,
    row_utilities,
    stay_utility,
)

__all__ = [
    "StayUtility",
    "auprc",
    "auroc",
    "best_threshold",
    "normalized_utility",
    "row_utilities",
    "stay_utility",
]
