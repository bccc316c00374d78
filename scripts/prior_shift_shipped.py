"""The prior-shift threshold rule (vigil.onboarding.prior) on a base that already knows the units: a registered
version scored on its own untouched test split, per ICU unit, each unit's own share of septic stays as the stated
prevalence; utility at the card's threshold, at the moved one and at the unit's best. Not part of ``make test``.

    PYTHONPATH=src .venv/bin/python scripts/prior_shift_shipped.py --model sepsis-gbm:1
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
    ap.add_argument("--data", type=Path, default=Path("../shared/data/physionet2019/setA.parquet"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from vigil.evaluation.selection import select_rows
    from vigil.evaluation.utility import best_threshold, normalized_utility
    from vigil.offline import score_frame
    from vigil.onboarding.prior import shifted_threshold, site_row_prior, stay_counts
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    ref = Registry(a.models_dir).get(a.model)
    block = ref.card["prior_shift"]
    df = select_rows(ref, a.data, "test", None).df
    p, s = score_frame(Scorer(ref, threads=a.threads), df)
    y = df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
    ids = np.cumsum(s) - 1
    first = df.groupby("patient_id", sort=False)[["Unit1", "Unit2"]].first()
    unit = np.where(first["Unit1"].to_numpy() == 1, "MICU", np.where(first["Unit2"].to_numpy() == 1, "SICU", "none"))
    for u in ("MICU", "SICU", "none"):
        m = unit[ids] == u
        yy, pp, ss = y[m], p[m], s[m].copy()
        ss[0] = True
        n, septic, rows = stay_counts(yy, ss)
        t = shifted_threshold(block, ref.threshold, site_row_prior(block, septic / n, rows / n))
        print(json.dumps({"model": a.model, "split": "test", "unit": u, "stays": n, "septic_stays": septic,
                          "stated_prevalence": round(septic / n, 4), "threshold": ref.threshold,
                          "utility": round(normalized_utility(yy, pp >= ref.threshold, ss), 4),
                          "moved_threshold": round(t, 4),
                          "utility_moved": round(normalized_utility(yy, pp >= t, ss), 4),
                          "best": [round(v, 4) for v in best_threshold(pp, yy, ss)]}))  # fmt: skip


if __name__ == "__main__":
    main()
