"""Measurements behind docs/evaluation/onboarding.md, "A base trained on most of the hospital" (eighth
session). Each reads the unit registries that ``scripts/onboard_units.py`` leaves in its ``--work`` folders and
prints one JSON line per run. Not part of ``make test`` (minutes on 2 cores).

* ``level-cap``: the label-free level chosen within ``budget x (1 - headroom)`` (what ``vigil onboard`` does) against
  the level whose stay-bootstrap upper quantile of alerts per patient-day on the fit stays is within the budget;
  both read on the other unit's stays outside the sample (alerts per patient-day, share alerted early).
* ``threshold``: the threshold maximising normalized utility on the base's validation split (``plain``, what
  ``vigil train`` does) against rules that expect the site's odds of a septic stay to differ by a factor ``m`` in
  [0.5, 2] (``mean``: the highest utility averaged over log-spaced ``m``; ``regret``: the least worst shortfall from
  each ``m``'s best), each read on the other unit's remaining stays. Under a shift of the odds by ``m`` the
  normalized utility at a threshold is ``S + N / m`` (``S``: septic stays' share, ``N``: the false-alarm cost of the
  other stays, both over the septic stays' best), so every rule is a sort and a cumulative sum.
* ``threshold-home``: the same rules for a registered model (default ``sepsis-gbm:1``) on its own validation split,
  read on its test split as it is and reweighted to other odds.
* ``adaptation``: both labelled adaptations (recalibration layer; continued boosting) fitted as
  ``vigil.onboarding.labelled.adapt_labelled`` fits them, with the choice it makes on the tune stays, a cross-fitted
  choice (three parts of the sample, as ``vigil.onboarding.crossfit``; ``--no-crossfit`` to skip) and the utility
  of each on the other unit's remaining stays;
* ``trees-threshold``: the site trees' threshold fixed on the tune stays (as ``vigil onboard``) against one fixed on
  out-of-fold scores of every fit stay, both read on the other unit's remaining stays.

    PYTHONPATH=src .venv/bin/python scripts/onboard_checks.py level-cap \
        --run /tmp/onboard-wide:base-micu-wide:1:SICU:7,11,12,14,15
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def _runs(specs: list[str]) -> list[tuple[str, str, str, list[int]]]:
    out = []
    for s in specs:  # WORK:NAME:VERSION:SITE_UNIT:SEEDS
        work, name, version, site, seeds = s.split(":")
        out.append((work, f"{name}:{version}", site, [int(v) for v in seeds.split(",")]))
    return out


def _site(work: str, site_unit: str, frac: float, seed: int) -> tuple[Any, Any]:
    import pandas as pd

    from vigil.onboarding.sample import site_sample_mask

    site = pd.read_parquet(f"{work}/setA-{site_unit.lower()}.parquet")
    m = site_sample_mask(site["patient_id"].to_numpy(), frac, seed)
    return site[m].reset_index(drop=True), site[~m].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------ level-cap
def level_cap(a: argparse.Namespace) -> None:
    from vigil.config import load_settings
    from vigil.evaluation.alerting import alert_summary, simulate_policy, stay_alerts, stay_table
    from vigil.offline import score_frame
    from vigil.onboarding import levels as lv
    from vigil.onboarding.sample import split_site
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    policy = load_settings(None).alerts
    pol = lv.model_risk_only(policy)

    def replay(scores: np.ndarray, s: np.ndarray, y: np.ndarray, level: float) -> tuple[Any, Any]:
        st = stay_table(y, s)
        fired = simulate_policy(pol, risk=scores, threshold=float(level), news2_total=np.zeros(len(scores)),
                                stay_start=s)  # fmt: skip
        return st, stay_alerts(fired["model_risk"], st)

    def upper(scores: np.ndarray, s: np.ndarray, level: float, w: np.ndarray, q: float) -> float:
        st, al = replay(scores, s, np.zeros(len(scores), np.int8), level)
        c, d = al.count.astype(float), st.n_rows.astype(float) / 24.0
        return float(np.quantile((w @ c) / (w @ d), q))

    def choose(scores: np.ndarray, s: np.ndarray, q: float, w: np.ndarray) -> float | None:
        ups = [(float(v), upper(scores, s, v, w, q)) for v in lv.level_grid(scores)]
        ok = [u for u in ups if u[1] <= a.budget]
        if not ok:
            return None
        best = min(ok)[0]
        over = [u[0] for u in ups if u[0] < best and u[1] > a.budget]
        lo, hi = (max(over), best) if over else (None, best)
        for _ in range(6 if lo is not None else 0):  # the bisection of vigil.onboarding.levels.refine_level
            mid = float(f"{(lo + hi) / 2:.4g}")
            if not lo < mid < hi:
                break
            lo, hi = (lo, mid) if upper(scores, s, mid, w, q) <= a.budget else (mid, hi)
        return hi

    def read(scores: np.ndarray, s: np.ndarray, y: np.ndarray, level: float) -> list[float]:
        r = alert_summary(*replay(scores, s, y, level))
        return [level, round(r["alerts_per_patient_day"], 4), round(r["share_septic_alerted_early"], 4)]

    for work, spec, site_unit, seeds in _runs(a.run):
        sc = Scorer(Registry(f"{work}/registry").get(spec), threads=a.threads)
        for seed in seeds:
            sample, rest = _site(work, site_unit, a.sample_frac, seed)
            pf, sf = score_frame(sc, split_site(sample, seed).fit)
            pr, sr = score_frame(sc, rest)
            yr = rest["SepsisLabel"].to_numpy(dtype=np.int8)
            ch, _ = lv.refine_unlabelled(pf, sf, policy, lv.replay_levels(pf, sf, policy, lv.level_grid(pf)),
                                         a.budget, a.headroom)  # fmt: skip
            n = int(sf.sum())
            w = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=1000).astype(float)
            out: dict[str, Any] = {"base": spec, "seed": seed, "fit_stays": n,
                                   f"headroom{a.headroom:g}": read(pr, sr, yr, ch.level) if ch else None}  # fmt: skip
            for q in (0.8, 0.9, 0.95):
                level = choose(pf, sf, q, w)
                out[f"boot{q:g}"] = read(pr, sr, yr, level) if level is not None else None
            print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------------ threshold
M = np.exp(np.linspace(np.log(0.5), np.log(2.0), 9))


def utility_parts(p: np.ndarray, y: np.ndarray, s: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, N) over ``grid``: normalized utility at odds shift m is ``S + N / m`` (module docstring)."""
    from vigil.evaluation.utility import row_utilities

    u1, u0, best = row_utilities(y, s)
    sid = np.cumsum(s) - 1
    septic = np.zeros(sid[-1] + 1, bool)
    np.logical_or.at(septic, sid, y.astype(bool))
    sep = septic[sid]
    den = float((np.where(best, u1, u0) - u0)[sep].sum())
    order = np.argsort(p, kind="stable")
    gain = (u1 - u0)[order]
    k = np.searchsorted(p[order], grid, side="left")

    def suffix(g: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(g[::-1])[::-1], [0.0]])[k] / den

    return suffix(np.where(sep[order], gain, 0.0)), suffix(np.where(sep[order], 0.0, gain))


