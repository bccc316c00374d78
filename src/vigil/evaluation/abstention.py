"""Abstention, fitted and evaluated offline (issue 16, item 4).

A score is *indeterminate* when its input lies outside what the model was trained on. The measure that serving
applies (:mod:`vigil.abstain`, the card's ``abstention`` block) is the **members' disagreement** (standard
deviation of the ensemble members' logits): :func:`fit_member_spread` fits its cut-off on a version's
training-time held-out rows (the validation split) as the spread exceeded by a stated share of the rows scored at
or above the alert level; :func:`abstention_report` evaluates a version's block in ``vigil evaluate``.

Two earlier measures, kept for comparison (``scripts/abstention_units.py``), fitted on reference rows (the model's
training rows) by :func:`fit_abstention`:

* **coverage**: the share of the 34 measured variables seen within the last 72 h (the featurizer's
  ``*_hours_since`` < 72); abstain below the reference's ``q`` quantile;
* **out-of-range share**: the share of the 134 features outside the reference's [0.5 %, 99.5 %] range; abstain
  above the reference's ``1 - q`` quantile.

:func:`evaluate_abstention` replays the alert policy on all rows and splits the alerts into *confident* (the row
was not abstained) and *indeterminate*; it reports the share of rows and alerts abstained, and stay-level PPV and
sensitivity (septic stays alerted before onset) of confident alerts against all alerts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vigil.evaluation.alerting import StayAlerts, alert_summary, stay_alerts, stay_table

__all__ = ["Abstention", "fit_abstention", "evaluate_abstention", "HOURS_SENTINEL", "fit_member_spread",
           "members_frame", "flags_frame", "abstention_report", "indeterminate_rows", "ppv_gain_interval",
           "history_key"]  # fmt: skip

HOURS_SENTINEL = 72.0  # the featurizer's "not measured in the last 72 h" value of *_hours_since


def _coverage_cols() -> np.ndarray:
    from vigil.features import FEATURE_NAMES

    return np.array([i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")])


@dataclass(frozen=True)
class Abstention:
    lo: list[float]
    hi: list[float]
    min_coverage: float
    max_out_of_range: float
    q: float

    def measures(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov = (x[:, _coverage_cols()] < HOURS_SENTINEL).mean(axis=1)
        lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
        oor = ((x < lo) | (x > hi)).mean(axis=1)
        return cov, oor

    def indeterminate(self, x: np.ndarray) -> np.ndarray:
        cov, oor = self.measures(x)
        return (cov < self.min_coverage) | (oor > self.max_out_of_range)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_abstention(x_ref: np.ndarray, q: float = 0.05) -> Abstention:
    """The two cut-offs at the reference rows' ``q`` tails (about ``2q`` of reference rows abstain at most)."""
    x = np.asarray(x_ref, np.float32)
    lo, hi = np.quantile(x, 0.005, axis=0), np.quantile(x, 0.995, axis=0)
    tmp = Abstention(lo.tolist(), hi.tolist(), 0.0, 1.0, q)
    cov, oor = tmp.measures(x)
    return Abstention(lo.tolist(), hi.tolist(), float(np.quantile(cov, q)), float(np.quantile(oor, 1 - q)), q)


def _stay_ppv_sens(stays: Any, sa: StayAlerts) -> dict[str, Any]:
    s = alert_summary(stays, sa)
    return {"alerts": s["alerts"], "alerts_per_patient_day": s["alerts_per_patient_day"], "ppv_stay": s["ppv_stay"],
            "share_septic_alerted_early": s["share_septic_alerted_early"], "stays_alerted": s["stays_alerted"]}


