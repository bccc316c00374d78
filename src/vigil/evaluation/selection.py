"""Which rows ``vigil evaluate`` scores: a split of the model's training file, or all of other data.

On the model's own training file (card ``training.source_file``) the patient-level split is rebuilt with
:func:`vigil.training.data.split_by_patient` and the card's seed (default: test). Any other PhysioNet-format
data (another hospital) is evaluated whole (``all``); when the card's training parquet is at hand, the stays
that were in the model's training or validation split are counted and reported (optimism warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.config import DEFAULT_DATA
from vigil.errors import ConfigError
from vigil.registry import ModelRef

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_DATA", "SPLIT_CHOICES", "Selection", "select_rows", "card_training", "data_or_default"]

SPLIT_CHOICES = ("test", "validation", "train", "all")


def data_or_default(data: Path | None) -> Path:
    """``data`` when given, else :data:`~vigil.config.DEFAULT_DATA` (relative to the working directory) when it
    exists; :class:`ConfigError` saying how to name the data otherwise."""
    if data is not None:
        return Path(data)
    if not DEFAULT_DATA.exists():
        msg = (f"no --data given and the default data {DEFAULT_DATA} (relative to the working directory "
               f"{Path.cwd()}) does not exist: pass --data PATH")  # fmt: skip
        raise ConfigError(msg)
    return DEFAULT_DATA


@dataclass
class Selection:
    """The rows to evaluate and how they were chosen (``notes`` go to the report's caveats)."""

    df: pd.DataFrame
    source: str  # data file name (no path: paths may carry user names)
    split: str
    training_data: bool
    notes: list[str] = field(default_factory=list)


def card_training(ref: ModelRef) -> dict[str, Any]:
    return dict(ref.model_card.training)


def _trained_on_first(training: dict[str, Any]) -> int | None:
    """``N`` when the card says the model was trained on the first N stays of its file (a smoke run):
    the card's ``training.max_stays`` (cards since the trainer records it), else its free-text data line."""
    if training.get("max_stays") is not None:
        return int(training["max_stays"])
    m = re.search(r"first (\d+) stays", str(training.get("data", "")))
    return int(m.group(1)) if m else None


def _first_stays(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is None:
        return df
    import pandas as pd

    keep = pd.unique(df["patient_id"])[: max(limit, 0)]
    return df[df["patient_id"].isin(keep)].reset_index(drop=True)


def _split_frame(ref: ModelRef, data: Path, split: str, notes: list[str]) -> pd.DataFrame:
    """The rows of ``split`` of the model's training file, rebuilt with the card's seed."""
    from vigil.training.data import load_training_frame, split_by_patient

    training = card_training(ref)
    spec = training.get("split") or {}
    if "seed" not in spec:
        msg = f"model card of {ref.name}:{ref.version} has no training.split.seed: cannot rebuild the {split} split"
        raise ConfigError(msg)
    df = load_training_frame(data, max_stays=_trained_on_first(training))
    mask = split_by_patient(df["patient_id"].to_numpy(), int(spec["seed"]))[split]
    out = df[mask].reset_index(drop=True)
    got = int(out["patient_id"].nunique())
    if split in spec and int(spec[split]) != got:
        notes.append(
            f"The rebuilt {split} split has {got} stays but the card records {spec[split]}: the split "
            "may not be the one the model was trained with."
        )
    return out


def _overlap_note(ref: ModelRef, df: pd.DataFrame, data: Path) -> str | None:
    """How many evaluated stays were in the model's training or validation split, when the card's training
    file (parquet) is found beside the data or at the default location; else ``None``."""
    training = card_training(ref)
    src, seed = training.get("source_file"), (training.get("split") or {}).get("seed")
    if not src or seed is None or not str(src).endswith(".parquet"):
        return None
    path = next((p for p in (data.parent / str(src), DEFAULT_DATA.parent / str(src)) if p.is_file()), None)
    if path is None:
        return None
    import pandas as pd

    from vigil.training.data import split_by_patient

    ids = pd.read_parquet(path, columns=["patient_id"])["patient_id"].to_numpy()
    limit = _trained_on_first(training)
    if limit is not None:
        ids = ids[np.isin(ids, pd.unique(ids)[:limit])]
    masks = split_by_patient(ids, int(seed))
    seen = set(ids[masks["train"] | masks["validation"]].tolist())
    n = sum(1 for pid in pd.unique(df["patient_id"]) if pid in seen)
    if not n:
        return None
    return (
        f"{n} of the evaluated stays were in this model's training or validation split "
        f"({src}): the results are optimistic for those stays."
    )


def select_rows(ref: ModelRef, data: Path, split: str | None = None, limit: int | None = None) -> Selection:
    """Load ``data`` and select the rows to evaluate (see the module docstring); ``limit`` keeps the first
    N stays of the selection. Raises :class:`ConfigError` for a train/validation/test split of data that is
    not the model's training file."""
    from vigil.training.data import load_training_frame

    data = Path(data)
    if not data.exists():
        msg = f"evaluation data {data} does not exist"
        raise ConfigError(msg)
    src = card_training(ref).get("source_file")
    training = bool(src) and data.name == src
    split = split or ("test" if training else "all")
    if split not in SPLIT_CHOICES:
        msg = f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}"
        raise ConfigError(msg)
    notes: list[str] = []
    if split != "all" and not training:
        msg = (
            f"--split {split} needs the model's training data ({src or 'unknown'}); {data.name} is other "
            "data: evaluate it with --split all"
        )
        raise ConfigError(msg)
    if split != "all":
        df = _split_frame(ref, data, split, notes)
    else:
        df = load_training_frame(data, max_stays=limit)
        if training:
            notes.append(
                "--split all on the model's own training file includes its training and validation "
                "stays: discrimination and utility are optimistic."
            )
        else:
            notes.append(
                f"{data.name} is not the model's training file ({src or 'unknown'}): all of it is "
                "evaluated (split 'all')."
            )
            overlap = _overlap_note(ref, df, data)
            if overlap:
                notes.append(overlap)
    if limit is not None:
        df = _first_stays(df, limit)
        notes.append(f"Only the first {limit} stays of the selection were evaluated (--limit).")
    if "SepsisLabel" not in df.columns or df.empty:
        msg = f"{data.name}: no rows with a SepsisLabel column to evaluate"
        raise ConfigError(msg)
    return Selection(df=df, source=data.name, split=split, training_data=training, notes=notes)
