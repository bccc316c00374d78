"""Fit a model version's ``prior_shift`` block (:mod:`vigil.onboarding.prior`: the score -> row posterior map and
the prevalence it was fitted at) on its training-time validation split, for versions trained before ``vigil
train`` wrote it. With ``--write`` the block goes into the version's card (validated, atomic). It is what
``vigil onboard --unlabelled --prevalence P`` moves the threshold with.

    PYTHONPATH=src .venv/bin/python scripts/fit_prior_shift.py --model sepsis-gbm:1 [--data ../shared/...] [--write]

Prints the block as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sepsis-gbm:1")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/physionet2019/setA.parquet"),
                    help="the version's training file (its card's training.source_file), split with its seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the block into the version's card")
    a = ap.parse_args()

    from vigil.card import write_card
    from vigil.evaluation.report import jsonable
    from vigil.evaluation.selection import select_rows
    from vigil.offline import score_frame
    from vigil.onboarding.prior import fit_prior_shift
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    ref = Registry(a.models_dir).get(a.model)
    sel = select_rows(ref, a.data, "validation", None)
    p, s = score_frame(Scorer(ref, threads=a.threads), sel.df)
    y = sel.df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
    block = fit_prior_shift(p, y, s, f"validation split of {sel.source} (the trainer's patient-level split)")
    print(json.dumps(jsonable(block)), flush=True)
    if a.write:
        card = dict(ref.card)
        card["prior_shift"] = jsonable(block)
        write_card(ref.path / "card.json", card)
        print(json.dumps({"written": str(ref.path / "card.json")}))


if __name__ == "__main__":
    main()
