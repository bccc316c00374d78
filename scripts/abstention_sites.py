"""Does the shipped abstention measure keep its PPV gain at another site? (issue 16, item 4 and its goal).

The shipped measure (``low_coverage``, :mod:`vigil.abstain`) flags a score when too few of the 34 variables were
measured in the last 72 h. ``sepsis-gbm:1``'s cut-off was fitted on set A's validation split, where habits are
set A's own. This script takes a base trained without one unit's stays (``scripts/onboard_units.py
--base-with-no-unit``: the unit's stays were never seen), fits the cut-off on the base's validation split exactly
as ``scripts/fit_abstention.py`` does for the shipped model (``--share`` of the rows scored at or above the alert
level), and applies it, unchanged, to every stay of the unseen unit, at the base's own alert level under the
configured policy. It also applies ``sepsis-gbm:1``'s own cut-off, and each cut-off together with
``--min-history-h`` (rows with fewer hours of the stay behind them indeterminate too). For each: the share of
rows and alerts abstained, stay PPV of confident vs all alerts, septic stays alerted early, and a stay bootstrap
of the relative PPV gain (90 % interval).

    PYTHONPATH=src .venv/bin/python scripts/abstention_sites.py --registry /tmp/onboard-wide/registry \\
        --base base-micu-wide:1 --base-data /tmp/onboard-wide/setA-micu-wide.parquet \\
        --site-data /tmp/onboard-wide/setA-sicu.parquet --site SICU --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _scored(ref: Any, df: Any, policy: Any) -> dict[str, Any]:
    from vigil.evaluation.alerting import simulate_policy, stay_table
    from vigil.evaluation.report import row_units, screen_scores
    from vigil.features import FEATURE_NAMES, featurize, frame_chunks
    from vigil.scoring import Scorer

    scorer = Scorer(ref, threads=2)  # the serving graph (one member is enough for low_coverage)
    s, chunks = frame_chunks(df, 131_072)
    x = np.empty((s.shape[0], len(FEATURE_NAMES)), np.float32)
    p = np.empty(s.shape[0], np.float32)
    for lo, hi, inp in chunks:  # each row featurized once, for the score and the abstention measures
        x[lo:hi] = featurize(inp)
        p[lo:hi] = scorer.predict(x[lo:hi])
    s = s.copy()
    s[0] = True
    y = df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
    screens = screen_scores(df)
    first = np.flatnonzero(s)
    static = {c: df[c].to_numpy()[first] for c in ("Unit1", "Unit2")}
    fired = simulate_policy(policy, risk=p, threshold=ref.alert_level, news2_total=screens["news2_total"],
                            stay_start=s, news2_max_part=screens["news2_max_part"], model=ref.name,
                            unit=row_units(static, stay_table(y, s).n_rows))["model_risk"]  # fmt: skip
    return {"p": p, "mem": None, "s": s, "y": y, "x": x, "fired": fired}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", type=Path, required=True)
    ap.add_argument("--base", required=True, help="NAME:VERSION in --registry")
    ap.add_argument("--base-data", type=Path, required=True, help="the parquet the base was trained on")
    ap.add_argument("--site-data", type=Path, required=True, help="the unseen unit's stays (every one is used)")
    ap.add_argument("--site", default="other unit")
    ap.add_argument("--share", type=float, default=0.2, help="as sepsis-gbm:1's block (share_of_alerting_rows)")
    ap.add_argument("--shipped", default="sepsis-gbm:1", help="a version in models/ whose cut-off is also applied")
    ap.add_argument("--min-history-h", type=float, nargs="*", default=[9.0],
                    help="each cut-off is measured alone and with each of these (rows with fewer hours behind them)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    import pandas as pd

    from vigil.config import load_settings
    from vigil.evaluation.abstention import (
        evaluate_abstention,
        fit_member_spread,
        indeterminate_rows,
        ppv_gain_interval,
    )
    from vigil.evaluation.report import jsonable
    from vigil.evaluation.selection import select_rows
    from vigil.registry import Registry

    t0 = time.perf_counter()
    policy = load_settings(None).alerts
    ref = Registry(a.registry).get(a.base)
    shipped = Registry(Path("models")).get(a.shipped).model_card.abstention
    val = _scored(ref, select_rows(ref, a.base_data, "validation", None).df, policy)
    block = fit_member_spread(val["mem"], val["p"], ref.alert_level, a.share,
                              f"validation split of {a.base_data.name}", "low_coverage", val["x"])  # fmt: skip
    ship_block = {**block, "cutoff": shipped.cutoff} if shipped is not None else None
    variants = []
    for name, b in (("cut-off fitted on the base's validation", block), (f"{a.shipped}'s cut-off", ship_block)):
        if b is not None:
            variants.append((name, b))
            variants += [(f"{name}, or fewer than {h:g} h of the stay", {**b, "version": 2, "min_history_h": h})
                         for h in a.min_history_h]  # fmt: skip
    site_df = pd.read_parquet(a.site_data)
    site = _scored(ref, site_df, policy)
    out: dict[str, Any] = {"base": a.base, "alert_level": ref.alert_level, "site": a.site,
                           "site_stays": int(site["s"].sum()), "share": a.share, "results": {}}  # fmt: skip
    for name, b in variants:
        res = {"cutoff": b["cutoff"], "min_history_h": b.get("min_history_h")}
        for where, d in (("base validation", val), (a.site, site)):
            ind = indeterminate_rows(b, d["p"], d["mem"], d["x"])
            ev = evaluate_abstention(d["fired"], ind, d["y"], d["s"])
            ev["ppv_gain_bootstrap"] = ppv_gain_interval(d["fired"], ind, d["y"], d["s"], a.resamples, a.seed)
            res[where] = ev
        out["results"][name] = res
    out["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(jsonable(out), indent=1) + "\n")
    for name, res in out["results"].items():
        for where in ("base validation", a.site):
            ev = res[where]
            print(json.dumps(jsonable({"cutoff": name, "on": where, "rows_ind": ev["share_rows_indeterminate"],
                                       "alerts_ind": ev["share_alerts_indeterminate"],
                                       "ppv_all": ev["all"]["ppv_stay"], "ppv_conf": ev["confident"]["ppv_stay"],
                                       "gain": ev["ppv_gain_bootstrap"],
                                       "early_all": ev["all"]["share_septic_alerted_early"],
                                       "early_conf": ev["confident"]["share_septic_alerted_early"]})))  # fmt: skip


if __name__ == "__main__":
    main()