def pick(s_part: np.ndarray, n_part: np.ndarray, rule: str) -> int:
    nu = s_part[None, :] + n_part[None, :] / M[:, None]
    if rule == "plain":
        return int(np.argmax(s_part + n_part))
    if rule == "mean":
        return int(np.argmax(nu.mean(0)))
    return int(np.argmin((nu.max(1, keepdims=True) - nu).max(0)))  # regret


def threshold(a: argparse.Namespace) -> None:
    from vigil.evaluation.selection import select_rows
    from vigil.evaluation.utility import DEFAULT_GRID, normalized_utility
    from vigil.offline import score_frame
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    for work, spec, site_unit, seeds in _runs(a.run):
        ref = Registry(f"{work}/registry").get(spec)
        sc = Scorer(ref, threads=a.threads)
        base_unit = "SICU" if site_unit == "MICU" else "MICU"
        sel = select_rows(ref, f"{work}/setA-{base_unit.lower()}{a.base_suffix}.parquet", "validation", None)
        p, s = score_frame(sc, sel.df)
        parts = utility_parts(p, sel.df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0).astype(np.int8), s,
                              DEFAULT_GRID)  # fmt: skip
        for seed in seeds:
            _, rest = _site(work, site_unit, a.sample_frac, seed)
            pr, sr = score_frame(sc, rest)
            yr = rest["SepsisLabel"].to_numpy(dtype=np.int8)
            out: dict[str, Any] = {"base": spec, "seed": seed, "card_threshold": ref.threshold}
            for rule in ("plain", "regret", "mean"):
                k = pick(*parts, rule)
                t = float(DEFAULT_GRID[k])
                on_val = round(float(parts[0][k] + parts[1][k]), 4)
                out[rule] = [t, on_val, round(normalized_utility(yr, pr >= t, sr), 4)]
            so, no = utility_parts(pr, yr, sr, DEFAULT_GRID)
            ko = int(np.argmax(so + no))
            out["site_best"] = [float(DEFAULT_GRID[ko]), round(float(so[ko] + no[ko]), 4)]
            print(json.dumps(out), flush=True)


