"""The API's read model, folded from the ``scores`` and ``alerts`` topics: each pseudonymised patient's latest
risk, alert level in force and NEWS2 (per model), and the open alert episodes. Pure (no Kafka): tests feed it
records directly.

>>> v = View()
>>> v.on_score({"patient": "p1", "ward": "W1", "bed": "3", "unit": "MICU", "time": "2026-01-01T05:00:00+00:00",
...             "row": 5, "partial": False, "model": {"name": "m", "version": "1"}, "risk": 0.6, "threshold": 0.55,
...             "above_threshold": True, "news2": {"total": 6}})
>>> v.patient("p1")["scores"][0]["risk"], v.ward("W1")["patients"][0]["patient"]
(0.6, 'p1')
"""

from __future__ import annotations

from typing import Any

__all__ = ["View"]

OPEN_EVENTS = ("raised", "escalated")
CLOSING_EVENTS = ("resolved",)


class View:
    """Latest score per (patient, model); open alert episodes; where each patient is."""

    def __init__(self, max_patients: int = 100_000) -> None:
        self.scores: dict[str, dict[str, dict[str, Any]]] = {}  # patient -> model -> latest score summary
        self.where: dict[str, dict[str, Any]] = {}  # patient -> ward, bed, unit
        self.open: dict[str, dict[str, Any]] = {}  # episode id -> the latest open alert record
        self.alerts: dict[str, dict[str, Any]] = {}  # alert id -> record (raised/escalated), for acks
        self.max_patients = max_patients

    def on_score(self, rec: dict[str, Any]) -> None:
        patient, model = rec.get("patient"), (rec.get("model") or {}).get("name")
        if not isinstance(patient, str) or not isinstance(model, str):
            return
        mine = self.scores.setdefault(patient, {})
        cur = mine.get(model)
        key = (str(rec.get("time")), rec.get("row", 0), not rec.get("partial", False))
        if cur is not None and key < cur["_key"]:
            return  # an older row arrived late
        news2 = rec.get("news2") or {}
        mine[model] = {
            "model": model, "version": (rec.get("model") or {}).get("version"), "time": rec.get("time"),
            "row": rec.get("row"), "partial": rec.get("partial", False), "risk": rec.get("risk"),
            "alert_level": rec.get("threshold"), "above_alert_level": rec.get("above_threshold"),
            "news2": news2.get("total") if isinstance(news2, dict) else None,
            "news2_parts": news2.get("parts") if isinstance(news2, dict) else None, "_key": key,
        }  # fmt: skip
        self.where[patient] = {"ward": rec.get("ward"), "bed": rec.get("bed"), "unit": rec.get("unit")}
        if len(self.scores) > self.max_patients:  # bounded: the oldest patients go first
            oldest = next(iter(self.scores))
            self.scores.pop(oldest, None)
            self.where.pop(oldest, None)

    def on_alert(self, rec: dict[str, Any]) -> None:
        episode, event = rec.get("episode_id"), rec.get("event")
        if not isinstance(episode, str):
            return
        if event in OPEN_EVENTS:
            self.open[episode] = rec
            if isinstance(rec.get("alert_id"), str):
                self.alerts[rec["alert_id"]] = rec
        elif event in CLOSING_EVENTS or (event == "acknowledged" and (rec.get("ack") or {}).get("action")
                                         in ("dismissed", "treated")):  # fmt: skip
            self.open.pop(episode, None)
        elif event == "acknowledged" and episode in self.open:
            self.open[episode] = {**self.open[episode], "ack": rec.get("ack")}

    @staticmethod
    def _public(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if not k.startswith("_")}

    def patient(self, patient: str) -> dict[str, Any] | None:
        if patient not in self.scores:
            return None
        return {"patient": patient, **self.where.get(patient, {}),
                "scores": [self._public(s) for s in self.scores[patient].values()],
                "open_alerts": [a for a in self.open.values() if a.get("patient") == patient]}  # fmt: skip

    def ward(self, ward: str) -> dict[str, Any]:
        patients = [self.patient(p) for p, w in self.where.items() if w.get("ward") == ward]
        rows = [p for p in patients if p is not None]
        rows.sort(key=lambda p: -max((s["risk"] or 0.0) for s in p["scores"]) if p["scores"] else 0.0)
        return {"ward": ward, "patients": rows, "open_alerts": sum(len(p["open_alerts"]) for p in rows)}

    def open_alerts(self, ward: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.open.values() if ward is None or a.get("ward") == ward]
