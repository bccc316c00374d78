"""Indeterminate measures compared on set A's units as two sites (issue 16, item 4): a 3-member MICU base
(``--base``; trained here when the registry lacks it: ``trainer.train_family(..., members=3,
gbm=GbmHyper(patience=50))`` on the MICU training split of ``scripts/onboard_units.py``'s ``setA-micu.parquet``,
1,388 s on 2 shared cores) scores the MICU validation split (where each measure's
cut-off is fitted and the measure is chosen), the MICU test split (same site) and the SICU stays outside the
onboarding sample (``sicu-rest.parquet``, the other site). Alerts are the policy's model-risk alerts at the
base's alert level; each measure splits them into confident and indeterminate
(:func:`vigil.evaluation.abstention.evaluate_abstention`: stay-level PPV and sensitivity).

    PYTHONPATH=src .venv/bin/python scripts/abstention_measures.py --registry /tmp/abstain-units/registry \
        --units /tmp/onboard-units --out docs/evaluation/onboarding/abstention-measures.json

Not part of ``make test`` (a minute or two on 2 cores once the base exists).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _members(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    from vigil.abstain import with_member_outputs

    blob, names = with_member_outputs(path)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    outs = sess.run(["probability", *names], {"features": np.ascontiguousarray(x, np.float32)})
    return np.asarray(outs[0]).reshape(-1), np.concatenate([np.asarray(o).reshape(-1, 1) for o in outs[1:]], 1)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", type=Path, default=Path("/tmp/abstain-units/registry"))  # noqa: S108
    ap.add_argument("--base", default="base-micu3m:1")
    ap.add_argument("--units", type=Path, default=Path("/tmp/onboard-units"))  # noqa: S108
    ap.add_argument("--out", type=Path, default=Path("docs/evaluation/onboarding/abstention-measures.json"))
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    import pandas as pd

    from vigil.abstain import member_logit_sd
    from vigil.config import load_settings
    from vigil.evaluation.abstention import evaluate_abstention, fit_abstention
    from vigil.evaluation.alerting import simulate_policy
    from vigil.evaluation.report import jsonable
    from vigil.onboarding.levels import model_risk_only
    from vigil.onboarding.run import _features, _labels
    from vigil.registry import Registry
    from vigil.training.data import split_by_patient

    t0 = time.perf_counter()
    name, _, version = a.base.partition(":")
    if not Registry(a.registry).versions(name):
        from vigil.training import trainer
        from vigil.training.gbm import GbmHyper

        ds = trainer.prepare(a.units / "setA-micu.parquet", seed=a.seed, with_sequence=False)
        a.registry.mkdir(parents=True, exist_ok=True)
        trainer.train_family(ds, "gbm", a.registry, name=name, version=version or "1", members=3,
                             gbm=GbmHyper(patience=50))  # fmt: skip
    ref = Registry(a.registry).get(a.base)
    if ref.card.get("alert_policy") is None:  # the base's own alert level, chosen as onboard_units.py chose its base's
        from vigil.evaluation.run import run_evaluation

        run_evaluation(ref, a.units / "setA-micu.parquet", policy=load_settings(None).alerts, split="validation",
                       out=a.registry.parent / "base-val", card=True, policy_sweep=True, budget=0.2)  # fmt: skip
        ref = Registry(a.registry).get(a.base)
    micu = pd.read_parquet(a.units / "setA-micu.parquet")
    masks = split_by_patient(micu["patient_id"].to_numpy(), a.seed)
    frames = {"micu_validation": micu[masks["validation"]].reset_index(drop=True),
              "micu_test": micu[masks["test"]].reset_index(drop=True),
              "sicu_rest": pd.read_parquet(a.units / "sicu-rest.parquet")}  # fmt: skip
    x_train, _ = _features(micu[masks["train"]].reset_index(drop=True))
    policy = model_risk_only(load_settings(None).alerts)
    level = ref.alert_level
    data: dict[str, dict[str, Any]] = {}
    for name, df in frames.items():
        x, s = _features(df)
        p, mem = _members(ref.onnx_path, x)
        fired = simulate_policy(policy, risk=p, threshold=level, news2_total=np.zeros(len(p)), stay_start=s)
        data[name] = {"x": x, "s": s, "p": p, "mem": mem, "y": _labels(df), "fired": fired["model_risk"]}

    # --- measures (higher = more unusual), all fitted on the base's own rows (train or validation)
    rng = np.random.default_rng(a.seed)
    sub = x_train[rng.choice(len(x_train), min(len(x_train), 60_000), replace=False)].astype(np.float64)
    mu, sd = sub.mean(0), sub.std(0) + 1e-6
    z = (sub - mu) / sd
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    k = 10
    comps, var = vt[:k], (sv[:k] ** 2) / len(z)

    def mahal(x: np.ndarray) -> np.ndarray:
        pcs = ((x - mu) / sd) @ comps.T
        return np.sqrt((pcs**2 / var).sum(1))

    cov_ab = fit_abstention(x_train, 0.05)

    def measures(d: dict[str, Any]) -> dict[str, np.ndarray]:
        mem = d["mem"]
        cov, oor = cov_ab.measures(d["x"])
        sd = member_logit_sd(mem)
        margin = _logit(d["p"]) - _logit(np.array(level))  # >= 0 on alerting rows
        return {
            "member_logit_sd": sd,
            "decision_margin_z": -margin / (sd + 1e-3),  # members' spread relative to the distance to the level
            "score_margin": -margin,  # a band above the level (what a conformal set of both classes gives)
            "members_straddle": ((mem.min(1) < level) & (mem.max(1) >= level)).astype(np.float64)
            + (mem < level).mean(1),  # any member on the other side of the level; more of them, more unusual
            "member_prob_sd": mem.std(1),
            "member_relative_sd": mem.std(1) / np.maximum(mem.mean(1), 1e-6),
            "mahalanobis_pca10": mahal(d["x"].astype(np.float64)),
            "low_coverage": -cov,
            "out_of_range_share": oor,
        }

    meas = {name: measures(d) for name, d in data.items()}
    val = data["micu_validation"]
    results: dict[str, Any] = {}
    shares = (0.05, 0.10, 0.20, 0.30)
    for m in meas["micu_validation"]:
        v = meas["micu_validation"][m]
        alerting = val["p"] >= level  # cut-offs at a share of the validation rows scored at or above the level
        for q in shares:
            cut = float(np.quantile(v[alerting], 1 - q))
            key = f"{m} q={q:g}"
            results[key] = {"cutoff": cut, **{name: evaluate_abstention(d["fired"], meas[name][m] > cut, d["y"],
                                                                        d["s"])
                                              for name, d in data.items()}}  # fmt: skip
    # conformal prediction sets (Mondrian, per class, fitted on validation): indeterminate when both classes are in
    for alpha in (0.05, 0.10, 0.20):
        pv, yv = val["p"], val["y"]
        q0 = float(np.quantile(pv[yv == 0], 1 - alpha))  # class 0 in the set when p <= q0
        q1 = float(np.quantile(1 - pv[yv == 1], 1 - alpha))  # class 1 in the set when p >= 1 - q1
        key = f"conformal alpha={alpha:g}"
        results[key] = {"cutoff": [1 - q1, q0], **{name: evaluate_abstention(
            d["fired"], (d["p"] >= 1 - q1) & (d["p"] <= q0), d["y"], d["s"]) for name, d in data.items()}}  # fmt: skip
    for key, r in results.items():
        row = []
        for name in data:
            e = r[name]
            g = e["ppv_relative_gain"]
            sens = f"{e['all']['share_septic_alerted_early']:.1%}->{e['confident']['share_septic_alerted_early']:.1%}"
            row.append(f"{name}: alerts_ind {e['share_alerts_indeterminate'] or 0:.1%} gain "
                       f"{(g if g is not None else float('nan')):+.0%} sens {sens}")  # fmt: skip
        print(f"{key:28s} | " + " | ".join(row), flush=True)
    out = {"base": a.base, "alert_level": level, "members": int(val["mem"].shape[1]),
           "sets": {n: {"rows": len(d["p"]), "stays": int(d["s"].sum())} for n, d in data.items()},
           "results": results, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(jsonable(out), indent=2) + "\n")


if __name__ == "__main__":
    main()