def threshold_home(a: argparse.Namespace) -> None:
    """The same rules for a registered model on its own data's validation split, read on its test split as it is
    and reweighted to other odds of a septic stay (``S + N / m``)."""
    from vigil.evaluation.selection import select_rows
    from vigil.evaluation.utility import DEFAULT_GRID
    from vigil.offline import score_frame
    from vigil.registry import Registry
    from vigil.scoring import Scorer

    ref = Registry(a.registry).get(a.model)
    sc = Scorer(ref, threads=a.threads)
    parts = {}
    for split in ("validation", "test"):
        sel = select_rows(ref, a.data, split, None)
        p, s = score_frame(sc, sel.df)
        y = sel.df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0).astype(np.int8)
        parts[split] = utility_parts(p, y, s, DEFAULT_GRID)
    (sv, nv), (st, nt) = parts["validation"], parts["test"]
    for rule in ("plain", "regret", "mean"):
        k = pick(sv, nv, rule)
        print(json.dumps({"model": a.model, "rule": rule, "threshold": float(DEFAULT_GRID[k]),
                          "validation": round(float(sv[k] + nv[k]), 4), "test": round(float(st[k] + nt[k]), 4),
                          "test_at_m": {f"{m:g}": round(float(st[k] + nt[k] / m), 4) for m in (0.5, 2 / 3, 1.5, 2)}}))


# ----------------------------------------------------------------------------------------------------- adaptation
def _both(base: Any, sc: Any, sp: Any, seed: int, threads: int) -> dict[str, Any]:
    """Both adaptations as ``vigil onboard`` registers them (``adapt_labelled`` with each one preferred and a margin
    no tune difference reaches), each with its threshold on the stays that fix it, and both tune utilities."""
    from vigil.offline import score_frame
    from vigil.onboarding import levels as lv
    from vigil.onboarding.labelled import BOOSTING, RECALIBRATION, adapt_labelled
    from vigil.onboarding.sample import frame_features, frame_labels

    pb = {k: score_frame(sc, getattr(sp, k))[0] for k in ("train", "tune")}
    out: dict[str, Any] = {}
    for key, kind in (("rec", RECALIBRATION), ("boost", BOOSTING)):
        ad = adapt_labelled(base, sp, pb, "onboard_checks", seed=seed, threads=threads, min_gain=10.0, prefer=kind)
        assert ad.kind == kind, (ad.kind, kind)
        fix = sp.tune if ad.fit_on == "tune" else sp.fit
        p_fix = pb["tune"] if ad.fit_on == "tune" else np.concatenate([pb["train"], pb["tune"]])
        x_fix, s_fix = frame_features(fix)
        out[key] = (ad.native, lv.site_threshold(ad.native(p_fix, x_fix), frame_labels(fix), s_fix)[0])
        compared = ad.details["compared"]
    out["tune"] = (compared[RECALIBRATION]["utility"], compared[BOOSTING]["utility"])
    out["rounds"] = compared[BOOSTING]["rounds"]
    return out


