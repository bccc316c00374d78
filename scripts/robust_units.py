"""Robustness of the base model across sites without site labels (issue 16, item 3), measured on set A's two ICU
units as two sites. Not part of ``make test`` (minutes per training on 2 cores).

For each variant (training-time measurement-habit augmentation, features that do not encode one hospital's
charting habits, ...) a LightGBM base is trained exactly as ``scripts/onboard_units.py`` trains its base (one
member, seed 7, ``GbmHyper()`` with its hospital/unit dropout, the trainer's 70/15/15 patient split of the base
unit, early stopping on that unit's validation AUROC), and then, with **no label of the other unit**:

* the threshold (maximum utility) and the alert level (policy sweep at the configured persistence / refractory
  window, budget 0.2 alerts per patient-day) are chosen on the base unit's validation split, as ``vigil train``
  + ``vigil evaluate --policy-sweep`` do for the shipped model;
* the model is scored on the other unit's stays that are not in ``onboard_units.py``'s 20 % onboarding sample
  (the same seeded sample): utility, AUROC, alerts per patient-day and septic stays alerted before onset at that
  level (the worker's own policy engine), i.e. "the shipped model with default settings at a new site";
* and on the base unit's validation split under ``vigil evaluate --shifts``' measurement-habit shifts.

Model selection may only read the base unit's validation split (and its shifts); the other unit's numbers are
reported, not used to choose. Scores are LightGBM's own (the exported ONNX graph reproduces them within 1e-4).

    PYTHONPATH=src .venv/bin/python scripts/robust_units.py --base-unit MICU --work /tmp/robust \
        --out docs/evaluation/robustness

Featurized matrices are cached under ``WORK/cache``; one JSON per variant is written to
``OUT/<base>-to-<site>/<variant>.json`` as soon as it is done, and a summary line is printed per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

HABIT_SUFFIXES = ("_hours_since", "_count8h")


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    augment: dict[str, Any] | None = None  # ShiftAugment fields
    mask: str | None = None  # "habits" | "lab_hours" : columns held constant in training (never split on)
    max_bin_habits: int | None = None  # coarse bins for the habit columns (LightGBM max_bin_by_feature)
    hyper: dict[str, Any] = field(default_factory=dict)  # GbmHyper overrides


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "GbmHyper() as onboard_units.py trains its base"),
    Variant("aug_labs", "augmentation on 50 % of stays: labs thinned U(0.3,1) per stay, lab variables dropped 10 %",
            augment={"share": 0.5, "lab_keep_min": 0.3, "var_drop": 0.1, "vitals_every": (1,)}),
    Variant("aug_all", "aug_labs + vitals charted every 1/2/4 h (per stay)",
            augment={"share": 0.5, "lab_keep_min": 0.3, "var_drop": 0.1, "vitals_every": (1, 2, 4)}),
    Variant("no_habits", "the 34 *_hours_since and 9 *_count8h features held constant (never split on)",
            mask="habits"),
    Variant("no_lab_hours", "the 26 lab *_hours_since features and labs_count8h held constant", mask="lab_hours"),
    Variant("coarse_habits", "habit features split on at most 3 bins (LightGBM max_bin_by_feature)",
            max_bin_habits=3),
    Variant("simple", "a simpler model: 15 leaves, >= 1000 rows per leaf",
            hyper={"num_leaves": 15, "min_child_samples": 1000}),
    Variant("simpler", "simpler still: 7 leaves, >= 2000 rows per leaf",
            hyper={"num_leaves": 7, "min_child_samples": 2000}),
    Variant("simple_aug", "simple + aug_all",
            augment={"share": 0.5, "lab_keep_min": 0.3, "var_drop": 0.1, "vitals_every": (1, 2, 4)},
            hyper={"num_leaves": 15, "min_child_samples": 1000}),
    Variant("aug_all_coarse", "aug_all + coarse_habits",
            augment={"share": 0.5, "lab_keep_min": 0.3, "var_drop": 0.1, "vitals_every": (1, 2, 4)},
            max_bin_habits=3),
)}  # fmt: skip


def habit_columns(which: str) -> list[int]:
    from vigil.features import FEATURE_NAMES
    from vigil.variables import LABS

    if which == "habits":
        return [i for i, n in enumerate(FEATURE_NAMES) if n.endswith(HABIT_SUFFIXES) or n == "labs_count8h"]
    if which == "lab_hours":
        return [FEATURE_NAMES.index(f"{v}_hours_since") for v in LABS] + [FEATURE_NAMES.index("labs_count8h")]
    raise ValueError(which)


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def features(self, key: str, make: Any) -> dict[str, np.ndarray]:
        path = self.root / f"{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        arrs = make()
        np.savez(path, **arrs)
        return arrs


def frame_arrays(df: Any) -> dict[str, np.ndarray]:
    """Features, stay starts, labels, screens and per-stay static context of a PhysioNet-layout frame."""
    from vigil.evaluation.report import NEWS2_PART_COLUMNS, _static
    from vigil.features import FEATURE_NAMES, featurize_frame

    x, ss = featurize_frame(df)
    ss = ss.copy()
    if ss.size:
        ss[0] = True
    st = _static(df, ss)
    parts = [FEATURE_NAMES.index(c) for c in NEWS2_PART_COLUMNS]
    return {
        "x": x, "stay_start": ss, "labels": df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8),
        "news2_total": np.rint(x[:, FEATURE_NAMES.index("news2_total")]).astype(np.int16),
        "news2_max_part": np.rint(x[:, parts].max(axis=1)).astype(np.int16),
        **{f"static_{k}": v for k, v in st.items()},
    }  # fmt: skip


def alerting(arr: dict[str, np.ndarray], probs: np.ndarray, level: float, policy: Any) -> dict[str, Any]:
    """The model-risk alerts the worker's policy raises at ``level`` (as ``vigil evaluate`` replays them)."""
    from vigil.evaluation.alerting import alert_summary, simulate_policy, stay_alerts, stay_table
    from vigil.evaluation.report import row_units

    stays = stay_table(arr["labels"], arr["stay_start"])
    static = {k[len("static_") :]: v for k, v in arr.items() if k.startswith("static_")}
    fired = simulate_policy(policy, risk=probs, threshold=level, news2_total=arr["news2_total"],
                            stay_start=arr["stay_start"], news2_max_part=arr["news2_max_part"],
                            unit=row_units(static, stays.n_rows))["model_risk"]  # fmt: skip
    s = alert_summary(stays, stay_alerts(fired, stays))
    return {"alerts_per_patient_day": s["alerts_per_patient_day"], "share_septic_alerted_early":
            s["share_septic_alerted_early"], "septic_stays_evaluable": s["septic_stays_evaluable"],
            "median_lead_h": s["lead_time_h"]["median"], "ppv_stay": s["ppv_stay"]}  # fmt: skip


