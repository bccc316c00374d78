"""Live verification: once a forecast's horizon has passed, how many of its patients did need the resource?

The demand job can check the forecasts of needs it observes itself: ``news2_emergency`` (NEWS2 >= 7), whose
outcome arrives on ``scores`` with each completed row's NEWS2 total. Sepsis onsets are not observable live (no
label), so ``sepsis_onset`` forecasts are not verified here; the backtest does that offline.

A tracked forecast made at event time ``T`` for ``h`` hours holds its patients (the risk set at ``T``). A
patient counts as having needed it when a completed row starting in ``[T, T + h)`` has NEWS2 >= 7 (the rows
of the next ``h`` hours, as in :func:`vigil.demand.labels.news2_within`); a patient who leaves counts as not
needing it, like the backtest's stay ends. The forecast is settled when the watermark passes ``T + h`` plus
one row (the last row must be complete). Each settled forecast adds to the ``vigil_demand_verified_*``
counters of :class:`vigil.metrics.DemandMetrics`: forecasts, the sums of expected and realised counts and of
``|realised - expected|``, and per interval level how often the realised count fell inside and the probability
the forecast gave that interval. On a dashboard: observed / expected (calibration in the large), the MAE, and
the share inside each interval against the forecast's own mass (they should agree).

>>> from vigil.demand.poisson_binomial import distribution
>>> from vigil.metrics import DemandMetrics
>>> v = Verifier(DemandMetrics(), levels=(0.9,))
>>> d = distribution([0.5, 0.5])
>>> v.track(("W", "critical_care_review", 6), 0.0, 6, ["p1", "p2"], d, {0.9: d.interval(0.9)})
>>> v.on_news2("p1", 3600.0, 8), v.on_news2("p2", 6 * 3600.0, 9)  # p2's row starts after the horizon
(1, 0)
>>> v.settle(6 * 3600.0), v.settle(7 * 3600.0)
(0, 1)
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vigil.demand.labels import NEWS2_EMERGENCY
from vigil.demand.poisson_binomial import CountDistribution
from vigil.metrics import DemandMetrics

__all__ = ["Verifier", "VERIFIABLE_NEEDS"]

VERIFIABLE_NEEDS = ("news2_emergency",)  # needs whose outcome the job sees on its inputs
ROW_S = 3600.0


@dataclass
class _Pending:
    key: tuple[str, str, int]  # ward, resource, horizon (h)
    start: float
    end: float
    patients: frozenset[str]
    dist: CountDistribution
    intervals: Mapping[float, tuple[int, int]]
    hit: set[str] = field(default_factory=set)


class Verifier:
    """Pending forecasts, the NEWS2 >= 7 rows of their patients, and the counters of the settled ones."""

    def __init__(self, metrics: DemandMetrics, levels: Iterable[float] = (0.5, 0.9, 0.95)) -> None:
        self.metrics = metrics
        self.levels = tuple(levels)
        self._due: list[tuple[float, int, _Pending]] = []  # heap by settle time
        self._order = itertools.count()
        self._by_patient: dict[str, list[_Pending]] = {}

    def track(self, key: tuple[str, str, int], t: float, horizon_h: float, patients: Iterable[str],
              dist: CountDistribution, intervals: Mapping[float, tuple[int, int]]) -> None:  # fmt: skip
        """Remember a forecast made at event time ``t`` over ``patients`` (its risk set)."""
        pend = _Pending(key, t, t + horizon_h * ROW_S, frozenset(patients), dist, dict(intervals))
        heapq.heappush(self._due, (pend.end + ROW_S, next(self._order), pend))
        for p in pend.patients:
            self._by_patient.setdefault(p, []).append(pend)

    def on_news2(self, patient: str, row_start: float, total: int) -> int:
        """A completed row's NEWS2 total; returns how many pending forecasts it counts for."""
        if total < NEWS2_EMERGENCY:
            return 0
        n = 0
        for pend in self._by_patient.get(patient, ()):
            if pend.start <= row_start < pend.end and patient not in pend.hit:
                pend.hit.add(patient)
                n += 1
        return n

    def settle(self, now: float) -> int:
        """Score every forecast whose horizon (and last row) has passed by event time ``now``; returns how many."""
        n = 0
        while self._due and self._due[0][0] <= now:
            _, _, pend = heapq.heappop(self._due)
            self._record(pend)
            for p in pend.patients:
                mine = self._by_patient.get(p)
                if mine is not None:
                    mine.remove(pend)
                    if not mine:
                        del self._by_patient[p]
            n += 1
        return n

    def _record(self, pend: _Pending) -> None:
        m, labels = self.metrics, (pend.key[0], pend.key[1], str(pend.key[2]))
        y, expected = len(pend.hit), pend.dist.mean
        m.verified.labels(*labels).inc()
        m.verified_expected.labels(*labels).inc(expected)
        m.verified_observed.labels(*labels).inc(y)
        m.verified_abs_error.labels(*labels).inc(abs(y - expected))
        for lv in self.levels:
            lo, hi = pend.intervals[lv]
            level = f"{lv:g}"
            if lo <= y <= hi:
                m.verified_inside.labels(*labels, level).inc()
            m.verified_mass.labels(*labels, level).inc(pend.dist.mass(lo, hi))
