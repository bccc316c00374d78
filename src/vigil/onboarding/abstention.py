"""The site version's ``abstention`` block (:mod:`vigil.abstain`; issue 16, items 1 and 4) and the abstention
figures of base and onboarded version on the held-back check stays.

The base card's block holds the measure and its cut-off, the facts of its fit (at the **base's** alert level, on
the base's training-time validation split) and, under ``evaluation``, the base's validation/test figures. A site
version must not present those as its own. :func:`site_block` builds the site version's block from the base's:

* ``low_coverage`` and ``member_logit_sd``: the measure and cut-off are kept (``inherited_from`` names the base,
  ``fitted_on`` is the base's). The cut-off says where the *base's training inputs* end (the sparsest recent charting
  among the base's validation rows at its level; the members' spread of the base's ensemble): a property of the
  inputs and of the data the model learned from, not of the site's labels. Re-fitting it as a quantile of the
  site's own rows would flag a fixed share at any site and hide a site that charts more sparsely than the training
  data (docs/evaluation/onboarding.md: the share abstained is site-dependent; that is the point of the measure).
* ``decision_margin_z`` is measured from the alert level, so it moves with the site's level: re-derived on the
  site's fit stays (label-free: scores and member probabilities only) at the base fit's share of alerting rows,
  with ``level`` the site version's.
* The member measures need the ensemble's ``Mean`` as the graph's output: an adapted graph (recalibration layer,
  site trees) no longer has it, so for those the block is dropped (the version would not load) and the onboarding
  block says why.
* ``min_history_h`` (a version 2 block: rows with fewer hours of the stay behind them are indeterminate) is kept
  as it is: the hours behind a row carry no site habit.

The base's fit facts (its ``level`` among them) go under ``base_fit`` and its figures under ``base_evaluation``;
``site_evaluation`` (:func:`site_evaluation`) holds the site version's own figures on the check stays, at its own
alert level and graph. Label-free onboarding reads no label, so its ``site_evaluation`` has the shares only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from vigil.config import AlertSettings
    from vigil.registry import ModelRef
    from vigil.scoring import Scorer

__all__ = ["site_block", "check_figures", "site_evaluation", "KEPT_MEASURES", "LABEL_FREE_KEYS", "SUMMARY_KEYS"]

KEPT_MEASURES = ("low_coverage", "member_logit_sd")  # cut-off kept from the base (see the module docstring)
# the figures that need no label (what a label-free onboarding's site_evaluation keeps)
LABEL_FREE_KEYS = ("stays", "rows", "alert_level", "share_rows_indeterminate", "share_alerts_indeterminate")
_LABEL_FREE_ALERTS = ("alerts", "alerts_per_patient_day", "stays_alerted")
# the summary line's "abstention"
SUMMARY_KEYS = ("measure", "cutoff", "level", "min_history_h", "inherited_from", "cutoff_rule")


def site_block(base: ModelRef, graph_is_base: bool, fix_df: pd.DataFrame | None = None,
               level: float | None = None) -> tuple[dict[str, Any] | None, str | None]:  # fmt: skip
    """The site version's block (without ``site_evaluation``) from ``base``'s, and a note for the onboarding
    block (None when there is nothing to say). ``graph_is_base``: the site version serves the base graph
    unchanged (label-free onboarding); ``fix_df`` and ``level``: the site's fit stays and alert level (read
    by ``decision_margin_z`` only). ``(None, None)`` when the base has no block."""
    block = base.card.get("abstention")
    if not block:
        return None, None
    src = f"{base.name}:{base.version}"
    measure = block["measure"]
    base_fit = {k: v for k, v in block.items()
                if k not in ("version", "measure", "cutoff", "fitted_on", "evaluation", "min_history_h")}  # fmt: skip
    base_fit["note"] = (f"facts of the fit of {src}'s block (on {block.get('fitted_on') or 'its data'}"
                        + (f", at {src}'s alert level {block['level']:g}" if block.get("level") is not None else "")
                        + "): not this version's")  # fmt: skip
    out: dict[str, Any] = {"version": block.get("version", 1), "measure": measure}
    if measure != "low_coverage" and not graph_is_base:
        return None, (f"{src}'s {measure} abstention block dropped: it reads the ensemble members' mean, which the "
                      "adapted graph no longer outputs")  # fmt: skip
    if measure == "decision_margin_z":
        from vigil.evaluation.abstention import fit_member_spread, members_frame

        if fix_df is None or level is None:
            raise ValueError("decision_margin_z is re-derived at the site's level on its fit stays")
        share = float(block.get("share_of_alerting_rows") or 0.2)
        p, mem, _, _ = members_frame(base, fix_df)
        fit = fit_member_spread(mem, p, level, share, "site fit stays (label-free: scores and members only)")
        out.update({"cutoff": fit["cutoff"], "level": float(level), "fitted_on": fit["fitted_on"],
                    "cutoff_rule": (f"re-derived: the margin is measured from the alert level, so the cut-off is "
                                    f"the one that flags {share:g} of the site fit stays' rows at or above this "
                                    "version's level"),
                    "site_fit": {k: fit[k] for k in ("share_of_alerting_rows", "members", "rows", "alerting_rows",
                                                     "share_rows_indeterminate")}})  # fmt: skip
    else:  # KEPT_MEASURES
        out.update({"cutoff": float(block["cutoff"]), "fitted_on": block.get("fitted_on"),
                    "cutoff_rule": ("kept from the base: the cut-off marks where the base's training inputs end "
                                    "(a property of the inputs, not of the site's labels)")})  # fmt: skip
    if block.get("min_history_h") is not None:  # hours of the stay behind a row: no site habit in it, kept
        out["min_history_h"] = float(block["min_history_h"])
    out["inherited_from"] = src
    out["base_fit"] = base_fit
    if block.get("evaluation") is not None:
        out["base_evaluation"] = {**block["evaluation"],
                                  "of": f"{src} on its own data (the splits named here), at its alert level: "
                                        "not this site's figures"}  # fmt: skip
    return out, None


def check_figures(ref: ModelRef, scorer: Scorer, df: pd.DataFrame, policy: AlertSettings,
                  labelled: bool) -> dict[str, Any] | None:  # fmt: skip
    """The abstention figures of version ``ref`` (its graph, its block, its alert level) on the rows of ``df``:
    the model-risk alerts the configured policy raises (as ``vigil evaluate`` replays them) split into confident
    and indeterminate (:func:`vigil.evaluation.abstention.evaluate_abstention`). Without ``labelled`` only what
    needs no label (:data:`LABEL_FREE_KEYS`). None when the card has no block."""
    spec = ref.model_card.abstention
    if spec is None:
        return None
    from vigil.evaluation.abstention import evaluate_abstention, history_key
    from vigil.evaluation.alerting import simulate_policy, stay_table
    from vigil.evaluation.report import row_units, screen_scores
    from vigil.features import featurize, frame_chunks

    stay_start, chunks = frame_chunks(df)
    n = stay_start.shape[0]
    probs, flags = np.zeros(n, np.float32), np.zeros(n, bool)
    for a, b, inp in chunks:  # one pass: the probability and the flag serving gives each row
        p, ind, _ = scorer.predict_flagged(featurize(inp))
        probs[a:b] = p
        if ind is not None:
            flags[a:b] = ind
    stay_start = stay_start.copy()
    if n:
        stay_start[0] = True
    labels = (df["SepsisLabel"].to_numpy(dtype=np.float64, na_value=0.0).astype(np.int8) if labelled
              else np.zeros(n, np.int8))  # alerts do not read labels; the label-free figures below do not either
    first = np.flatnonzero(stay_start)
    static = {c: (df[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in df.columns
                  else np.full(n, np.nan))[first] for c in ("Unit1", "Unit2")}  # fmt: skip
    screens = screen_scores(df)
    stays = stay_table(labels, stay_start)
    fired = simulate_policy(policy, risk=probs, threshold=ref.alert_level, news2_total=screens["news2_total"],
                            stay_start=stay_start, news2_max_part=screens["news2_max_part"], model=ref.name,
                            unit=row_units(static, stays.n_rows))["model_risk"]  # fmt: skip
    r = evaluate_abstention(fired, flags, labels, stay_start)
    out: dict[str, Any] = {"model": f"{ref.name}:{ref.version}", "measure": spec.measure, "cutoff": spec.cutoff,
                           **history_key(spec), "alert_level": ref.alert_level, "stays": int(first.size), "rows": n,
                           "labels_read": labelled, **r}  # fmt: skip
    if not labelled:
        out = _label_free(out)
    return out


def _label_free(fig: dict[str, Any]) -> dict[str, Any]:
    keep = {k: fig[k] for k in ("model", "measure", "cutoff", "min_history_h", *LABEL_FREE_KEYS) if k in fig}
    for w in ("all", "confident"):
        if w in fig:
            keep[w] = {k: fig[w][k] for k in _LABEL_FREE_ALERTS}
    keep["labels_read"] = False
    keep["ppv"] = "not computed: no site label read (shares only)"
    return keep


def site_evaluation(fig: dict[str, Any], labelled_onboarding: bool, check_desc: str) -> dict[str, Any]:
    """The block's ``site_evaluation`` from the onboarded version's :func:`check_figures` on the check stays; a
    label-free onboarding keeps the shares only, even when the file has labels (they are read for the report)."""
    doc = dict(fig) if labelled_onboarding else _label_free(fig)
    doc.pop("measure", None)
    doc.pop("cutoff", None)
    doc.pop("min_history_h", None)
    doc["on"] = check_desc
    doc["policy"] = "configured alert policy (model_risk alerts) at this version's alert level and graph"
    return doc
