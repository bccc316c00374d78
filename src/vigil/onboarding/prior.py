"""The site's threshold from the site's sepsis prevalence, without a label (``vigil onboard --unlabelled
--prevalence P``; issue 16).

Most of what a model loses at a new hospital is the operating point, and much of that is the share of septic
stays: the utility-optimal threshold of the same model is higher where sepsis is rarer and lower where it is
commoner. Under a **prior shift** (the same patients look the same, only the share of septic ones differs) the
row's posterior at the site follows from the base's by Bayes' rule (Saerens, Latinne & Decaestecker, 2002):

    odds_site(x) = odds_base(x) * [pi_site / (1 - pi_site)] / [pi_base / (1 - pi_base)]

where ``pi`` is the share of hourly rows with SepsisLabel = 1. A decision rule "posterior >= q" is the same rule
at both sites (the utility's rewards and costs per row do not depend on the site), so the site's threshold on
the base's score is the score whose base posterior reaches ``q`` once shifted. The base's scores are class-weighted,
not calibrated, so the posterior is a logistic map of the score's logit fitted on the base's **validation** rows
(the rows its threshold was chosen on): :func:`fit_prior_shift`, stored in the card's ``prior_shift`` block by
``vigil train`` (``scripts/fit_prior_shift.py`` for older versions).

The site gives what a hospital knows without patient labels: the share of its ICU stays that become septic
(Sepsis-3 / the challenge's onset definition). It becomes the row share with the base's positive rows per septic
stay (set by the label definition: ~9.6 in both of set A's units) and the site sample's own rows per stay.

Estimating the site's prior from its unlabelled scores instead (the EM of Saerens et al.) failed on set A's units:
MICU base at SICU stays: 8.2 % estimated for 1.1 % true; SICU base at MICU: 11.9 % for 2.6 %, because the units
differ in charting habits too, not only in septic share (docs/evaluation/onboarding.md). So the prevalence is an
input, never guessed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vigil.errors import ConfigError
from vigil.evaluation.alerting import stay_table
from vigil.onboarding.adapt import fit_recalibration, logit

__all__ = ["check_prevalence", "fit_prior_shift", "posterior_logit", "prevalence_threshold",
           "shifted_threshold", "site_row_prior", "stay_counts", "threshold_at"]

PRIOR_CLIP = (1e-4, 0.5)  # a row share outside this is not a sepsis prevalence any site would state


def stay_counts(labels: np.ndarray, stay_start: np.ndarray) -> tuple[int, int, int]:
    """(stays, septic stays, rows) of concatenated stays (``stay_start`` marks each stay's first row).

    >>> stay_counts(np.array([0, 0, 1, 0, 0]), np.array([1, 0, 0, 1, 0], bool))
    (2, 1, 5)
    """
    t = stay_table(np.asarray(labels) > 0, stay_start)
    return len(t.first), int(t.septic.sum()), int(t.n_rows.sum())


def fit_prior_shift(probs: np.ndarray, labels: np.ndarray, stay_start: np.ndarray, fitted_on: str) -> dict[str, Any]:
    """The card's ``prior_shift`` block: the row posterior ``sigmoid(slope * logit(score) + intercept)`` (an
    unweighted logistic fit of SepsisLabel on the score's logit), the row and stay prevalence and the positive rows
    per septic stay, all on the rows given (the base's validation split)."""
    y = np.asarray(labels) > 0
    n, septic, rows = stay_counts(y, stay_start)
    if septic == 0 or septic == n:
        raise ConfigError("the prior shift needs septic and non-septic stays to fit on")
    r = fit_recalibration(probs, y, positive_weight=1.0)
    if not r.a > 0:
        raise ConfigError(f"the score does not rank SepsisLabel on {fitted_on} (logistic slope {r.a:.3g})")
    return {
        "version": 1, "slope": round(r.a, 6), "intercept": round(r.b, 6),
        "row_prior": round(float(y.mean()), 6), "stay_prevalence": round(septic / n, 6),
        "rows_per_stay": round(rows / n, 4), "positive_rows_per_septic_stay": round(float(y.sum()) / septic, 4),
        "stays": n, "septic_stays": septic, "rows": rows, "fitted_on": fitted_on,
    }  # fmt: skip


def site_row_prior(block: dict[str, Any], stay_prevalence: float, rows_per_stay: float) -> float:
    """The site's share of SepsisLabel rows from its stated share of septic stays and its own rows per stay.

    >>> site_row_prior({"positive_rows_per_septic_stay": 9.6}, 0.05, 40.0)
    0.012
    """
    if not rows_per_stay > 0:
        raise ConfigError("the site sample has no rows")
    pi = stay_prevalence * float(block["positive_rows_per_septic_stay"]) / rows_per_stay
    return float(min(max(pi, PRIOR_CLIP[0]), PRIOR_CLIP[1]))


def shifted_threshold(block: dict[str, Any], threshold: float, site_row_prior: float) -> float:
    """The score at which the site's posterior equals the base's posterior at ``threshold``.

    The same prior gives the same threshold; a rarer sepsis a higher one:

    >>> b = {"slope": 1.0, "intercept": -3.0, "row_prior": 0.02}
    >>> round(shifted_threshold(b, 0.4, 0.02), 6)
    0.4
    >>> shifted_threshold(b, 0.4, 0.01) > 0.4 > shifted_threshold(b, 0.4, 0.04)
    True
    """
    pi_b, pi_s = float(block["row_prior"]), float(site_row_prior)
    shift = np.log(pi_s / (1 - pi_s)) - np.log(pi_b / (1 - pi_b))  # the site's log prior odds over the base's
    shifted = {**block, "intercept": float(block["intercept"]) + shift}  # the base's map at the site's prior
    return threshold_at(shifted, posterior_logit(block, threshold))


def posterior_logit(block: dict[str, Any], score: float) -> float:
    """The row posterior's logit at ``score`` under ``block``'s map.

    >>> posterior_logit({"slope": 2.0, "intercept": -1.0}, 0.5)
    -1.0
    """
    return float(block["slope"]) * float(logit(np.array([score]))[0]) + float(block["intercept"])


def threshold_at(block: dict[str, Any], z: float) -> float:
    """The score whose posterior logit under ``block``'s map is ``z`` (the inverse of :func:`posterior_logit`).

    >>> round(threshold_at({"slope": 2.0, "intercept": -1.0}, -1.0), 6)
    0.5
    """
    zs = (float(z) - float(block["intercept"])) / float(block["slope"])
    return float(0.5 * (1.0 + np.tanh(0.5 * zs)))


def check_prevalence(block: dict[str, Any] | None, base: str, prevalence: float) -> dict[str, Any]:
    """``block`` when ``prevalence`` can move ``base``'s threshold; :class:`ConfigError` saying why not otherwise."""
    if not 0.0 < prevalence < 1.0:
        raise ConfigError(f"--prevalence is the share of the site's stays that become septic: 0 < P < 1, not "
                          f"{prevalence:g}")  # fmt: skip
    if block is None:
        raise ConfigError(f"{base} has no prior_shift block in its card, which --prevalence needs (vigil train "
                          "writes one; for an older version: scripts/fit_prior_shift.py --model "
                          f"{base} --write)")  # fmt: skip
    return block


def prevalence_threshold(block: dict[str, Any] | None, base: str, threshold: float, prevalence: float,
                         stay_start: np.ndarray) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """(the site's threshold, what the card records) for ``vigil onboard --unlabelled --prevalence``: the base
    version's ``threshold`` moved by the site's stated share of septic stays (``stay_start``: the site sample's
    stays the level is fitted on, for its rows per stay). No label is read."""
    block = check_prevalence(block, base, prevalence)
    n, _, rows = stay_counts(np.zeros(len(stay_start), dtype=np.int8), stay_start)
    rows_per_stay = rows / max(n, 1)
    pi = site_row_prior(block, prevalence, rows_per_stay)
    thr = shifted_threshold(block, threshold, pi)
    return thr, {
        "stated_stay_prevalence": prevalence, "site_rows_per_stay": round(rows_per_stay, 4),
        "site_row_prior": round(pi, 6), "base_row_prior": block["row_prior"],
        "base_stay_prevalence": block["stay_prevalence"], "base_threshold": threshold, "threshold": round(thr, 6),
        "rule": "the score whose posterior at the site's prior equals the base's posterior at its threshold at the "
                "base's prior (vigil.onboarding.prior); the prevalence is the site's statement, not estimated",
    }  # fmt: skip