def evaluate_abstention(alert_rows: np.ndarray, indeterminate: np.ndarray, labels: np.ndarray,
                        stay_start: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """All alerts vs confident alerts (alerts on rows that were not indeterminate).

    >>> y = np.array([0, 0, 0, 0, 1, 1, 0, 0]); s = np.array([1, 0, 0, 0, 0, 0, 1, 0], bool)
    >>> a = np.array([0, 1, 0, 0, 0, 0, 1, 0], bool); ind = np.array([0, 0, 0, 0, 0, 0, 1, 0], bool)
    >>> r = evaluate_abstention(a, ind, y, s); r["all"]["ppv_stay"], r["confident"]["ppv_stay"]
    (0.5, 1.0)
    """
    stays = stay_table(labels, stay_start)
    a = np.asarray(alert_rows, bool)
    ind = np.asarray(indeterminate, bool)
    everything = _stay_ppv_sens(stays, stay_alerts(a, stays))
    confident = _stay_ppv_sens(stays, stay_alerts(a & ~ind, stays))
    ppv_all, ppv_conf = everything["ppv_stay"], confident["ppv_stay"]
    return {
        "share_rows_indeterminate": float(ind.mean()) if ind.size else None,
        "share_alerts_indeterminate": float((a & ind).sum() / a.sum()) if a.sum() else None,
        "all": everything, "confident": confident,
        "ppv_relative_gain": (ppv_conf / ppv_all - 1) if ppv_all and ppv_conf is not None else None,
    }  # fmt: skip


def history_key(spec: Any) -> dict[str, float]:
    """``{"min_history_h": h}`` of a block (:class:`vigil.card.AbstentionSpec`) that sets it, else ``{}``."""
    return {} if spec.min_history_h is None else {"min_history_h": float(spec.min_history_h)}


def ppv_gain_interval(fired: np.ndarray, ind: np.ndarray, y: np.ndarray, s: np.ndarray, resamples: int,
                      seed: int, level: float = 0.9) -> dict[str, Any]:  # fmt: skip
    """A stay bootstrap of (confident stay PPV / all-alerts stay PPV - 1): stays drawn with replacement.

    >>> y = np.array([0, 1, 0, 0, 1, 0]); s = np.array([1, 0, 1, 0, 1, 0], bool)
    >>> a = np.array([1, 0, 1, 0, 1, 0], bool); ind = np.array([0, 0, 1, 0, 0, 0], bool)
    >>> r = ppv_gain_interval(a, ind, y, s, 200, 0); r["point"]
    0.5
    """
    stays = stay_table(y, s)
    all_a = stay_alerts(np.asarray(fired, bool), stays).alerted
    conf_a = stay_alerts(np.asarray(fired, bool) & ~np.asarray(ind, bool), stays).alerted
    sep = stays.septic

    def gain(w: np.ndarray) -> float:
        pa = (w * (all_a & sep)).sum() / max((w * all_a).sum(), 1e-12)
        pc = (w * (conf_a & sep)).sum() / max((w * conf_a).sum(), 1e-12)
        return float(pc / pa - 1) if pa > 0 else float("nan")

    n = sep.shape[0]
    rng = np.random.default_rng(seed)
    draws = np.array([gain(np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64))
                      for _ in range(resamples)])  # fmt: skip
    lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"point": round(gain(np.ones(n)), 4), "low": round(float(lo), 4), "high": round(float(hi), 4),
            "level": level, "resamples": resamples, "share_resamples_at_least_0_30": float(np.mean(draws >= 0.30))}


