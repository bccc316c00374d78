"""The site's sample: its identity (sha256) and its seeded split by patient.

``fit`` stays adapt the model (``train``: the site trees / recalibration layer; ``tune``: early stopping, the
choice between the two adaptations, and for the site trees their calibration and levels) and ``check`` stays
are held back: the report and the promotion gate read them only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vigil.training.data import split_by_patient

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["sample_sha256", "SiteSplit", "split_site", "site_sample_mask", "frame_features", "frame_labels",
           "frame_counts"]


def sample_sha256(path: Path) -> str:
    """sha256 of the file, or of a directory's ``.psv`` files (relative name and bytes, in name order)."""
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.rglob("*.psv")):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            h.update(f.read_bytes())
    else:
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class SiteSplit:
    train: pd.DataFrame
    tune: pd.DataFrame
    check: pd.DataFrame
    seed: int
    fractions: tuple[float, float, float]

    @property
    def fit(self) -> pd.DataFrame:
        import pandas as pd

        return pd.concat([self.train, self.tune], ignore_index=True)

    def counts(self) -> dict[str, dict[str, int]]:
        return {k: frame_counts(getattr(self, k)) for k in ("train", "tune", "check")}


def frame_counts(df: pd.DataFrame) -> dict[str, int]:
    """``stays``, ``rows``, ``septic_stays`` and ``positive_rows`` of a frame (0 septic without labels)."""
    labelled = "SepsisLabel" in df and len(df) > 0
    septic = df.groupby("patient_id", sort=False)["SepsisLabel"].max() if labelled else None
    return {"stays": int(df["patient_id"].nunique()), "rows": len(df),
            "septic_stays": int(septic.sum()) if septic is not None else 0,
            "positive_rows": int(df["SepsisLabel"].sum()) if labelled else 0}  # fmt: skip


def split_site(df: pd.DataFrame, seed: int, check_frac: float = 0.3, tune_share: float = 0.3) -> SiteSplit:
    """Seeded split by patient: ``check_frac`` of the stays held back, the rest ``train`` / ``tune``
    (``tune_share`` of them tune)."""
    fit = 1.0 - check_frac
    fr = (fit * (1 - tune_share), fit * tune_share, check_frac)
    m = split_by_patient(df["patient_id"].to_numpy(), seed, fr)

    def part(mask: np.ndarray) -> pd.DataFrame:
        return df[mask].reset_index(drop=True)

    return SiteSplit(part(m["train"]), part(m["validation"]), part(m["test"]), seed, fr)


def site_sample_mask(patient_ids: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Rows of the seeded ``frac`` of the stays that ``--sample-frac`` keeps (the rest is never read)."""
    return split_by_patient(patient_ids, seed, (frac, 0.0, 1.0 - frac))["train"]


def frame_features(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, F], stay_start bool [N]) of a frame sorted by stay, then hour."""
    from vigil.features import FEATURE_NAMES, featurize, frame_chunks

    stay_start, chunks = frame_chunks(df)
    x = np.empty((stay_start.shape[0], len(FEATURE_NAMES)), dtype=np.float32)
    for a, b, inp in chunks:
        x[a:b] = featurize(inp)
    stay_start = stay_start.copy()
    if stay_start.size:
        stay_start[0] = True
    return x, stay_start


def frame_labels(df: pd.DataFrame) -> np.ndarray:
    """SepsisLabel as int8 (a missing label is 0)."""
    return df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
