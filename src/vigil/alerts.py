"""Alert identities and messages. The stage that decides when to alert is :mod:`vigil.alerting`.

Alert ids are deterministic — the same patient, alert type, model version, row and event always give
the same id — so a replay or a crash-and-recover never produces a different or an extra alert id for
the same decision; subscribers de-duplicate on it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vigil.alerting.rules import Decision

__all__ = ["alert_id", "score_id", "alert_message", "NEWS2_URGENT"]

NEWS2_URGENT = 5

_LABELS = {
    "model_risk": "Sepsis risk",
    "news2_urgent": "NEWS2 urgent",
    "news2_emergency": "NEWS2 emergency",
    "news2_single": "NEWS2 single parameter scoring 3",
}


def _hid(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def alert_id(patient: str, kind: str, model_version: str, row: int, event: str = "raised") -> str:
    """Deterministic alert id (``kind`` is the policy key: the type, plus the model name for model risk).

    >>> alert_id("pt-1", "news2_emergency", "-", 12) == alert_id("pt-1", "news2_emergency", "-", 12, "raised")
    True
    >>> alert_id("pt-1", "news2_emergency", "-", 12) != alert_id("pt-1", "news2_emergency", "-", 12, "resolved")
    True
    """
    if event == "raised":
        return _hid("alert", patient, kind, model_version, row)
    return _hid("alert", patient, kind, model_version, row, event)


def score_id(patient: str, model: str, version: str, row: int, partial: bool) -> str:
    return _hid("score", patient, model, version, row, int(partial))


def alert_message(
    d: Decision, *, risk: float, threshold: float, news2: dict[str, Any], factors: list[dict[str, Any]],
    onset: tuple[int, float] | None = None,
) -> str:
    """One line for the care team: what, how high, and why (the model's top factors, or the NEWS2 parts).
    ``onset``: (hours, calibrated probability of sepsis onset within them), quoted beside the model's score,
    which is a ranking and not a probability.

    >>> from vigil.alerting import Decision
    >>> d = Decision("raised", "model_risk", "model_risk:m", "high", 0.71, 0.58, 12, 0.0, "12")
    >>> alert_message(d, risk=0.71, threshold=0.58, news2={"total": 6, "parts": {}},
    ...               factors=[{"text": "temperature 39.2 °C, up from 37.1 5 h ago"}])
    'Sepsis risk 0.710 (alert level 0.580); NEWS2 6. Top factors: temperature 39.2 °C, up from 37.1 5 h ago'
    >>> alert_message(d, risk=0.71, threshold=0.58, news2={"total": 6, "parts": {}}, factors=[], onset=(12, 0.094))
    'Sepsis risk 0.710 (alert level 0.580; ~9 % chance of sepsis onset within 12 h); NEWS2 6'
    """
    label = _LABELS.get(d.kind, d.kind)
    if d.event == "resolved":
        return f"{label} resolved: {d.value:.3g} below the clear level (alert level {d.raise_at:.3g})"
    prefix = "Escalation: " if d.event == "escalated" else ""
    if d.kind == "model_risk":
        why = "; ".join(f["text"] for f in factors)
        tail = f". Top factors: {why}" if why else ""
        level = f"alert level {d.raise_at:.3f}"  # the level in force (vigil.levels), never the card's threshold
        if onset is not None:
            pct = 100 * onset[1]
            level += f"; ~{pct:.0f} % chance of sepsis onset within {onset[0]} h" if pct >= 1 else (
                f"; <1 % chance of sepsis onset within {onset[0]} h")  # fmt: skip
        return f"{prefix}{label} {risk:.3f} ({level}); NEWS2 {news2['total']}{tail}"
    parts = ", ".join(f"{k} {v}" for k, v in news2["parts"].items() if v)
    return f"{prefix}{label}: NEWS2 {news2['total']} ({parts})"