def members_frame(ref: Any, df: Any, chunk_rows: int = 131_072
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(probability [N], member probabilities [N, M], stay_start [N], features [N, F]) of every row of ``df`` by
    version ``ref`` (its graph with the member probabilities exposed: :func:`vigil.abstain.with_member_outputs`)."""
    import onnxruntime as ort

    from vigil.abstain import with_member_outputs
    from vigil.features import FEATURE_NAMES, featurize, frame_chunks

    blob, names = with_member_outputs(ref.onnx_path)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    stay_start, chunks = frame_chunks(df, chunk_rows)
    n = stay_start.shape[0]
    probs, members = np.empty(n, np.float32), np.empty((n, len(names)), np.float32)
    x = np.empty((n, len(FEATURE_NAMES)), np.float32)
    for a, b, inp in chunks:
        x[a:b] = featurize(inp)
        outs = sess.run(["probability", *names], {"features": x[a:b]})
        probs[a:b] = np.asarray(outs[0]).reshape(-1)
        members[a:b] = np.concatenate([np.asarray(o).reshape(-1, 1) for o in outs[1:]], axis=1)
    return probs, members, stay_start, x


def fit_member_spread(members: np.ndarray | None, risk: np.ndarray, level: float, share: float, fitted_on: str,
                      measure: str = "decision_margin_z", x: np.ndarray | None = None,
                      min_history_h: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The card's ``abstention`` block (:class:`vigil.card.AbstentionSpec`) for ``measure``
    (:mod:`vigil.abstain`), its cut-off chosen so that ``share`` of the fitting rows scored at or above ``level``
    (``risk >= level``) are indeterminate. ``min_history_h`` (a version 2 block): rows with fewer hours of the
    stay behind them are indeterminate too; it is stated, not fitted here, and does not move the cut-off.

    >>> m = np.array([[0.5, 0.5], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]); r = m.mean(1) + [0, .1, .2, .3]
    >>> b = fit_member_spread(m, r, 0.5, 0.5, "toy", "member_logit_sd"); round(b["cutoff"], 3), b["measure"]
    (0.626, 'member_logit_sd')
    >>> b = fit_member_spread(m, r, 0.5, 0.5, "toy"); indeterminate_rows(b, r, m).tolist()
    [True, True, False, False]
    """
    from vigil.abstain import coverage, decision_margin_z, member_logit_sd

    alerting = np.asarray(risk, np.float64) >= level
    if not alerting.any():
        msg = "no fitting row is scored at or above the alert level; cannot fit the abstention cut-off"
        raise ValueError(msg)
    if measure == "low_coverage":
        if x is None:
            raise ValueError("the low_coverage measure is fitted on the features (x)")
        values = coverage(x)
        cutoff = float(np.quantile(values[alerting], share))  # the sparsest rows are indeterminate
    elif members is None:
        raise ValueError(f"the {measure} measure is fitted on the member probabilities")
    elif measure == "decision_margin_z":
        values = decision_margin_z(risk, members, level)
        cutoff = float(np.quantile(values[alerting], share))  # the lowest margins are indeterminate
    elif measure == "member_logit_sd":
        values = member_logit_sd(members)
        cutoff = float(np.quantile(values[alerting], 1.0 - share))
    else:
        msg = f"unknown abstention measure {measure!r}"
        raise ValueError(msg)
    block = {
        "version": 1, "measure": measure, "cutoff": cutoff, "level": float(level), "fitted_on": fitted_on,
        "share_of_alerting_rows": share, "members": None if members is None else int(members.shape[1]),
        "rows": int(values.size),
        "alerting_rows": int(alerting.sum()),
    }  # fmt: skip
    if min_history_h is not None:
        block.update(version=2, min_history_h=float(min_history_h))
    block["share_rows_indeterminate"] = float(indeterminate_rows(block, risk, members, x).mean())
    return block


def indeterminate_rows(block: dict[str, Any], risk: np.ndarray, members: np.ndarray | None,
                       x: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The flags serving gives (:class:`vigil.abstain.Abstainer` of the validated block)."""
    from vigil.abstain import Abstainer
    from vigil.card import AbstentionSpec

    ab = Abstainer.from_spec(AbstentionSpec.model_validate(block))
    assert ab is not None
    return ab.flags(np.asarray(risk), None if members is None else np.asarray(members), x)[0]


def flags_frame(scorer: Any, df: Any, chunk_rows: int = 131_072) -> np.ndarray:
    """The indeterminate flag [N] that serving gives every row of ``df`` (:meth:`vigil.scoring.Scorer.predict_flagged`;
    all False when the version has no abstention block)."""
    from vigil.features import featurize, frame_chunks, sequence

    stay_start, chunks = frame_chunks(df, chunk_rows)
    out = np.zeros(stay_start.shape[0], dtype=bool)
    for a, b, inp in chunks:
        _, ind, _ = scorer.predict_flagged(featurize(inp), sequence(inp) if scorer.needs_sequence else None)
        if ind is not None:
            out[a:b] = ind
    return out


def abstention_report(ref: Any, scorer: Any, df: Any, scored: Any, policy: Any) -> dict[str, Any] | None:
    """``vigil evaluate``'s abstention section (None when the card has no ``abstention`` block): the model-risk
    alerts the configured policy raises at the card's alert level (as :func:`vigil.evaluation.report.evaluate`
    simulates them), split into confident and indeterminate (:func:`evaluate_abstention`)."""
    spec = ref.model_card.abstention
    if spec is None:
        return None
    from vigil.evaluation.alerting import simulate_policy, stay_table
    from vigil.evaluation.report import row_units

    flags = flags_frame(scorer, df)
    stays = stay_table(scored.labels, scored.stay_start)
    fired = simulate_policy(
        policy, risk=scored.probs, threshold=ref.alert_level, news2_total=scored.screens["news2_total"],
        stay_start=scored.stay_start, news2_max_part=scored.screens["news2_max_part"], model=ref.name,
        unit=row_units(scored.static, stays.n_rows),
    )["model_risk"]  # fmt: skip
    return {"measure": spec.measure, "cutoff": spec.cutoff, **history_key(spec),
            **evaluate_abstention(fired, flags, scored.labels, scored.stay_start)}  # fmt: skip
