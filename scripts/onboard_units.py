"""Set A's two ICU units as two sites (issue 16, item 5): train a base model on one unit's training split, onboard
it on a 20 % sample of the other unit (labelled, and label-free), and score the other unit's remaining 80 % with
base, labelled-onboarded and unlabelled-onboarded versions. Not part of ``make test`` (minutes on 2 cores).

    PYTHONPATH=src .venv/bin/python scripts/onboard_units.py --base-unit MICU --work /tmp/onboard-units \
        --out docs/evaluation/onboarding

Everything is registered in ``WORK/registry`` (never in models/). Prints one JSON line per model and writes
``OUT/<base>-to-<site>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/physionet2019/setA.parquet"))
    ap.add_argument("--base-unit", choices=["MICU", "SICU"], default="MICU")
    ap.add_argument("--work", type=Path, default=Path("runs/onboard-units"))
    ap.add_argument("--out", type=Path, default=Path("docs/evaluation/onboarding"))
    ap.add_argument("--sample-frac", type=float, default=0.2)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="labelled,labelled_utility,unlabelled,unlabelled_prevalence",
                    help="comma-separated; labelled = the default --level-by (early), labelled_utility / "
                         "labelled_early name it; unlabelled_prevalence[_xM]: "
                         "--unlabelled --prevalence at the site unit's "
                         "share of septic stays (all its stays: what its records say), times M if given")
    ap.add_argument("--tag", default="", help="suffix of the output JSON's name")
    ap.add_argument("--base-with-no-unit", action="store_true",
                    help="train the base on the base unit's stays and the stays with no unit flag (~15k stays, "
                         "near the shipped model's training size) instead of the base unit's alone; the base is "
                         "named base-<unit>-wide")
    a = ap.parse_args()

    import pandas as pd

    from vigil.config import load_settings
    from vigil.evaluation.report import jsonable
    from vigil.onboarding.run import OnboardOptions, _evaluate, onboard, site_sample_mask
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    site_unit = "SICU" if a.base_unit == "MICU" else "MICU"
    a.work.mkdir(parents=True, exist_ok=True)
    reg_dir = a.work / "registry"
    reg_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    df = pd.read_parquet(a.data)
    first = df.groupby("patient_id", sort=False)[["Unit1", "Unit2"]].first()
    unit = np.where(first["Unit1"] == 1, "MICU", np.where(first["Unit2"] == 1, "SICU", ""))
    ids = {u: set(first.index[unit == u]) for u in ("MICU", "SICU")}
    files = {}
    for u in ("MICU", "SICU"):
        files[u] = a.work / f"setA-{u.lower()}.parquet"
        if not files[u].exists():
            df[df["patient_id"].isin(ids[u])].reset_index(drop=True).to_parquet(files[u])
    if a.base_with_no_unit:  # the base unit and every stay without a unit flag: never a site-unit stay
        wide = ids[a.base_unit] | set(first.index[unit == ""])
        files["base"] = a.work / f"setA-{a.base_unit.lower()}-wide.parquet"
        if not files["base"].exists():
            df[df["patient_id"].isin(wide)].reset_index(drop=True).to_parquet(files["base"])
    else:
        files["base"] = files[a.base_unit]
    del df
    site = pd.read_parquet(files[site_unit])
    m = site_sample_mask(site["patient_id"].to_numpy(), a.sample_frac, a.seed)
    sample_path = a.work / f"{site_unit.lower()}-sample{round(100 * a.sample_frac)}.parquet"
    rest_path = a.work / f"{site_unit.lower()}-rest.parquet"
    site[m].reset_index(drop=True).to_parquet(sample_path)
    rest = site[~m].reset_index(drop=True)
    rest.to_parquet(rest_path)

    base_name = f"base-{a.base_unit.lower()}" + ("-wide" if a.base_with_no_unit else "")
    reg = Registry(reg_dir)
    timings: dict[str, float] = {"split_s": time.perf_counter() - t0}
    settings = load_settings(None)
    settings.models_dir = reg_dir
    if not reg.versions(base_name):
        from vigil.evaluation.run import run_evaluation
        from vigil.training import trainer
        from vigil.training.gbm import GbmHyper

        t = time.perf_counter()
        ds = trainer.prepare(files["base"], seed=a.seed, with_sequence=False)
        path = trainer.train_family(ds, "gbm", reg_dir, name=base_name, members=1, gbm=GbmHyper())
        trainer.calibrate_demand(path, files["base"])
        ref = reg.get(f"{base_name}:1")
        # the base's own alert level, chosen as the shipped model's was: validation split, policy sweep, budget
        run_evaluation(ref, files["base"], policy=settings.alerts, split="validation", out=a.work / "base-val",
                       card=True, policy_sweep=True, budget=a.budget)  # fmt: skip
        reg._write_serving({base_name: "1"})
        timings["base_train_s"] = time.perf_counter() - t
    base = reg.get(f"{base_name}:1")
    if base.card.get("prior_shift") is None:  # a base trained before vigil train wrote it
        from vigil.card import write_card
        from vigil.evaluation.selection import select_rows
        from vigil.offline import score_frame
        from vigil.onboarding.prior import fit_prior_shift

        sel = select_rows(base, files["base"], "validation", None)
        p, s = score_frame(Scorer(base, threads=a.threads), sel.df)
        y = sel.df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8)
        card = dict(base.card)
        card["prior_shift"] = jsonable(fit_prior_shift(p, y, s, f"validation split of {sel.source}"))
        write_card(base.path / "card.json", card)
        base = reg.get(f"{base_name}:1")
    site_prevalence = float(site.groupby("patient_id")["SepsisLabel"].max().mean())
    results: dict[str, object] = {"base": f"{base_name}:1", "site": site_unit, "sample": sample_path.name,
                                  "sample_stays": int(site[m]["patient_id"].nunique()),
                                  "rest_stays": int(rest["patient_id"].nunique()),
                                  "rest_septic_stays": int(rest.groupby("patient_id")["SepsisLabel"].max().sum()),
                                  "base_card": {"threshold": base.threshold, "alert_level": base.alert_level,
                                                "validation": base.card["metrics"]["validation"],
                                                "test": base.card["metrics"]["test"]}}  # fmt: skip
    results["site_stay_prevalence"] = site_prevalence
    specs = {"base": f"{base_name}:1"}
    for mode in a.modes.split(","):
        t = time.perf_counter()
        mult = float(mode.split("_x")[1]) if "_x" in mode else 1.0
        prevalence = site_prevalence * mult if mode.startswith("unlabelled_prevalence") else None
        opts = OnboardOptions(budget=a.budget, unlabelled=mode.startswith("unlabelled"), seed=a.seed,
                              threads=a.threads, prevalence=prevalence,
                              level_by={"labelled_early": "early", "labelled_utility": "utility"}.get(
                                  mode, OnboardOptions.level_by),  # "labelled": the default (early since s7)
                              name=f"{base_name}-at-{site_unit.lower()}", out=a.work / f"report-{mode}")  # fmt: skip
        s = onboard(settings, sample_path, f"{base_name}:1", opts)
        timings[f"onboard_{mode}_s"] = time.perf_counter() - t
        specs[mode] = s["model"]
        results[f"onboard_{mode}"] = {k: s[k] for k in ("model", "adaptation", "threshold", "alert_level", "gate",
                                                        "check", "adapted")}  # fmt: skip
    rest_eval = {}
    for label, spec in specs.items():
        ref = reg.get(spec)
        r = _evaluate(ref, Scorer(ref, threads=a.threads), rest, rest_path.name, settings.alerts, True)
        rest_eval[label] = r
        print(json.dumps(jsonable({"on": f"{site_unit} remaining {100 - round(100 * a.sample_frac)} %",
                                   "label": label, **{k: r[k] for k in r if k != "subgroups_unit"}})))  # fmt: skip
    results["rest"] = rest_eval
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["conditions"] = f"{os.cpu_count()} CPU cores shared with other jobs; LightGBM/ONNX threads {a.threads}"
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"{a.base_unit.lower()}-to-{site_unit.lower()}{a.tag}.json"
    out.write_text(json.dumps(jsonable(results), indent=2) + "\n")
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
