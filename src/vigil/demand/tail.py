"""``vigil demand tail``: the ``resource-demand`` topic for a terminal, one line per forecast or capacity alert.

For integration engineers wiring a bed board and for bed managers without Grafana. Records name wards and
resources only (the topic never carries a patient).

>>> f = {"kind": "forecast", "time": "2026-01-01T20:00:00Z", "ward": "ICU-MED", "resource": "sepsis_bundle",
...      "horizon_h": 12, "expected": 1.64, "intervals": {"0.5": [1, 2], "0.9": [0, 4]}, "capacity": 3,
...      "p_exceed_capacity": 0.12, "patients": 55, "treated": 1}
>>> print(format_demand(f))
2026-01-01 20:00:00+00:00  ICU-MED     sepsis_bundle          12 h  expected  1.64  50% [1, 2]  90% [0, 4]  \
P(> 3) 0.120  55 patients, 1 treated
>>> a = {"kind": "capacity_alert", "event": "raised", "time": "2026-01-01T20:00:00Z", "ward": "ICU-MED",
...      "resource": "sepsis_bundle", "horizon_h": 12, "expected": 1.64, "capacity": 1, "p_exceed_capacity": 0.31,
...      "level": 0.25}
>>> print(format_demand(a))
2026-01-01 20:00:00+00:00  ICU-MED     sepsis_bundle          12 h  CAPACITY ALERT RAISED  P(> 1) 0.310 >= 0.25  \
expected 1.64
>>> print(format_demand({**a, "event": "resolved", "reason": "ward_empty", "capacity": None, "expected": 0.0}))
2026-01-01 20:00:00+00:00  ICU-MED     sepsis_bundle          12 h  CAPACITY ALERT RESOLVED (ward empty)  capacity \
unknown  expected 0.00
>>> DemandFilter.of(wards=["icu-med"], alerts_only=True).matches(f), DemandFilter.of(horizons=[12]).matches(a)
(False, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vigil.subscribers.tail import format_time

__all__ = ["DemandFilter", "format_demand"]


@dataclass(frozen=True)
class DemandFilter:
    """Which ``resource-demand`` records to show (empty sets: all)."""

    wards: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    horizons: frozenset[int] = frozenset()
    alerts_only: bool = False

    @classmethod
    def of(cls, wards: Iterable[str] = (), resources: Iterable[str] = (), horizons: Iterable[int] = (),
           alerts_only: bool = False) -> DemandFilter:  # fmt: skip
        return cls(frozenset(w.casefold() for w in wards), frozenset(resources), frozenset(int(h) for h in horizons),
                   alerts_only)  # fmt: skip

    def matches(self, rec: Mapping[str, Any]) -> bool:
        if self.alerts_only and rec.get("kind") != "capacity_alert":
            return False
        if self.wards and str(rec.get("ward", "")).casefold() not in self.wards:
            return False
        if self.resources and rec.get("resource") not in self.resources:
            return False
        return not self.horizons or rec.get("horizon_h") in self.horizons


def _num(x: Any, digits: int) -> str:
    return "-" if not isinstance(x, int | float) else f"{x:.{digits}f}"


def format_demand(rec: Mapping[str, Any]) -> str:
    """One line: time, ward, resource, horizon, then the forecast (expected count, 50/90 % intervals, P(demand >
    capacity), patients) or the capacity alert (event, P(exceed) against the level)."""
    head = f"{format_time(rec.get('time'))}  {str(rec.get('ward', '?')):<10}  {str(rec.get('resource', '?')):<21}  " \
           f"{rec.get('horizon_h', '?'):>2} h"  # fmt: skip
    cap = rec.get("capacity")
    exceed = f"P(> {cap}) {_num(rec.get('p_exceed_capacity'), 3)}" if cap is not None else "capacity unknown"
    if rec.get("kind") == "capacity_alert":
        event = str(rec.get("event", "")).upper()
        state = f"{exceed} >= {rec.get('level')}" if event == "RAISED" else exceed
        why = f" ({str(rec['reason']).replace('_', ' ')})" if event != "RAISED" and rec.get("reason") else ""
        return f"{head}  CAPACITY ALERT {event}{why}  {state}  expected {_num(rec.get('expected'), 2)}"
    iv = rec.get("intervals") or {}
    parts = [f"{100 * float(lv):g}% [{iv[lv][0]}, {iv[lv][1]}]" for lv in ("0.5", "0.9") if lv in iv]
    treated = f", {rec['treated']} treated" if rec.get("treated") else ""
    return (f"{head}  expected {_num(rec.get('expected'), 2):>5}  {'  '.join(parts)}  {exceed}  "
            f"{rec.get('patients', '?')} patients{treated}")  # fmt: skip