def _predictions(cands: dict[str, Any], sc: Any, df: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from vigil.offline import score_frame
    from vigil.onboarding.sample import frame_features, frame_labels

    p, s = score_frame(sc, df)
    x, _ = frame_features(df)
    return {k: (cands[k][0](p, x) >= cands[k][1], frame_labels(df), s) for k in ("rec", "boost")}


def adaptation(a: argparse.Namespace) -> None:
    from vigil.evaluation.utility import normalized_utility
    from vigil.onboarding.sample import SiteSplit, split_site
    from vigil.registry import Registry
    from vigil.scoring import Scorer
    from vigil.training.data import split_by_patient

    def util(pred: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        return round(normalized_utility(pred[1], pred[0], pred[2]), 4)

    for work, spec, site_unit, seeds in _runs(a.run):
        base = Registry(f"{work}/registry").get(spec)
        sc = Scorer(base, threads=a.threads)
        for seed in seeds:
            sample, rest = _site(work, site_unit, a.sample_frac, seed)
            c = _both(base, sc, split_site(sample, seed), seed, a.threads)
            on_rest = {k: util(v) for k, v in _predictions(c, sc, rest).items()}
            out: dict[str, Any] = {
                "sample_frac": a.sample_frac, "base": spec, "seed": seed, "rounds": c["rounds"],
                "septic_in_sample": int(sample.groupby("patient_id")["SepsisLabel"].max().sum()),
                "tune_u": [round(v, 4) for v in c["tune"]], "rest_u": on_rest,
                "tune_choice": "boost" if c["tune"][1] > c["tune"][0] + a.min_gain else "rec",
                "better_on_rest": max(on_rest, key=lambda k: on_rest[k]),
            }  # fmt: skip
            if not a.no_crossfit:
                cut = split_by_patient(sample["patient_id"].to_numpy(), seed + 1, (1 / 3, 1 / 3, 1 / 3))
                pooled: dict[str, list[Any]] = {"rec": [], "boost": []}
                for held_mask in cut.values():
                    r = sample[~held_mask].reset_index(drop=True)
                    mm = split_by_patient(r["patient_id"].to_numpy(), seed, (0.7, 0.3, 0.0))
                    fsp = SiteSplit(r[mm["train"]].reset_index(drop=True), r[mm["validation"]].reset_index(drop=True),
                                    r.iloc[:0], seed, (0.7, 0.3, 0.0))  # fmt: skip
                    pred = _predictions(_both(base, sc, fsp, seed, a.threads), sc,
                                        sample[held_mask].reset_index(drop=True))  # fmt: skip
                    for k in pooled:
                        pooled[k].append(pred[k])
                cf = {k: util(tuple(np.concatenate([v[i] for v in lst]) for i in range(3)))  # type: ignore[arg-type]
                      for k, lst in pooled.items()}  # fmt: skip
                out["cf_u"] = cf
                out["cf_choice"] = "boost" if cf["boost"] > cf["rec"] + a.min_gain else "rec"
            print(json.dumps(out), flush=True)


def trees_threshold(a: argparse.Namespace) -> None:
    """The site trees' threshold fixed on the tune stays (as ``vigil onboard``) against one fixed on out-of-fold
    scores of every fit stay (three parts by patient, each scored by trees fitted as the registered ones on the
    other two), both applied to the registered trees and read on the unit's remaining stays."""
    from vigil.evaluation.utility import normalized_utility
    from vigil.offline import score_frame
    from vigil.onboarding import adapt
    from vigil.onboarding import levels as lv
    from vigil.onboarding.sample import frame_features, frame_labels, split_site
    from vigil.registry import Registry
    from vigil.scoring import Scorer
    from vigil.training.data import split_by_patient

    def fit_trees(train: Any, tune: Any, seed: int) -> Any:
        xt, xv = frame_features(train)[0], frame_features(tune)[0]
        return adapt.fit_boost(xt, frame_labels(train).astype(np.float32), score_frame(sc, train)[0], xv,
                               frame_labels(tune).astype(np.float32), score_frame(sc, tune)[0], seed=seed,
                               threads=a.threads)  # fmt: skip

    def scores(trees: Any, df: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, s = frame_features(df)
        return trees(score_frame(sc, df)[0], x), frame_labels(df), s

    for work, spec, site_unit, seeds in _runs(a.run):
        sc = Scorer(Registry(f"{work}/registry").get(spec), threads=a.threads)
        for seed in seeds:
            sample, rest = _site(work, site_unit, a.sample_frac, seed)
            sp = split_site(sample, seed)
            trees = fit_trees(sp.train, sp.tune, seed)
            thr_tune, _ = lv.site_threshold(*scores(trees, sp.tune))
            fit = sp.fit
            cut = split_by_patient(fit["patient_id"].to_numpy(), seed + 2, (1 / 3, 1 / 3, 1 / 3))
            oof = []
            for held in cut.values():
                other = fit[~held].reset_index(drop=True)
                m = split_by_patient(other["patient_id"].to_numpy(), seed, (0.7, 0.3, 0.0))
                t = fit_trees(other[m["train"]].reset_index(drop=True), other[m["validation"]].reset_index(drop=True),
                              seed)  # fmt: skip
                oof.append(scores(t, fit[held].reset_index(drop=True)))
            thr_oof, _ = lv.site_threshold(*(np.concatenate([o[i] for o in oof]) for i in range(3)))
            pr, yr, sr = scores(trees, rest)
            best, u_best = lv.site_threshold(pr, yr, sr)
            print(json.dumps({"sample_frac": a.sample_frac, "base": spec, "seed": seed, "rounds": trees.rounds,
                              "tune": [round(thr_tune, 4), round(normalized_utility(yr, pr >= thr_tune, sr), 4)],
                              "oof": [round(thr_oof, 4), round(normalized_utility(yr, pr >= thr_oof, sr), 4)],
                              "rest_best": [round(best, 4), round(u_best, 4)]}), flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["level-cap", "threshold", "threshold-home", "adaptation", "trees-threshold"])
    ap.add_argument("--run", action="append", default=[], help="WORK:NAME:VERSION:SITE_UNIT:SEED[,SEED...]")
    ap.add_argument("--model", default="sepsis-gbm:1", help="threshold-home: the registered model")
    ap.add_argument("--registry", default="models", help="threshold-home: its registry")
    ap.add_argument("--data", default="../shared/data/physionet2019/setA.parquet", help="threshold-home: its data")
    ap.add_argument("--sample-frac", type=float, default=0.2)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--headroom", type=float, default=0.1)
    ap.add_argument("--min-gain", type=float, default=0.01)
    ap.add_argument("--base-suffix", default="-wide", help="threshold: the base's data file is setA-<unit>SUFFIX")
    ap.add_argument("--no-crossfit", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    {"level-cap": level_cap, "threshold": threshold, "threshold-home": threshold_home,
     "adaptation": adaptation, "trees-threshold": trees_threshold}[a.check](a)


if __name__ == "__main__":
    main()
