"""The append-only audit trail (topic ``audit``, streams/schemas/audit.schema.json): who did what to what, when.

``who`` is a role or a pseudonymised staff id (never a name); ``patient`` only ever a pseudonym. ``audit_id`` is
deterministic, so recording the same action twice yields the same id and readers de-duplicate on it.

>>> rec = audit_record("alert_ack", who="rn-ward3", at=0.0, subject="alert:abc", patient="pt-1",
...                    details={"alert_id": "abc", "action": "acknowledged"}, audit_id=audit_id("alert_ack", "abc"))
>>> rec["kind"], rec["at"], rec["subject"], len(rec["audit_id"])
('alert_ack', '1970-01-01T00:00:00+00:00', 'alert:abc', 32)
>>> audit_id("alert_ack", "abc", "acknowledged") == audit_id("alert_ack", "abc", "acknowledged")
True
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

__all__ = ["AUDIT_KINDS", "audit_id", "audit_record"]

AUDIT_KINDS = ("alert_ack", "model_promote", "model_rollback", "config_override")


def audit_id(kind: str, *parts: object) -> str:
    """A deterministic id for the audited action ``kind`` on ``parts`` (32 hex characters)."""
    return hashlib.sha256("\x1f".join(map(str, ("audit", kind, *parts))).encode()).hexdigest()[:32]


def audit_record(
    kind: str, *, who: str, at: float, subject: str, details: dict[str, Any], audit_id: str,
    patient: str | None = None, source: str = "vigil api",
) -> dict[str, Any]:  # fmt: skip
    """One ``audit`` value (``at`` in POSIX seconds); ValueError for an unknown kind."""
    if kind not in AUDIT_KINDS:
        msg = f"audit kind {kind!r} is not one of {', '.join(AUDIT_KINDS)}"
        raise ValueError(msg)
    return {"v": 1, "audit_id": audit_id, "kind": kind, "who": who,
            "at": datetime.fromtimestamp(at, UTC).isoformat(), "subject": subject, "patient": patient,
            "details": details, "source": source}  # fmt: skip
