"""Can a site's prevalence be estimated from its unlabelled scores? (issue 16; docs/evaluation/onboarding.md,
"The threshold from the site's prevalence".) On set A's units as two sites, from ``scripts/robust_units.py``'s
feature cache and ``scripts/onboard_units.py``'s base registries: the EM of Saerens, Latinne & Decaestecker (2002)
on the other unit's scores (posterior = the base's logistic map fitted on its validation split), the mean
posterior, and the true row prior; the site's utility at the threshold each gives (vigil.onboarding.prior) and at
its own best threshold. Not part of ``make test``.

    PYTHONPATH=src .venv/bin/python scripts/prior_shift_em.py --cache /tmp/robust/cache \
        --micu /tmp/onboard-units/registry/base-micu/1/model.onnx \
        --sicu /tmp/onboard-units-s/registry/base-sicu/1/model.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def em_prior(q: np.ndarray, pi_b: float, iters: int = 500) -> float:
    """Row prior at the site by EM over the base posteriors ``q`` (fitted at prior ``pi_b``)."""
    pi = pi_b
    for _ in range(iters):
        r = (pi / pi_b) * q
        new = float((r / (r + ((1 - pi) / (1 - pi_b)) * (1 - q))).mean())
        if abs(new - pi) < 1e-8:
            return new
        pi = new
    return pi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--micu", type=Path, required=True, help="base-micu's model.onnx")
    ap.add_argument("--sicu", type=Path, required=True, help="base-sicu's model.onnx")
    a = ap.parse_args()

    import onnxruntime as ort

    from vigil.evaluation.utility import best_threshold, normalized_utility
    from vigil.onboarding.adapt import fit_recalibration
    from vigil.onboarding.prior import fit_prior_shift, shifted_threshold

    def score(path: Path, x: np.ndarray) -> np.ndarray:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(s.run(["probability"], {"features": x.astype(np.float32)})[0]).reshape(len(x), -1)[:, -1]

    for base, site in (("micu", "sicu"), ("sicu", "micu")):
        val = dict(np.load(a.cache / f"{base}-validation.npz"))
        tgt = dict(np.load(a.cache / f"{site}-rest.npz"))
        pv, pt = score(getattr(a, base), val["x"]), score(getattr(a, base), tgt["x"])
        thr, _ = best_threshold(pv, val["labels"], val["stay_start"])
        block = fit_prior_shift(pv, val["labels"], val["stay_start"], "validation")
        cal = fit_recalibration(pv, val["labels"] > 0, positive_weight=1.0)
        q = cal(pt)
        est = {"em": em_prior(q, block["row_prior"]), "mean_posterior": float(q.mean()),
               "true": float((tgt["labels"] > 0).mean())}  # fmt: skip
        out = {"base": base, "site": site, "base_threshold": thr, "base_row_prior": block["row_prior"],
               "utility_at_base_threshold": normalized_utility(tgt["labels"], pt >= thr, tgt["stay_start"]),
               "site_best": best_threshold(pt, tgt["labels"], tgt["stay_start"])}  # fmt: skip
        for k, pi in est.items():
            t = shifted_threshold(block, thr, pi)
            out[k] = {"row_prior": pi, "threshold": t,
                      "utility": normalized_utility(tgt["labels"], pt >= t, tgt["stay_start"])}  # fmt: skip
        print(json.dumps(out))


if __name__ == "__main__":
    main()
