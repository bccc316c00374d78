"""First alert rules: model risk over the model card's threshold, and NEWS2 at the emergency threshold.

An alert is raised when a condition starts (crossing), not on every row it persists; it re-arms once
the condition has cleared (model risk below ``rearm_below_fraction`` x threshold; NEWS2 below the urgent
band, 5). Alert ids are deterministic — the same patient, type, model version and row always give the
same id — so a replay or a crash-and-recover never produces a different alert id for the same event.
(The alert-policy issue adds persistence, refractory windows, escalation and acknowledgements.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["AlertRules", "alert_id", "score_id"]

NEWS2_URGENT = 5


def _hid(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def alert_id(patient: str, kind: str, model_version: str, row: int) -> str:
    """Deterministic alert id.

    >>> alert_id("pt-1", "news2_emergency", "-", 12) == alert_id("pt-1", "news2_emergency", "-", 12)
    True
    """
    return _hid("alert", patient, kind, model_version, row)


def score_id(patient: str, model: str, version: str, row: int, partial: bool) -> str:
    return _hid("score", patient, model, version, row, int(partial))


@dataclass(frozen=True, slots=True)
class AlertRules:
    news2_emergency: int = 7
    rearm_below_fraction: float = 0.8

    def evaluate(
        self,
        active: dict[str, bool],
        *,
        risk: float,
        threshold: float,
        model_key: str,
        news2_total: int,
    ) -> list[tuple[str, str]]:
        """Update ``active`` (alert type -> raised) and return the (type, severity) pairs to raise now."""
        raised: list[tuple[str, str]] = []
        key = f"model_risk:{model_key}"
        if risk >= threshold:
            if not active.get(key):
                active[key] = True
                raised.append(("model_risk", "high"))
        elif risk < self.rearm_below_fraction * threshold:
            active[key] = False
        if news2_total >= self.news2_emergency:
            if not active.get("news2_emergency"):
                active["news2_emergency"] = True
                raised.append(("news2_emergency", "emergency"))
        elif news2_total < NEWS2_URGENT:
            active["news2_emergency"] = False
        return raised


def alert_message(kind: str, *, risk: float, threshold: float, news2: dict[str, Any]) -> str:
    if kind == "model_risk":
        return f"Sepsis risk {risk:.3f} at or above the operating threshold {threshold:.3f}; NEWS2 {news2['total']}"
    parts = ", ".join(f"{k} {v}" for k, v in news2["parts"].items() if v)
    return f"NEWS2 {news2['total']} (emergency threshold): {parts}"