def scores(arr: dict[str, np.ndarray], probs: np.ndarray, threshold: float) -> dict[str, Any]:
    from vigil.evaluation.metrics import auroc
    from vigil.evaluation.utility import normalized_utility

    return {"utility": round(normalized_utility(arr["labels"], probs >= threshold, arr["stay_start"]), 4),
            "auroc": round(auroc(arr["labels"], probs), 4), "rows": int(probs.size),
            "stays": int(arr["stay_start"].sum())}  # fmt: skip


def fit(v: Variant, train: dict[str, np.ndarray], val: dict[str, np.ndarray], seed: int, threads: int,
        patience: int) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """One LightGBM booster as gbm.fit_members fits a member (admin dropout, class weight, early stopping on
    validation AUROC, cut to the best round), with the variant's masking / binning."""
    import lightgbm as lgb

    from vigil.features import FEATURE_NAMES
    from vigil.training import gbm
    from vigil.training.gbm import GbmHyper

    h = replace(GbmHyper(), patience=patience, **v.hyper)
    x_tr, y_tr = train["x"], train["labels"].astype(np.float32)
    x_va, y_va = val["x"], val["labels"].astype(np.float32)
    x_tr = gbm.admin_dropout(x_tr, train["stay_start"], h.admin_dropout, seed)
    if v.mask:
        cols = habit_columns(v.mask)
        x_tr, x_va = x_tr.copy(), x_va.copy()
        x_tr[:, cols] = 0.0
        x_va[:, cols] = 0.0
    params = gbm.lgb_params(h, seed, round(float(y_tr.size - y_tr.sum()) / max(float(y_tr.sum()), 1.0), 4), threads)
    if v.max_bin_habits:
        habit = set(habit_columns("habits"))
        params["max_bin_by_feature"] = [v.max_bin_habits if i in habit else 255 for i in range(len(FEATURE_NAMES))]
    t = time.perf_counter()
    ds_tr = lgb.Dataset(x_tr, y_tr, free_raw_data=False)
    ds_va = lgb.Dataset(x_va, y_va, reference=ds_tr, free_raw_data=False)
    b = lgb.train(params, ds_tr, h.max_rounds, valid_sets=[ds_va],
                  callbacks=[lgb.early_stopping(h.patience, verbose=False)])  # fmt: skip
    best = int(b.best_iteration or b.current_iteration())
    cut = lgb.Booster(model_str=b.model_to_string(num_iteration=best))
    gain = cut.feature_importance("gain")
    habit_share = float(gain[habit_columns("habits")].sum() / max(gain.sum(), 1e-12))
    return cut, {"rounds": best, "fit_s": round(time.perf_counter() - t, 1),
                 "best_val_auc": round(float(b.best_score["valid_0"]["auc"]), 4),
                 "habit_feature_gain_share": round(habit_share, 4)}  # fmt: skip


