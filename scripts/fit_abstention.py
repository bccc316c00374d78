"""Fit a model version's abstention block (issue 16, item 4; :mod:`vigil.abstain`) on its training-time
validation split and evaluate it on the test split: the ``--measure``'s cut-off that flags ``--share`` of the
validation rows scored at or above the card's alert level, and, with ``--min-history-h``, rows with fewer hours of
the stay behind them (a version 2 block). With ``--write`` the block (and the evaluation under it) goes into the
version's card (validated, atomic). ``sepsis-gbm:1``'s block:

    PYTHONPATH=src .venv/bin/python scripts/fit_abstention.py --model sepsis-gbm:1 --measure low_coverage \
        --share 0.2 --min-history-h 9 --write

The member measures need a version of several members (``training.members`` > 1). Prints one JSON line per share.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sepsis-gbm:1")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/physionet2019/setA.parquet"))
    ap.add_argument("--share", type=float, nargs="+", default=[0.3])
    ap.add_argument("--measure", default="decision_margin_z",
                    choices=["decision_margin_z", "member_logit_sd", "low_coverage"])
    ap.add_argument("--min-history-h", type=float, default=None,
                    help="rows with fewer hours of the stay behind them are indeterminate too (a version 2 block)")
    ap.add_argument("--write", action="store_true", help="write the block of the (single) --share into the card")
    a = ap.parse_args()
    if a.write and len(a.share) != 1:
        ap.error("--write takes exactly one --share")

    from vigil.card import write_card
    from vigil.config import load_settings
    from vigil.evaluation.abstention import (
        evaluate_abstention,
        fit_member_spread,
        indeterminate_rows,
        members_frame,
        ppv_gain_interval,
    )
    from vigil.evaluation.alerting import simulate_policy, stay_table
    from vigil.evaluation.report import jsonable, row_units, screen_scores
    from vigil.evaluation.selection import select_rows
    from vigil.registry import Registry

    t0 = time.perf_counter()
    ref = Registry(a.models_dir).get(a.model)
    policy = load_settings(None).alerts
    level = ref.alert_level
    sets = {}
    for split in ("validation", "test"):
        sel = select_rows(ref, a.data, split, None)
        p, mem, s, x = members_frame(ref, sel.df)
        s = s.copy()
        s[0] = True
        y = sel.df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
        screens = screen_scores(sel.df)
        first = np.flatnonzero(s)
        static = {c: sel.df[c].to_numpy()[first] for c in ("Unit1", "Unit2")}
        fired = simulate_policy(policy, risk=p, threshold=level, news2_total=screens["news2_total"], stay_start=s,
                                news2_max_part=screens["news2_max_part"], model=ref.name,
                                unit=row_units(static, stay_table(y, s).n_rows))["model_risk"]  # fmt: skip
        sets[split] = {"p": p, "mem": mem, "s": s, "y": y, "fired": fired, "source": sel.source, "x": x}
    for share in a.share:
        v = sets["validation"]
        fitted_on = f"validation split of {v['source']} (the trainer's patient-level split)"
        block = fit_member_spread(v["mem"], v["p"], level, share, fitted_on, a.measure, v["x"], a.min_history_h)
        res = {}
        for split, d in sets.items():
            ind = indeterminate_rows(block, d["p"], d["mem"], d["x"])
            res[split] = evaluate_abstention(d["fired"], ind, d["y"], d["s"])
            res[split]["ppv_gain_bootstrap"] = ppv_gain_interval(d["fired"], ind, d["y"], d["s"], 1000, 7)
        line = {"model": a.model, "measure": a.measure, "share": share, "cutoff": block["cutoff"],
                "min_history_h": a.min_history_h,
                **{f"{k}_{m}": (res[k][m] if m.startswith("share") else res[k][m]) for k in res
                   for m in ("share_rows_indeterminate", "share_alerts_indeterminate", "ppv_relative_gain")},
                **{f"{k}_{w}_{m}": res[k][w][m] for k in res for w in ("all", "confident")
                   for m in ("ppv_stay", "share_septic_alerted_early")}}  # fmt: skip
        print(json.dumps(jsonable(line)), flush=True)
        if a.write:
            block["evaluation"] = {"test": res["test"], "validation": res["validation"],
                                   "policy": "configured alert policy (model_risk alerts) at the card's alert level",
                                   "script": "scripts/fit_abstention.py"}  # fmt: skip
            card = dict(ref.card)
            card["abstention"] = jsonable(block)
            write_card(ref.path / "card.json", card)
            print(json.dumps({"written": str(ref.path / "card.json"), "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
