"""Per-patient probabilities of needing a resource within h hours, fitted on validation data.

Two maps per horizon, stored together as one JSON file (``demand_calibration.json``, written by
``vigil demand calibrate`` and read by the job and the backtest):

* ``sepsis_onset``: the serving model's risk score -> P(onset in (t, t+h] | not septic at t). Isotonic
  regression (pool-adjacent-violators, numpy): the rows, sorted by score, are grouped into bins of at least
  ``min_bin_rows`` rows (equal scores never split), PAV pools adjacent bins until the bin frequencies are
  non-decreasing; the map is the block's frequency over each block's score range (so it reproduces the
  fitted frequencies exactly), linear in the gaps between blocks, flat beyond the end points.
* ``news2_emergency``: the current NEWS2 total -> P(NEWS2 >= 7 at some row in (t, t+h]), the frequency per
  total (rows and positives are stored, so a rule group ``total >= k`` can be pooled for any ``k``). Not
  forced monotone: on PhysioNet a total of 0 often means unmeasured, and it is riskier than a total of 1.
* ``news2_history`` (optional; files without it use the table above): the same probability by the current
  total *and* the highest total of the last ``window_h`` hourly rows (this one included): a patient at 4 now
  who was at 9 three hours ago is far likelier to reach 7 again than one who has been at 4 all day. The
  frequency of each (current, recent maximum) cell, shrunk towards the current total's frequency with
  ``prior_rows`` pseudo-rows, so a sparse cell falls back to the one-dimensional table.

A patient present but not yet scored gets the horizon's base rate (the frequency over all risk-set rows).

``news2_model`` (optional; used instead of ``news2_history`` when present): per horizon, a logistic model of
NEWS2 >= 7 within h on the NEWS2 course of the last 24 h (:mod:`vigil.demand.news2_model`).

``ward_effect`` (optional): per need and horizon, the standard deviation of a shared log-odds effect of the
patients of one ward at one time (:func:`vigil.demand.poisson_binomial.distribution`), fitted by maximum
likelihood on the validation split replayed as wards (:mod:`vigil.demand.dispersion`). 0 or absent: patients
independent.

>>> cal = Calibration.synthetic()
>>> cal.probabilities("sepsis_onset", 12, risk=np.array([0.0, 0.5, 1.0]), news2=np.array([0, 3, 9])).tolist()
[0.0, 0.25, 0.5]
>>> cal.probabilities("news2_emergency", 12, risk=np.array([0.1, np.nan]), news2=np.array([9, -1]),
...                   rule_at=7, rule_p=0.9).tolist()
[0.9, 0.1]
>>> cal.probabilities("news2_emergency", 12, risk=np.array([0.1, 0.1]), news2=np.array([2, 2]),
...                   news2_max=np.array([2, 9])).round(3).tolist()  # same total now, higher recent maximum
[0.2, 0.38]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vigil.demand.labels import NEEDS
from vigil.demand.news2_model import News2Model
from vigil.errors import ConfigError
from vigil.onset import CALIBRATION_FILE, FORMAT, IsotonicMap, check_format, read_calibration_doc

__all__ = [
    "CALIBRATION_FILE", "Calibration", "IsotonicMap", "News2Table", "News2HistoryTable", "isotonic_fit", "pav",
    "reliability", "NEWS2_MAX", "HISTORY_WINDOW_H",
]  # fmt: skip

NEWS2_MAX = 20
HISTORY_WINDOW_H = 12  # the recent maximum of news2_history: this row and the 11 before it


def pav(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing sequence closest to ``values`` in weighted least squares.

    >>> pav(np.array([0.1, 0.3, 0.2, 0.4]), np.array([1.0, 1.0, 1.0, 2.0])).tolist()
    [0.1, 0.25, 0.25, 0.4]
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    means: list[float] = []
    wsum: list[float] = []
    size: list[int] = []
    for vi, wi in zip(v.tolist(), w.tolist(), strict=True):
        means.append(vi)
        wsum.append(wi)
        size.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, s2 = means.pop(), wsum.pop(), size.pop()
            total = wsum[-1] + w2
            means[-1] = (means[-1] * wsum[-1] + m2 * w2) / total if total > 0 else means[-1]
            wsum[-1] = total
            size[-1] += s2
    return np.repeat(np.asarray(means), np.asarray(size, dtype=np.int64))


def isotonic_fit(x: np.ndarray, y: np.ndarray, min_bin_rows: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(xs, ys)`` of the monotone map (see the module docstring); ``ys`` is non-decreasing.

    >>> xs, ys = isotonic_fit(np.repeat([0.1, 0.2, 0.3], 4), np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1]), 4)
    >>> xs.tolist(), ys.tolist()  # frequencies 0.5, 0.25, 0.75: the first two are pooled
    ([0.1, 0.2, 0.3], [0.375, 0.375, 0.75])
    """
    xv = np.asarray(x, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    if xv.shape != yv.shape or xv.ndim != 1 or not xv.size:
        msg = "isotonic_fit needs two non-empty 1-d arrays of the same length"
        raise ValueError(msg)
    order = np.argsort(xv, kind="stable")
    xs, ys = xv[order], yv[order]
    uniq, start, counts = np.unique(xs, return_index=True, return_counts=True)
    group_y = np.add.reduceat(ys, start)
    bin_of_group = start // max(int(min_bin_rows), 1)  # equal scores stay in one bin
    _, bstart = np.unique(bin_of_group, return_index=True)
    w = np.add.reduceat(counts.astype(np.float64), bstart)
    sy = np.add.reduceat(group_y, bstart)
    lo, hi = np.minimum.reduceat(uniq, bstart), np.maximum.reduceat(uniq, bstart)
    fitted = pav(sy / w, w)
    # each pooled block contributes its lowest and highest score at the block's frequency
    block = np.concatenate([[0], np.cumsum(np.diff(fitted) != 0)])
    _, first = np.unique(block, return_index=True)
    last = np.append(first[1:], block.size) - 1
    ky = np.bincount(block, weights=sy) / np.bincount(block, weights=w)
    kx = np.column_stack([lo[first], hi[last]]).reshape(-1)
    ky = np.repeat(ky, 2)
    keep = np.append(True, np.diff(kx) > 0)  # a block of one score value gives one knot
    return kx[keep], np.maximum.accumulate(ky[keep])


@dataclass(frozen=True)
class News2Table:
    """Rows and positives per NEWS2 total 0..20 for one horizon."""

    rows: np.ndarray
    positives: np.ndarray
    base_rate: float

    def rates(self, rule_at: int | None = None, rule_p: float | None = None) -> np.ndarray:
        """The probability per total 0..20: the frequency (the base rate where a total was never seen);
        totals >= ``rule_at`` get ``rule_p``, or the pooled frequency of that group when ``rule_p`` is None."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(self.rows > 0, self.positives / np.maximum(self.rows, 1), self.base_rate)
        if rule_at is not None:
            k = min(max(int(rule_at), 0), NEWS2_MAX)
            rows, pos = self.rows[k:].sum(), self.positives[k:].sum()
            out[k:] = rule_p if rule_p is not None else (pos / rows if rows > 0 else self.base_rate)
        return np.asarray(out, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"rows_by_total": [int(v) for v in self.rows], "positives_by_total": [int(v) for v in self.positives],
                "base_rate": self.base_rate}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> News2Table:
        rows = np.asarray(d["rows_by_total"], dtype=np.float64)
        pos = np.asarray(d["positives_by_total"], dtype=np.float64)
        if rows.shape != (NEWS2_MAX + 1,) or pos.shape != rows.shape or np.any(pos > rows) or np.any(pos < 0):
            msg = f"news2_emergency tables need {NEWS2_MAX + 1} row and positive counts (positives <= rows)"
            raise ValueError(msg)
        return cls(rows, pos, float(d["base_rate"]))


@dataclass(frozen=True)
class News2HistoryTable:
    """Rows and positives per (current total, highest total of the last ``window_h`` rows), 21 x 21, for one
    horizon; :meth:`rates` shrinks each cell towards the current total's frequency (``margin``)."""

    rows: np.ndarray
    positives: np.ndarray
    window_h: int = HISTORY_WINDOW_H
    prior_rows: float = 50.0

    def rates(self, margin: np.ndarray) -> np.ndarray:
        """``(pos + m x margin[current]) / (rows + m)`` per cell: the 21 x 21 probabilities."""
        m = float(self.prior_rows)
        prior = np.asarray(margin, dtype=np.float64)[:, None]
        return np.asarray((self.positives + m * prior) / (self.rows + m), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"window_h": int(self.window_h), "prior_rows": float(self.prior_rows),
                "rows": self.rows.astype(np.int64).tolist(),
                "positives": self.positives.astype(np.int64).tolist()}  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> News2HistoryTable:
        rows = np.asarray(d["rows"], dtype=np.float64)
        pos = np.asarray(d["positives"], dtype=np.float64)
        shape = (NEWS2_MAX + 1, NEWS2_MAX + 1)
        if rows.shape != shape or pos.shape != shape or np.any(pos > rows) or np.any(pos < 0):
            msg = f"news2_history tables need {shape[0]} x {shape[1]} row and positive counts (positives <= rows)"
            raise ValueError(msg)
        window, prior = int(d["window_h"]), float(d["prior_rows"])
        if window < 1 or prior <= 0:
            msg = "news2_history needs window_h >= 1 and prior_rows > 0"
            raise ValueError(msg)
        return cls(rows, pos, window, prior)


@dataclass(frozen=True)
class Calibration:
    """The fitted maps of one model version, by horizon (hours)."""

    model: str
    version: str
    sepsis: dict[int, IsotonicMap]
    news2: dict[int, News2Table]
    meta: dict[str, Any] = field(default_factory=dict)
    news2_history: dict[int, News2HistoryTable] = field(default_factory=dict)
    ward_effect: dict[str, dict[int, float]] = field(default_factory=dict)
    news2_model: dict[int, News2Model] = field(default_factory=dict)

    def ward_sd(self, need: str, horizon_h: float) -> float:
        """The shared ward effect's standard deviation for ``need`` over ``horizon_h`` (0: none fitted)."""
        return float(self.ward_effect.get(need, {}).get(int(horizon_h), 0.0))

    @property
    def history_window_h(self) -> int | None:
        """The recent-maximum window of :attr:`news2_history` (None: the file has no history tables)."""
        return next((t.window_h for t in self.news2_history.values()), None)

    @property
    def uses_news2_course(self) -> bool:
        """The NEWS2 probabilities need each patient's recent rows (history tables or the logistic model)."""
        return bool(self.news2_history or self.news2_model)

    @property
    def horizons(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.sepsis) & set(self.news2)))

    def check(self, horizons: Sequence[float]) -> None:
        """Raise :class:`ConfigError` unless every configured horizon was fitted."""
        missing = [h for h in horizons if float(h) not in {float(x) for x in self.horizons}]
        if missing:
            msg = (f"demand horizons {missing} h are not in the calibration of {self.model}:{self.version} "
                   f"(fitted: {list(self.horizons)} h); refit with `vigil demand calibrate --horizon ...`")  # fmt: skip
            raise ConfigError(msg)

    def base_rate(self, need: str, horizon_h: float) -> float:
        h = int(horizon_h)
        return self.sepsis[h].base_rate if need == "sepsis_onset" else self.news2[h].base_rate

    def probabilities(
        self, need: str, horizon_h: float, *, risk: np.ndarray, news2: np.ndarray,
        news2_max: np.ndarray | None = None, news2_features: np.ndarray | None = None, rule_at: int | None = None,
        rule_p: float | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Per patient: P(needs it within ``horizon_h``). ``risk`` NaN = not scored yet (the base rate);
        ``news2`` < 0 = unknown. ``news2_max``: the highest total of the last :attr:`history_window_h` rows
        (< 0 = unknown; used by ``news2_emergency`` when the file has history tables); ``news2_features``: the
        rows of :func:`vigil.demand.news2_model.history_features` (used, ahead of the tables, when the file has
        a logistic model; rows of NaN = unknown). With ``rule_at``, a NEWS2
        total >= ``rule_at`` gives ``rule_p`` (for ``news2_emergency`` a missing ``rule_p`` is the rule group's
        fitted frequency)."""
        if need not in NEEDS:
            msg = f"unknown need {need!r}; one of {', '.join(NEEDS)}"
            raise ConfigError(msg)
        h = int(horizon_h)
        r = np.asarray(risk, dtype=np.float64)
        n2 = np.asarray(news2, dtype=np.int64)
        scored = np.isfinite(r)
        if need == "sepsis_onset":
            m = self.sepsis[h]
            out = np.where(scored, m(np.where(scored, r, 0.0)), m.base_rate)
            if rule_at is not None and rule_p is not None:
                out = np.where(scored & (n2 >= rule_at), rule_p, out)
            return np.asarray(out, dtype=np.float64)
        t = self.news2[h]
        rates = t.rates(rule_at, rule_p)
        known = scored & (n2 >= 0)
        cur = np.clip(n2, 0, NEWS2_MAX)
        out = np.where(known, rates[cur], t.base_rate)
        model = self.news2_model.get(h)
        if model is not None and news2_features is not None:
            feats = np.asarray(news2_features, dtype=np.float64).reshape(cur.shape[0], model.weights.shape[0])
            use = known & np.all(np.isfinite(feats), axis=1)
            if rule_at is not None:
                use &= n2 < rule_at  # the rule group keeps the rule's probability
            if use.any():
                out = np.where(use, model(np.where(use[:, None], feats, 0.0)), out)
            return np.asarray(out, dtype=np.float64)
        hist = self.news2_history.get(h)
        if hist is not None and news2_max is not None:
            mx = np.asarray(news2_max, dtype=np.int64)
            use = known & (mx >= 0)
            if rule_at is not None:
                use &= n2 < rule_at  # the rule group keeps the rule's probability
            grid = hist.rates(t.rates())
            out = np.where(use, grid[cur, np.clip(np.maximum(mx, cur), 0, NEWS2_MAX)], out)
        return np.asarray(out, dtype=np.float64)

    # ------------------------------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1, "format": FORMAT, "model": {"name": self.model, "version": self.version}, **self.meta,
            "horizons_h": list(self.horizons),
            "sepsis_onset": {str(h): m.to_json() for h, m in sorted(self.sepsis.items())},
            "news2_emergency": {str(h): t.to_json() for h, t in sorted(self.news2.items())},
            **({"news2_history": {str(h): t.to_json() for h, t in sorted(self.news2_history.items())}}
               if self.news2_history else {}),
            **({"ward_effect": {need: {str(h): float(v) for h, v in sorted(by_h.items())}
                                for need, by_h in sorted(self.ward_effect.items())}} if self.ward_effect else {}),
            **({"news2_model": {str(h): m.to_json() for h, m in sorted(self.news2_model.items())}}
               if self.news2_model else {}),
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "calibration") -> Calibration:
        try:
            check_format(d)
            sepsis = {int(h): IsotonicMap.from_json(m) for h, m in d["sepsis_onset"].items()}
            news2 = {int(h): News2Table.from_json(t) for h, t in d["news2_emergency"].items()}
            hist = {int(h): News2HistoryTable.from_json(t) for h, t in (d.get("news2_history") or {}).items()}
            if len({t.window_h for t in hist.values()}) > 1:
                msg = "news2_history tables of one file must share window_h"
                raise ValueError(msg)
            effect = {str(need): {int(h): float(v) for h, v in by_h.items()}
                      for need, by_h in (d.get("ward_effect") or {}).items()}  # fmt: skip
            if set(effect) - set(NEEDS) or any(not 0.0 <= v <= 5.0 for by_h in effect.values() for v in by_h.values()):
                msg = f"ward_effect needs keys among {NEEDS} and standard deviations in [0, 5]"
                raise ValueError(msg)
            models = {int(h): News2Model.from_json(m) for h, m in (d.get("news2_model") or {}).items()}
            known = ("v", "format", "model", "horizons_h", "sepsis_onset", "news2_emergency", "news2_history",
                     "ward_effect", "news2_model")  # fmt: skip
            meta = {k: v for k, v in d.items() if k not in known}
            return cls(str(d["model"]["name"]), str(d["model"]["version"]), sepsis, news2, meta, hist, effect, models)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = f"{source}: bad demand calibration: {type(exc).__name__}: {exc}"
            raise ConfigError(msg) from exc

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_json(read_calibration_doc(path), str(path))

    @classmethod
    def synthetic(cls, horizons: Sequence[int] = (6, 12, 24), model: str = "m", version: str = "1") -> Calibration:
        """A hand-made calibration for tests and examples: risk r -> r/2 for every horizon; NEWS2 tables with
        frequency total/10 (capped at 1) and base rate 0.1."""
        rows = np.full(NEWS2_MAX + 1, 100.0)
        pos = np.minimum(np.arange(NEWS2_MAX + 1) * 10.0, 100.0)
        # history: 50 rows per cell, positives 0.1 x (current + recent maximum)/2 of them
        grid = np.add.outer(np.arange(NEWS2_MAX + 1), np.arange(NEWS2_MAX + 1)) / 2.0
        hrows = np.full((NEWS2_MAX + 1, NEWS2_MAX + 1), 50.0)
        hpos = np.round(np.minimum(grid * 5.0, 50.0))
        return cls(model, version, {h: IsotonicMap(np.array([0.0, 1.0]), np.array([0.0, 0.5]), 0.05) for h in horizons},
                   {h: News2Table(rows, pos, 0.1) for h in horizons}, {"fitted_on": {"data": "synthetic"}},
                   {h: News2HistoryTable(hrows, hpos) for h in horizons})  # fmt: skip


def reliability(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Equal-count bins of the predicted probability: mean predicted vs observed frequency per bin, and the
    expected calibration error (row-weighted mean |predicted - observed|).

    >>> r = reliability(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 1]), n_bins=2)
    >>> [(b["mean_predicted"], b["observed"]) for b in r["bins"]], round(r["ece"], 3)
    ([(0.1, 0.0), (0.9, 1.0)], 0.1)
    """
    pv = np.asarray(p, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    if not pv.size:
        return {"bins": [], "ece": None, "rows": 0, "mean_predicted": None, "observed": None}
    order = np.argsort(pv, kind="stable")
    bins = []
    ece = 0.0
    for chunk in np.array_split(order, min(n_bins, pv.size)):
        mp, ob = float(pv[chunk].mean()), float(yv[chunk].mean())
        bins.append({"n": int(chunk.size), "mean_predicted": mp, "observed": ob})
        ece += chunk.size * abs(mp - ob)
    return {"bins": bins, "ece": ece / pv.size, "rows": int(pv.size), "mean_predicted": float(pv.mean()),
            "observed": float(yv.mean())}  # fmt: skip


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
