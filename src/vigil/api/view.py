"""The API's in-memory view, built from the ``adt``, ``scores``, ``alerts``, ``alert-acks`` and ``audit`` topics:
per patient the ward/bed, the latest score of each model, the latest NEWS2 and the open alert episodes; the
acknowledgements and audit entries already recorded (so a repeated acknowledgement publishes nothing).

Bounded: at most ``max_patients`` patients (the least recently updated is evicted, and counted) and
``max_alerts`` alert ids and acknowledgements. Records that cannot be read are skipped and counted by topic
and reason; nothing about them is logged but their partition and offset.

>>> v = View(max_patients=2, max_alerts=10)
>>> v.apply_score({"patient": "pt-1", "ward": "W1", "time": "2026-01-01T05:00:00+00:00", "row": 3,
...                "model": {"name": "m", "version": "1"}, "risk": 0.4, "threshold": 0.3, "above_threshold": True,
...                "news2": {"total": 6, "parts": {}, "missing": []}})
>>> p = v.patient("pt-1")
>>> p["ward"], p["scores"][0]["risk"], p["news2"]["total"]
('W1', 0.4, 6)
>>> [q["patient"] for q in v.ward("W1")["patients"]]
['pt-1']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vigil.records import AckEvent, AdtEvent

__all__ = ["View", "PatientView", "ack_key", "MAX_OPEN_PER_PATIENT"]

MAX_OPEN_PER_PATIENT = 32  # open alert episodes kept per patient


def ack_key(alert_id: str, action: str) -> tuple[str, str]:
    """What makes two acknowledgements the same: the alert and the action."""
    return (alert_id, action)


@dataclass(slots=True)
class PatientView:
    pseudonym: str
    ward: str | None = None
    bed: str | None = None
    unit: str | None = None
    present: bool = True
    from_adt: bool = False  # ward/bed come from ADT (else from the latest score or alert)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> latest score
    news2: dict[str, Any] | None = None
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # episode id -> open episode


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _str(d: dict[str, Any], name: str) -> str | None:
    v = d.get(name)
    return v if isinstance(v, str) and 0 < len(v) <= 128 else None


def _opt_str(d: dict[str, Any], name: str) -> str | None:
    return _str(d, name)


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


class View:
    """Latest state per patient, open alerts, recorded acknowledgements (see the module doc)."""

    def __init__(self, max_patients: int = 20_000, max_alerts: int = 200_000) -> None:
        self.max_patients = max_patients
        self.max_alerts = max_alerts
        self._patients: OrderedDict[str, PatientView] = OrderedDict()
        self._wards: dict[str, set[str]] = {}
        self._alert_index: OrderedDict[str, tuple[str, str]] = OrderedDict()  # alert id -> (patient, episode id)
        self._acks: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._audited: OrderedDict[str, None] = OrderedDict()
        self.evicted_patients = 0
        self.skipped: dict[tuple[str, str], int] = {}  # (topic, reason) -> count

    # ------------------------------------------------------------------------------------------ bookkeeping
    def skip(self, topic: str, reason: str) -> None:
        self.skipped[(topic, reason)] = self.skipped.get((topic, reason), 0) + 1

    def _get(self, pseudonym: str) -> PatientView:
        p = self._patients.get(pseudonym)
        if p is None:
            p = self._patients[pseudonym] = PatientView(pseudonym)
            while len(self._patients) > self.max_patients:
                _, old = self._patients.popitem(last=False)
                self._unplace(old)
                self.evicted_patients += 1
        else:
            self._patients.move_to_end(pseudonym)
        return p

    def _unplace(self, p: PatientView) -> None:
        if p.ward is not None and (members := self._wards.get(p.ward)) is not None:
            members.discard(p.pseudonym)
            if not members:
                del self._wards[p.ward]

    def _place(self, p: PatientView, ward: str | None, bed: str | None, unit: str | None) -> None:
        self._unplace(p)
        p.ward, p.bed, p.unit = ward, bed, unit
        if ward is not None and p.present:
            self._wards.setdefault(ward, set()).add(p.pseudonym)

    def _remember(self, od: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        od[key] = value
        od.move_to_end(key)
        while len(od) > self.max_alerts:
            od.popitem(last=False)

    # ---------------------------------------------------------------------------------------------- apply
    def apply_adt(self, ev: AdtEvent) -> None:
        p = self._get(ev.patient)
        p.from_adt = True
        if ev.kind == "discharge":
            self._unplace(p)
            p.present = False
            return
        p.present = True
        self._place(p, ev.ward if ev.ward is not None else p.ward, ev.bed if ev.bed is not None else p.bed,
                    ev.unit if ev.unit is not None else p.unit)  # fmt: skip

    def _place_from(self, p: PatientView, rec: dict[str, Any]) -> None:
        if not p.from_adt and p.present:
            self._place(p, _opt_str(rec, "ward"), _opt_str(rec, "bed"), _opt_str(rec, "unit"))

    def apply_score(self, rec: dict[str, Any]) -> None:
        """A ``scores`` value (raises KeyError/TypeError/ValueError when it lacks what the view needs)."""
        patient, model, risk = rec["patient"], rec["model"], _num(rec.get("risk"))
        if not isinstance(patient, str) or not isinstance(model, dict) or not isinstance(model.get("name"), str):
            msg = "patient or model missing"
            raise ValueError(msg)
        if risk is None or not isinstance(rec.get("time"), str):
            msg = "risk or time missing"
            raise ValueError(msg)
        p = self._get(patient)
        self._place_from(p, rec)
        p.scores[model["name"]] = {
            "model": {"name": model["name"], "version": str(model.get("version", "-"))},
            "risk": risk, "threshold": _num(rec.get("threshold")),
            "above_threshold": bool(rec.get("above_threshold")), "time": rec["time"], "row": rec.get("row"),
        }  # fmt: skip
        n2 = rec.get("news2")
        if isinstance(n2, dict) and isinstance(n2.get("total"), int):
            p.news2 = {"total": n2["total"], "parts": n2.get("parts") or {}, "missing": n2.get("missing") or [],
                       "time": rec["time"]}  # fmt: skip

    def apply_alert(self, rec: dict[str, Any]) -> None:
        """An ``alerts`` value: raised / escalated open or update an episode, resolved closes it, acknowledged
        records the worker's acknowledgement with it."""
        patient, aid, event = rec["patient"], rec["alert_id"], rec["event"]
        episode = rec.get("episode_id") or aid
        if not all(isinstance(x, str) for x in (patient, aid, event, episode)):
            msg = "patient, alert_id, event or episode_id missing"
            raise ValueError(msg)
        p = self._get(patient)
        self._place_from(p, rec)
        if event in ("raised", "escalated"):
            self._remember(self._alert_index, aid, (patient, episode))
            if event == "raised":
                self._remember(self._alert_index, episode, (patient, episode))
            ep = p.alerts.setdefault(episode, {"alert_id": episode, "patient": patient, "type": rec.get("type"),
                                               "raised_at": rec.get("time"), "acknowledgements": []})  # fmt: skip
            while len(p.alerts) > MAX_OPEN_PER_PATIENT:  # never resolved (a lost resolution): oldest first out
                p.alerts.pop(next(iter(p.alerts)))
            n2 = rec.get("news2")
            ep.update(latest_alert_id=aid, event=event, severity=rec.get("severity"), ward=p.ward, bed=p.bed,
                      time=rec.get("time"), score=_num(rec.get("score")), threshold=_num(rec.get("threshold")),
                      news2_total=n2.get("total") if isinstance(n2, dict) else None,
                      message=rec.get("message") if isinstance(rec.get("message"), str) else "")  # fmt: skip
        elif event == "resolved":
            p.alerts.pop(episode, None)
        elif event == "acknowledged":
            ack = rec.get("ack")
            ep = p.alerts.get(episode)
            if ep is not None and isinstance(ack, dict) and isinstance(ack.get("action"), str):
                self._attach(ep, {"action": ack["action"], "by": str(ack.get("by")), "at": str(ack.get("at"))})

    @staticmethod
    def _attach(ep: dict[str, Any], ack: dict[str, Any]) -> None:
        if not any(a["action"] == ack["action"] for a in ep["acknowledgements"]):
            ep["acknowledgements"].append(ack)

    def apply_ack(self, ev: AckEvent) -> dict[str, Any]:
        """An ``alert-acks`` event; returns the recorded acknowledgement (the first of its alert and action)."""
        key = ack_key(ev.alert_id, ev.action)
        existing = self._acks.get(key)
        if existing is not None:
            return existing
        rec = {"alert_id": ev.alert_id, "patient": ev.patient, "action": ev.action, "by": ev.by,
               "at": iso_time(ev.time)}  # fmt: skip
        self._remember(self._acks, key, rec)
        where = self._alert_index.get(ev.alert_id)
        p = self._patients.get(ev.patient)
        if where is not None and p is not None and (ep := p.alerts.get(where[1])) is not None:
            self._attach(ep, {"action": ev.action, "by": ev.by, "at": rec["at"]})
        return rec

    def apply_audit(self, rec: dict[str, Any]) -> None:
        aid = rec["audit_id"]
        if not isinstance(aid, str):
            msg = "audit_id missing"
            raise ValueError(msg)
        self._remember(self._audited, aid, None)

    # ---------------------------------------------------------------------------------------------- reads
    def find_alert(self, alert_id: str) -> tuple[str, str] | None:
        """(patient, episode id) of a raised or escalated alert the view has seen."""
        return self._alert_index.get(alert_id)

    def alert_type(self, patient: str, episode: str) -> str | None:
        p = self._patients.get(patient)
        ep = p.alerts.get(episode) if p is not None else None
        return ep.get("type") if ep is not None else None

    def recorded_ack(self, alert_id: str, action: str) -> dict[str, Any] | None:
        return self._acks.get(ack_key(alert_id, action))

    def audited(self, audit_id: str) -> bool:
        return audit_id in self._audited

    def _summary(self, p: PatientView) -> dict[str, Any]:
        return {
            "patient": p.pseudonym, "ward": p.ward, "bed": p.bed, "unit": p.unit, "present": p.present,
            "scores": [dict(s) for _, s in sorted(p.scores.items())],
            "news2": dict(p.news2) if p.news2 is not None else None,
            "open_alerts": [self._alert_out(ep) for ep in p.alerts.values()],
        }  # fmt: skip

    @staticmethod
    def _alert_out(ep: dict[str, Any]) -> dict[str, Any]:
        return {**ep, "acknowledgements": [dict(a) for a in ep["acknowledgements"]]}

    def patient(self, pseudonym: str) -> dict[str, Any] | None:
        p = self._patients.get(pseudonym)
        return self._summary(p) if p is not None else None

    def ward(self, ward: str) -> dict[str, Any]:
        members = sorted(self._wards.get(ward, ()))
        return {"ward": ward, "count": len(members), "patients": [self._summary(self._patients[m]) for m in members]}

    def open_alerts(self, ward: str | None = None) -> list[dict[str, Any]]:
        out = [self._alert_out(ep) for p in self._patients.values() if ward is None or p.ward == ward
               for ep in p.alerts.values()]  # fmt: skip
        return sorted(out, key=lambda a: (str(a.get("time")), a["alert_id"]))

    @property
    def patients(self) -> int:
        return len(self._patients)
