"""Abstention at serving (issue 16, item 4): a score is *indeterminate* when its input lies outside what the
model version was trained on, by the measure in the version's card: too few variables measured recently
(``low_coverage``, shipped with ``sepsis-gbm:1``), or the ensemble members disagreeing about it.

A LightGBM version of several members (``training.members`` > 1; :func:`vigil.training.gbm.to_onnx`) averages
the members' class-1 probabilities in a ``Mean`` node. :func:`with_member_outputs` exposes that node's inputs as
extra graph outputs (in memory; the registered file is not changed), so the member probabilities come out of the
same ONNX Runtime call that computes the score. Their spread — the standard deviation of the members' logits —
is an epistemic-uncertainty measure (an ensemble of seeds, bagging and feature subsampling that agrees on
familiar rows and disagrees on unfamiliar ones). Three measures (``measure`` in the card's block):

* ``decision_margin_z``: the distance of the
  score from the block's alert ``level`` in logits, in units of the members' logit spread,
  ``|logit(p) - logit(level)| / (sd + 0.001)``; indeterminate below ``cutoff`` (the members do not agree that the
  score is clearly on one side of the level). Reason ``members_split_at_level``.
* ``member_logit_sd``: the spread alone; indeterminate above ``cutoff``. Reason ``members_disagree``.
* ``low_coverage`` (shipped with ``sepsis-gbm:1``; measured best at the other unit, docs/evaluation/onboarding.md;
  needs no members, so any version can carry it): the share of the 34 measured variables seen in
  the last 72 h (the featurizer's ``*_hours_since`` below 72); indeterminate below ``cutoff``. Reason
  ``sparse_coverage``.

Beside any measure, a block may set ``min_history_h``: a score of a row with fewer than that many hours of the stay
behind it (the featurizer's ``iculos``) is indeterminate too, reason ``short_history`` (a row flagged by both gives
the measure's reason). ``sepsis-gbm:1`` carries 9 h: with coverage alone the PPV gain of confident alerts fell to
+22-27 % at the other unit of set A (docs/evaluation/onboarding.md, "Abstention at the other unit"); how many hours
of the stay lie behind a row does not depend on a site's charting habits.

The fitted cut-off lives with the model version, in the card's ``abstention`` block
(:class:`vigil.card.AbstentionSpec`, versioned); no block means never indeterminate. Fitting and evaluation are
offline (:mod:`vigil.evaluation.abstention`); this module is what serving needs and imports nothing from
evaluation.

>>> member_logit_sd(np.array([[0.5, 0.5, 0.5], [0.1, 0.5, 0.9]], np.float32)).round(3).tolist()
[0.0, 1.794]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MEASURES", "REASON_MEMBERS_DISAGREE", "REASON_SPLIT_AT_LEVEL", "Abstainer", "logit", "decision_margin_z",
           "member_outputs", "with_member_outputs", "member_logit_sd", "abstain_flags", "scored", "coverage",
           "REASON_SPARSE", "REASON_SHORT_HISTORY", "history_hours"]  # fmt: skip

REASON_MEMBERS_DISAGREE = "members_disagree"
REASON_SPLIT_AT_LEVEL = "members_split_at_level"
REASON_SPARSE = "sparse_coverage"
REASON_SHORT_HISTORY = "short_history"
MEASURES = ("decision_margin_z", "member_logit_sd", "low_coverage")
HOURS_SENTINEL = 72.0  # the featurizer's "not measured in the last 72 h" value of *_hours_since
_EPS = 1e-6
_SD_FLOOR = 1e-3  # logits; keeps the margin finite where the members agree exactly


def member_outputs(model: Any) -> list[str]:
    """The names of the member probabilities averaged by ``model``'s final ``Mean`` node (``[]`` when the graph
    has none, e.g. a single-member version or a Keras model)."""
    final = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "Mean" and any(o in final for o in node.output) and len(node.input) > 1:
            return list(node.input)
    return []


def with_member_outputs(path: Path) -> tuple[bytes, list[str]]:
    """The serialized model at ``path`` with its member probabilities added as outputs, and their names.
    ``ValueError`` when the graph has no members to expose."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    names = member_outputs(model)
    if not names:
        msg = f"{path} has no Mean of member probabilities; the member_logit_sd measure needs several members"
        raise ValueError(msg)
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]))
    return model.SerializeToString(), names


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def member_logit_sd(members: np.ndarray) -> np.ndarray:
    """Per row, the standard deviation (ddof 0) of the members' logits; ``members`` [B, M] probabilities."""
    return logit(members).std(axis=1)


def coverage(x: np.ndarray) -> np.ndarray:
    """Per row of features ``x`` [B, F], the share of the measured variables seen in the last 72 h."""
    from vigil.features import FEATURE_NAMES

    cols = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")]
    return (np.asarray(x)[:, cols] < HOURS_SENTINEL).mean(axis=1)


def history_hours(x: np.ndarray) -> np.ndarray:
    """Per row of features ``x`` [B, F], the hours of the stay behind the row (the ``iculos`` feature).

    >>> from vigil.features import FEATURE_NAMES
    >>> x = np.zeros((2, len(FEATURE_NAMES)), np.float32); x[:, FEATURE_NAMES.index("iculos")] = [3, 40]
    >>> history_hours(x).tolist()
    [3.0, 40.0]
    """
    from vigil.features import FEATURE_NAMES

    return np.asarray(x)[:, FEATURE_NAMES.index("iculos")].astype(np.float64)