def describe_units(work: Path) -> dict[str, Any]:
    """Charting habits and case mix of the two units (all their stays): what differs between the 'sites'."""
    import pandas as pd

    from vigil.variables import LABS, VITALS

    out: dict[str, Any] = {}
    for u in ("MICU", "SICU"):
        df = pd.read_parquet(work / f"setA-{u.lower()}.parquet")
        labs, vit = df[list(LABS)].notna(), df[list(VITALS)].notna()
        stays = df.groupby("patient_id", sort=False)
        out[u] = {
            "stays": int(df["patient_id"].nunique()), "rows": len(df),
            "septic_stays_pct": round(100 * float(stays["SepsisLabel"].max().mean()), 1),
            "lab_results_per_row": round(float(labs.sum(axis=1).mean()), 3),
            "rows_with_a_lab_pct": round(100 * float(labs.any(axis=1).mean()), 1),
            "vital_results_per_row": round(float(vit.sum(axis=1).mean()), 2),
            "lactate_rows_pct": round(100 * float(df["Lactate"].notna().mean()), 2),
            "median_stay_h": float(stays.size().median()),
            "mean_age": round(float(stays["Age"].first().mean()), 1),
        }  # fmt: skip
    return out


def set_a_presets(data: Path, names: list[str], threads: int) -> dict[str, Any]:
    """One member per GbmHyper preset on all of ``data`` (the trainer's split, seed 7): validation AUROC and utility at
    the best validation threshold. Not a transfer measurement: whether a preset costs ranking at full scale."""
    from vigil.evaluation.metrics import auroc
    from vigil.evaluation.utility import best_threshold
    from vigil.training import gbm, trainer

    t0 = time.perf_counter()
    ds = trainer.prepare(data, seed=7, with_sequence=False)
    out: dict[str, Any] = {"featurize_s": round(time.perf_counter() - t0, 1)}
    for name in names:
        t = time.perf_counter()
        x, y, ss = ds.x, ds.y, ds.stay_start
        b, info = gbm.fit_members(x["train"], y["train"], x["validation"], y["validation"], [7], gbm.PRESETS[name],
                                  threads=threads, train_stay_start=ss["train"])  # fmt: skip
        p = gbm.predict(b, ds.x["validation"])
        thr, u = best_threshold(p, ds.y["validation"], ds.stay_start["validation"])
        out[name] = {"rounds": info["rounds"][0], "best_val_auc": info["best_val_auc"][0],
                     "val_auroc": round(auroc(ds.y["validation"], p), 4),
                     "val_utility_at_best_threshold": round(u, 4), "threshold": thr,
                     "fit_s": round(time.perf_counter() - t, 1)}  # fmt: skip
        print(json.dumps({name: out[name]}), flush=True)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def tables(out: Path) -> str:
    """Markdown tables of every variant JSON under ``out/<base>-to-<site>/`` (what robustness.md quotes)."""
    text = []
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        res = {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}
        order = [n for n in VARIANTS if n in res]
        if not order:
            continue
        base = res.get("baseline")
        text.append(f"### {d.name}\n")
        text.append(
            "| variant | rounds | habit gain | val utility | val AUROC | threshold | level | site utility | "
            "site AUROC | site alerts / patient-day | site septic alerted early | site PPV (stays) | "
            "test utility (base unit) | site utility at the site's own best threshold (oracle) |"
        )
        text.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in order:
            r = res[n]
            v, s, t = r["validation"], r["site_rest"], r["test"]
            text.append(
                f"| {n} | {r['training']['rounds']} | {r['training']['habit_feature_gain_share']:.2f} | "
                f"{v['utility']:.3f} | {v['auroc']:.3f} | {r['threshold']:.2f} | {r['alert_level']:.2f} | "
                f"{s['utility']:.3f} | {s['auroc']:.3f} | {s['alerts_per_patient_day']:.3f} | "
                f"{_pct(s['share_septic_alerted_early'])} | {_pct(s['ppv_stay'])} | {t['utility']:.3f} | "
                + (f"{s['oracle_utility']:.3f} at {s['oracle_threshold']:.2f} |" if "oracle_utility" in s else "- |")
            )
        shifts = list(res[order[0]]["shifts_validation"])
        if shifts:
            text.append(
                "\nBase unit's validation split under `vigil evaluate --shifts`' shifts (utility; drop against"
                " the variant's own unshifted validation utility in brackets):\n"
            )
            text.append("| variant | " + " | ".join(shifts) + " | mean drop |")
            text.append("|---|" + "---|" * (len(shifts) + 1))
            for n in order:
                r = res[n]
                u0 = r["validation"]["utility"]
                drops = [r["shifts_validation"][k]["utility"] - u0 for k in shifts]
                cells = [
                    f"{r['shifts_validation'][k]['utility']:.3f} ({d:+.3f})" for k, d in zip(shifts, drops, strict=True)
                ]
                text.append(f"| {n} | " + " | ".join(cells) + f" | {np.mean(drops):+.3f} |")
        if base:
            text.append("")
        text.append("")
    return "\n".join(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/physionet2019/setA.parquet"))
    ap.add_argument("--base-unit", choices=["MICU", "SICU"], default="MICU")
    ap.add_argument("--work", type=Path, default=Path("runs/robust-units"))
    ap.add_argument("--out", type=Path, default=Path("docs/evaluation/robustness"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sample-frac", type=float, default=0.2)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="LightGBM's seed (and the dropout's) if not --seed: same splits, another model",
    )
    ap.add_argument("--patience", type=int, default=100)
    ap.add_argument("--no-shifts", action="store_true")
    ap.add_argument("--describe-units", action="store_true", help="write OUT/units.json (habits, case mix) and exit")
    ap.add_argument(
        "--set-a-presets",
        action="store_true",
        help="one member per GbmHyper preset on all of --data (validation only): OUT/set-a-presets.json",
    )
    ap.add_argument("--tables", action="store_true", help="print the markdown tables of OUT's results and exit")
    a = ap.parse_args()
    if a.tables:
        print(tables(a.out))
        return
    if a.set_a_presets:
        d = set_a_presets(a.data, ["transfer", "default"], a.threads)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "set-a-presets.json").write_text(json.dumps(d, indent=2) + "\n")
        return
    if a.describe_units:
        d = describe_units(a.work)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "units.json").write_text(json.dumps(d, indent=2) + "\n")
        print(json.dumps(d))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

    import pandas as pd

    from vigil.config import load_settings
    from vigil.evaluation import sweep
    from vigil.evaluation.report import jsonable
    from vigil.evaluation.shifts import SHIFTS, apply_shift
    from vigil.evaluation.utility import best_threshold
    from vigil.onboarding.run import site_sample_mask
    from vigil.training.augment import ShiftAugment, augment_frame
    from vigil.training.data import split_by_patient

    site_unit = "SICU" if a.base_unit == "MICU" else "MICU"
    cache = Cache(a.work / "cache")
    files = {u: a.work / f"setA-{u.lower()}.parquet" for u in ("MICU", "SICU")}
    if not all(f.exists() for f in files.values()):
        df = pd.read_parquet(a.data)
        first = df.groupby("patient_id", sort=False)[["Unit1", "Unit2"]].first()
        unit = np.where(first["Unit1"] == 1, "MICU", np.where(first["Unit2"] == 1, "SICU", ""))
        for u, f in files.items():
            df[df["patient_id"].isin(set(first.index[unit == u]))].reset_index(drop=True).to_parquet(f)
        del df
    src = pd.read_parquet(files[a.base_unit])
    masks = split_by_patient(src["patient_id"].to_numpy(), a.seed)  # the trainer's split of the base unit
    parts = {k: src[m].reset_index(drop=True) for k, m in masks.items()}
    site = pd.read_parquet(files[site_unit])
    rest = site[~site_sample_mask(site["patient_id"].to_numpy(), a.sample_frac, a.seed)].reset_index(drop=True)
    b, s = a.base_unit.lower(), site_unit.lower()
    tag = "" if a.seed == 7 else f"-split{a.seed}"  # another split: its own cache and results folder
    val = cache.features(f"{b}-validation{tag}", lambda: frame_arrays(parts["validation"]))
    test = cache.features(f"{b}-test{tag}", lambda: frame_arrays(parts["test"]))
    target = cache.features(f"{s}-rest{tag}", lambda: frame_arrays(rest))
    shifted = {} if a.no_shifts else {
        sh.name: cache.features(f"{b}-validation{tag}-shift-{sh.name}",
                                lambda sh=sh: frame_arrays(apply_shift(sh, parts["validation"])))
        for sh in SHIFTS if sh.name != "none"
    }  # fmt: skip
    policy = load_settings(None).alerts
    mr = policy.model_risk
    grid = {"raise_at": sweep.GRID["raise_at"], "persistence": (mr.persistence,), "refractory_h": (mr.refractory_h,)}
    out_dir = a.out / (f"{b}-to-{s}{tag}" + ("" if a.model_seed is None else f"-seed{a.model_seed}"))
    out_dir.mkdir(parents=True, exist_ok=True)

    for name in a.variants.split(","):
        v = VARIANTS[name]
        t0 = time.perf_counter()
        if v.augment:
            aug = ShiftAugment(**v.augment)
            key = f"{b}-train{tag}-aug-" + "-".join(f"{k}{val_}" for k, val_ in sorted(v.augment.items())).replace(
                " ", ""
            )
            train = cache.features(key, lambda aug=aug: frame_arrays(augment_frame(parts["train"], aug, a.seed)))
        else:
            train = cache.features(f"{b}-train{tag}", lambda: frame_arrays(parts["train"]))
        mseed = a.seed if a.model_seed is None else a.model_seed
        booster, info = fit(v, train, val, mseed, a.threads, a.patience)
        p_val = booster.predict(val["x"])
        thr, _ = best_threshold(p_val, val["labels"], val["stay_start"])
        pts = sweep.sweep_policies(p_val, val["labels"], val["stay_start"], thr, grid, escalate_by=mr.escalate_by)
        chosen = sweep.choose(pts, a.budget)
        level = thr if chosen is None or chosen.raise_at is None else float(chosen.raise_at)
        res: dict[str, Any] = {"variant": name, "what": v.what, "base_unit": a.base_unit, "site": site_unit,
                               "split_seed": a.seed, "model_seed": mseed,
                               "threshold": round(float(thr), 4), "alert_level": level, "training": info}  # fmt: skip
        for label, arr in (("validation", val), ("test", test), ("site_rest", target)):
            p = p_val if label == "validation" else booster.predict(arr["x"])
            res[label] = {**scores(arr, p, thr), **alerting(arr, p, level, policy)}
        # for reading only, never for choosing: the site's utility at the threshold its own labels would pick
        p_site = booster.predict(target["x"])
        o_thr, o_util = best_threshold(p_site, target["labels"], target["stay_start"])
        res["site_rest"]["oracle_threshold"], res["site_rest"]["oracle_utility"] = o_thr, round(o_util, 4)
        (a.work / "models").mkdir(exist_ok=True)
        booster.save_model(str(a.work / "models" / f"{out_dir.name}-{name}.txt"))
        res["shifts_validation"] = {k: scores(arr, booster.predict(arr["x"]), thr) for k, arr in shifted.items()}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["conditions"] = (f"{os.cpu_count()} CPU cores shared with other jobs; LightGBM {a.threads} threads; "
                             f"patience {a.patience}")  # fmt: skip
        (out_dir / f"{name}.json").write_text(json.dumps(jsonable(res), indent=2) + "\n")
        r, vv = res["site_rest"], res["validation"]
        print(json.dumps({"variant": name, "val_utility": vv["utility"], "val_auroc": vv["auroc"],
                          "site_utility": r["utility"], "site_auroc": r["auroc"],
                          "site_burden": r["alerts_per_patient_day"], "site_early": r["share_septic_alerted_early"],
                          "level": level, "rounds": info["rounds"], "wall_s": res["wall_s"]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
