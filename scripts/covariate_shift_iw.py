"""Can importance weighting move a site's threshold without labels? (issue 16; measured, not shipped:
docs/notes/s7-level-early.md and docs/evaluation/onboarding.md, "Covariate-shift weighting of the threshold".)

On set A's units as two sites, from ``scripts/onboard_units.py``'s base registries: a domain classifier (LightGBM,
200 rounds, 15 leaves, >= 200 rows per leaf, cross-fitted in two folds by stay; the ``unit_*`` features left out,
they name the unit outright) separates the base's labelled validation rows from the site's unlabelled 20 % sample;
the validation rows are weighted by its odds (clipped at 20) and the threshold is the one with the highest weighted
utility there (the covariate-shift assumption: the same risk for the same features at both sites). The site's
utility on its other 80 % at that threshold, at the base's, and at its own best (reading only). Not part of
``make test``.

    PYTHONPATH=src .venv/bin/python scripts/covariate_shift_iw.py --base-unit MICU --seeds 7,11,12,14,15 \
        --work /tmp/onboard-units > docs/evaluation/onboarding/covariate-shift/micu-to-sicu.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def weighted_best(p: np.ndarray, y: np.ndarray, s: np.ndarray, w: np.ndarray, grid: np.ndarray) -> float:
    """The threshold of ``grid`` with the highest weighted utility gain (each row's u1 - u0 times its weight)."""
    from vigil.evaluation.utility import row_utilities

    u1, u0, _ = row_utilities(y, s)
    order = np.argsort(p, kind="stable")
    g = ((u1 - u0) * w)[order]
    suffix = np.concatenate([np.cumsum(g[::-1])[::-1], [0.0]])
    return float(grid[int(np.argmax(suffix[np.searchsorted(p[order], grid, side="left")]))])


def stay_folds(s: np.ndarray, k: int, seed: int) -> np.ndarray:
    sid = np.cumsum(s) - 1
    return np.random.default_rng(seed).integers(0, k, sid[-1] + 1)[sid]


def domain_weights(xv: np.ndarray, sv: np.ndarray, xs: np.ndarray, ss: np.ndarray, keep: np.ndarray,
                   clip: float = 20.0) -> np.ndarray:  # fmt: skip
    """Odds that a validation row is a site row (cross-fitted), scaled by the row counts, clipped."""
    import lightgbm as lgb

    x = np.vstack([xv[:, keep], xs[:, keep]])
    d = np.r_[np.zeros(len(xv)), np.ones(len(xs))]
    fold = np.r_[stay_folds(sv, 2, 1), stay_folds(ss, 2, 2)]
    pv = np.zeros(len(xv))
    for k in range(2):
        m = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=200,
                               subsample=0.8, subsample_freq=1, colsample_bytree=0.5, verbose=-1, n_jobs=2)
        m.fit(x[fold != k], d[fold != k])
        te = (fold == k)[: len(xv)]
        pv[te] = m.predict_proba(xv[te][:, keep])[:, 1]
    return np.minimum(pv / (1 - pv) * (len(xv) / len(xs)), clip)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-unit", choices=["MICU", "SICU"], default="MICU")
    ap.add_argument("--seeds", default="7,11,12,14,15")
    ap.add_argument("--work", type=Path, default=Path("runs/onboard-units"),
                    help="scripts/onboard_units.py --work of the same base unit")
    a = ap.parse_args()

    import pandas as pd

    from vigil.evaluation.selection import select_rows
    from vigil.evaluation.utility import DEFAULT_GRID, normalized_utility
    from vigil.features import FEATURE_NAMES
    from vigil.offline import score_frame
    from vigil.onboarding import levels as lv
    from vigil.onboarding.sample import frame_features, site_sample_mask
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    site_unit = "SICU" if a.base_unit == "MICU" else "MICU"
    keep = np.array([not n.startswith("unit_") for n in FEATURE_NAMES])
    base = Registry(a.work / "registry").get(f"base-{a.base_unit.lower()}:1")
    sc = Scorer(base, threads=2)
    sel = select_rows(base, a.work / f"setA-{a.base_unit.lower()}.parquet", "validation", None)
    xv, sv = frame_features(sel.df)
    yv = sel.df["SepsisLabel"].to_numpy(np.int8)
    pv, _ = score_frame(sc, sel.df)
    site = pd.read_parquet(a.work / f"setA-{site_unit.lower()}.parquet")
    grid = np.unique(np.concatenate([DEFAULT_GRID, lv.level_grid(pv, np.geomspace(0.001, 0.6, 60))]))
    for seed in (int(x) for x in a.seeds.split(",")):
        m = site_sample_mask(site["patient_id"].to_numpy(), 0.2, seed)
        sample, rest = site[m].reset_index(drop=True), site[~m].reset_index(drop=True)
        xs, ss = frame_features(sample)
        t = time.perf_counter()
        w = domain_weights(xv, sv, xs, ss, keep)
        thr_iw = weighted_best(pv, yv, sv, w, grid)
        pr, sr = score_frame(sc, rest)
        yr = rest["SepsisLabel"].to_numpy(np.int8)
        t_or, u_or = lv.site_threshold(pr, yr, sr)

        def u(th: float, pr: np.ndarray = pr, yr: np.ndarray = yr, sr: np.ndarray = sr) -> float:
            return round(float(normalized_utility(yr, pr >= th, sr)), 4)

        print(json.dumps({"base": f"{base.name}:1", "site": site_unit, "sample_seed": seed,
                          "threshold_base": base.threshold, "utility_base": u(base.threshold),
                          "threshold_weighted": thr_iw, "utility_weighted": u(thr_iw),
                          "threshold_site_best": t_or, "utility_site_best": round(float(u_or), 4),
                          "effective_sample_share": round(float(w.sum() ** 2 / (w**2).sum() / len(w)), 3),
                          "weights_at_clip": round(float((w >= 20.0).mean()), 4),
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