def decision_margin_z(p: np.ndarray, members: np.ndarray, level: float) -> np.ndarray:
    """Per row, ``|logit(p) - logit(level)|`` over the members' logit spread (floored at 0.001).

    >>> decision_margin_z(np.array([0.5, 0.9]), np.array([[0.4, 0.6], [0.9, 0.9]]), 0.5).round(2).tolist()
    [0.0, 2197.22]
    """
    return np.abs(logit(p) - logit(np.asarray(level))) / (member_logit_sd(members) + _SD_FLOOR)


@dataclass(frozen=True)
class Abstainer:
    """Applies one card's abstention block: ``flags(members)`` -> (indeterminate bool [B], reason or None each)."""

    measure: str
    cutoff: float
    level: float | None = None  # decision_margin_z: the alert level the margin is measured from
    min_history_h: float | None = None  # rows with fewer hours of the stay behind them are indeterminate too

    @classmethod
    def from_spec(cls, spec: Any) -> Abstainer | None:
        """From a :class:`vigil.card.AbstentionSpec` (or None: no abstention)."""
        if spec is None:
            return None
        if spec.measure not in MEASURES:  # the card schema already restricts it; a guard for hand-made specs
            msg = f"unknown abstention measure {spec.measure!r}; known: {MEASURES}"
            raise ValueError(msg)
        if spec.measure == "decision_margin_z" and spec.level is None:
            msg = "the decision_margin_z abstention measure needs the block's level"
            raise ValueError(msg)
        hist = getattr(spec, "min_history_h", None)
        return cls(measure=spec.measure, cutoff=float(spec.cutoff),
                   level=None if spec.level is None else float(spec.level),
                   min_history_h=None if hist is None else float(hist))  # fmt: skip

    @property
    def needs_members(self) -> bool:
        return self.measure != "low_coverage"

    def flags(self, p: np.ndarray, members: np.ndarray | None, x: np.ndarray | None = None
              ) -> tuple[np.ndarray, list[str | None]]:  # fmt: skip
        """Indeterminate flags [B] and reasons of scores ``p`` [B] with member probabilities ``members`` [B, M]
        (None for ``low_coverage``) and features ``x`` [B, F] (read by ``low_coverage`` and ``min_history_h``).

        >>> from vigil.features import FEATURE_NAMES
        >>> x = np.zeros((3, len(FEATURE_NAMES)), np.float32); x[:, FEATURE_NAMES.index("iculos")] = [2, 30, 30]
        >>> x[2, [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_hours_since")]] = 72.0
        >>> Abstainer("low_coverage", 0.5, min_history_h=9).flags(np.zeros(3), None, x)
        (array([ True, False,  True]), ['short_history', None, 'sparse_coverage'])
        """
        ind, reason = self._measure(p, members, x)
        why: list[str | None] = [reason if f else None for f in ind.tolist()]
        if self.min_history_h is not None:
            if x is None:
                raise ValueError("min_history_h reads the features (iculos)")
            short = history_hours(x) < self.min_history_h
            why = [w or (REASON_SHORT_HISTORY if sh else None) for w, sh in zip(why, short.tolist(), strict=True)]
            ind = ind | short
        return ind, why

    def _measure(self, p: np.ndarray, members: np.ndarray | None, x: np.ndarray | None) -> tuple[np.ndarray, str]:
        if self.measure == "low_coverage":
            if x is None:
                raise ValueError("the low_coverage measure reads the features")
            ind = coverage(x) < self.cutoff
            reason = REASON_SPARSE
        elif members is None:
            raise ValueError(f"the {self.measure} measure reads the member probabilities")
        elif self.measure == "decision_margin_z":
            ind = decision_margin_z(p, members, float(self.level or 0.0)) < self.cutoff
            reason = REASON_SPLIT_AT_LEVEL
        else:
            ind = member_logit_sd(members) > self.cutoff
            reason = REASON_MEMBERS_DISAGREE
        return np.asarray(ind, bool), reason


def scored(sc: Any, x: np.ndarray, seq: np.ndarray | None) -> tuple[np.ndarray, Any, Any]:
    """``sc.predict`` (flags None) for a scorer without an abstention block, else ``sc.predict_flagged``: the
    worker's one call per model and batch (a version without a block keeps the plain scoring path)."""
    if getattr(sc, "abstainer", None) is None:
        return sc.predict(x, seq), None, None
    return sc.predict_flagged(x, seq)  # type: ignore[no-any-return]


def abstain_flags(
    j: int, ind: np.ndarray | None, why: list[str | None] | None, counts: dict[tuple[str, str], int],
    key: tuple[str, str],
) -> dict[tuple[int, int], tuple[bool, str | None]]:  # fmt: skip
    """The indeterminate rows of scorer ``j`` of a batch as ``{(row, j): (True, reason)}`` (rows not in it are
    determinate), adding their number to ``counts[key]`` (``key``: model name and version; the worker's
    ``vigil_scores_indeterminate_total`` counter).

    >>> c = {}; abstain_flags(0, np.array([False, True]), [None, "members_disagree"], c, ("m", "1")), c
    ({(1, 0): (True, 'members_disagree')}, {('m', '1'): 1})
    """
    if ind is None or why is None:
        return {}
    rows = np.flatnonzero(ind).tolist()
    if rows:
        counts[key] = counts.get(key, 0) + len(rows)
    return {(i, j): (True, why[i]) for i in rows}
