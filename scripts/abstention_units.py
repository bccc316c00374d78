"""Abstention measured offline (issue 16, item 4) on the unit experiment of ``scripts/onboard_units.py``: the
MICU-trained base's training rows fit the coverage / out-of-range cut-offs (:mod:`vigil.evaluation.abstention`);
its alerts on the MICU test split and on the SICU stays not in the onboarding sample are split into confident and
indeterminate. Run after ``onboard_units.py --base-unit MICU`` (same --work)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/onboard-units"))
    ap.add_argument("--out", type=Path, default=Path("docs/evaluation/onboarding/abstention.json"))
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    import pandas as pd

    from vigil.config import load_settings
    from vigil.evaluation.abstention import evaluate_abstention, fit_abstention
    from vigil.evaluation.alerting import simulate_policy
    from vigil.evaluation.report import jsonable
    from vigil.offline import score_frame
    from vigil.onboarding.levels import model_risk_only
    from vigil.onboarding.run import _features, _labels
    from vigil.registry import Registry
    from vigil.scoring import Scorer
    from vigil.training.data import split_by_patient

    reg = Registry(a.work / "registry")
    ref = reg.get("base-micu:1")
    scorer = Scorer(ref, threads=2)
    micu = pd.read_parquet(a.work / "setA-micu.parquet")
    masks = split_by_patient(micu["patient_id"].to_numpy(), a.seed)
    x_ref, _ = _features(micu[masks["train"]].reset_index(drop=True))
    sets = {"MICU test split (same site)": micu[masks["test"]].reset_index(drop=True),
            "SICU, not in the onboarding sample (other site)": pd.read_parquet(a.work / "sicu-rest.parquet")}
    policy = model_risk_only(load_settings(None).alerts)
    out: dict[str, object] = {"model": "base-micu:1", "alert_level": ref.alert_level, "results": {}}
    for name, df in sets.items():
        x, s = _features(df)
        probs, _ = score_frame(scorer, df)
        y = _labels(df)
        fired = simulate_policy(policy, risk=probs, threshold=ref.alert_level, news2_total=np.zeros(len(probs)),
                                stay_start=s)["model_risk"]  # fmt: skip
        res = {}
        for q in (0.02, 0.05, 0.10):
            ab = fit_abstention(x_ref, q)
            res[f"q={q:g}"] = {"min_coverage": ab.min_coverage, "max_out_of_range": ab.max_out_of_range,
                               **evaluate_abstention(fired, ab.indeterminate(x), y, s)}  # fmt: skip
        out["results"][name] = res  # type: ignore[index]
        print(json.dumps(jsonable({name: {k: (v["share_alerts_indeterminate"], v["all"]["ppv_stay"],
                                              v["confident"]["ppv_stay"], v["all"]["share_septic_alerted_early"],
                                              v["confident"]["share_septic_alerted_early"])
                                          for k, v in res.items()}})))  # fmt: skip
    a.out.write_text(json.dumps(jsonable(out), indent=2) + "\n")


if __name__ == "__main__":
    main()
