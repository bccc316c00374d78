"""Historical PhysioNet-layout data for training and evaluation: loading and the patient-level split.

Formats: a parquet file (``patient_id`` + the 40 inputs + ``SepsisLabel``, sorted by stay then hour), a
directory of PhysioNet ``.psv`` files, or a ``.tar.gz``/``.tgz``/``.zip`` of them (the file stem is the
patient id). pandas is imported lazily.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_training_frame", "split_by_patient", "SPLITS"]

SPLITS = ("train", "validation", "test")


def _read_psv(name: str, raw: bytes) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(io.BytesIO(raw), sep="|")
    df.insert(0, "patient_id", Path(name).stem)
    return df


def load_training_frame(data: Path, max_stays: int | None = None) -> pd.DataFrame:
    """PhysioNet-layout frame sorted by stay then ICULOS, from a parquet file, a ``.psv`` directory or a
    ``.tar.gz``/``.zip`` of ``.psv`` files. ``max_stays`` keeps the first N stays (in file order)."""
    import pandas as pd

    data = Path(data)
    frames: list[pd.DataFrame] = []
    if data.is_dir():
        files = sorted(data.rglob("*.psv"))[: max_stays or None]
        frames = [_read_psv(f.name, f.read_bytes()) for f in files]
    elif data.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(data) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".psv")), key=lambda m: m.name
            )
            for m in members[: max_stays or None]:
                fh = tar.extractfile(m)
                if fh is not None:
                    frames.append(_read_psv(m.name, fh.read()))
    elif data.suffix == ".zip":
        with zipfile.ZipFile(data) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".psv"))[: max_stays or None]
            frames = [_read_psv(n, zf.read(n)) for n in names]
    else:
        df = pd.read_parquet(data)
        if max_stays is not None:
            keep = pd.unique(df["patient_id"])[:max_stays]
            df = df[df["patient_id"].isin(keep)].reset_index(drop=True)
        return df
    if not frames:
        raise FileNotFoundError(f"no .psv stays found in {data}")
    return pd.concat(frames, ignore_index=True)


def split_by_patient(
    patient_ids: np.ndarray, seed: int, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
) -> dict[str, np.ndarray]:
    """Row masks ``{"train", "validation", "test"}``: a seeded permutation of the distinct patients cut
    70/15/15, so no stay is in two splits.

    >>> m = split_by_patient(np.repeat(np.arange(20), 3), seed=1)
    >>> [int(v.sum()) // 3 for v in m.values()], int(sum(m.values()).max())
    ([14, 3, 3], 1)
    """
    uniq, inverse = np.unique(patient_ids, return_inverse=True)
    perm = np.random.default_rng(seed).permutation(uniq.size)
    n_train = int(round(fractions[0] * uniq.size))
    n_val = int(round(fractions[1] * uniq.size))
    which = np.empty(uniq.size, dtype=np.int8)
    which[perm[:n_train]] = 0
    which[perm[n_train : n_train + n_val]] = 1
    which[perm[n_train + n_val :]] = 2
    row = which[inverse]
    return {"train": row == 0, "validation": row == 1, "test": row == 2}
