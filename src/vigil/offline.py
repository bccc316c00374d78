"""Offline scoring of whole PhysioNet-layout frames with the serving featurizer and ONNX model.

The vectorised twin of the worker's per-batch path (same :mod:`vigil.features` functions, same
:class:`~vigil.scoring.Scorer`): row t sees rows 0..t of its own stay only. The broker tests show the
worker and ``vigil predict`` agree with this path (tolerance 1e-5); evaluation, the promotion gate and
the trainer use it because it scores all of set A in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vigil.features import featurize, frame_chunks, sequence
from vigil.scoring import Scorer

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["score_frame"]


def score_frame(scorer: Scorer, df: pd.DataFrame, chunk_rows: int = 131_072) -> tuple[np.ndarray, np.ndarray]:
    """(probability float32 [N], stay_start bool [N]) for every row of ``df`` (sorted by stay, then hour)."""
    from vigil.progress import progress

    stay_start, chunks = frame_chunks(df, chunk_rows)
    probs = np.empty(stay_start.shape[0], dtype=np.float32)
    with progress(int(stay_start.shape[0]), f"score {scorer.name}:{scorer.version}", unit="row") as bar:
        for a, b, inp in chunks:
            seq = sequence(inp) if scorer.needs_sequence else None
            probs[a:b] = scorer.predict(featurize(inp), seq)
            bar.update(b - a)
    return probs, stay_start
