"""Audit: what was done, by whom, when — two append-only records.

* :func:`record` / :func:`read` / :func:`verify`: ``audit.jsonl`` in the model registry folder, hash-chained
  (model promotions, refused promotions, rollbacks; written by ``vigil models``).
* :func:`audit_record` / :func:`audit_id`: values of the ``audit`` topic (alert acknowledgements through
  ``vigil api``; schema streams/schemas/audit.schema.json).

An append-only audit trail: ``audit.jsonl`` in the model registry folder (``models_dir``), one JSON object
per line, for the acts a hospital must be able to account for: model promotions (forced ones with the
reason and what was skipped), rollbacks, and (where they exist) alert acknowledgements and overrides.

Each entry: ``at`` (UTC, ISO 8601), ``action``, ``subject`` (e.g. ``sepsis-gbm:2``), ``actor`` (the OS user
running the command, or a named API user), ``reason``, ``details`` and ``prev`` — the SHA-256 of the previous
line (``None`` for the first), so an edited or deleted line breaks the chain (:func:`verify`). Entries are
appended under an exclusive lock and fsynced. No patient identifier is written (subjects are models,
pseudonymised patients or alert ids).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> e = record(d, "promote", "m:2", reason="emergency", actor="rn-7", details={"forced": True})
>>> e["action"], e["subject"], e["prev"] is None
('promote', 'm:2', True)
>>> _ = record(d, "rollback", "m:1", actor="rn-7")
>>> [x["action"] for x in read(d)], verify(d)
(['promote', 'rollback'], None)

The append-only audit trail (topic ``audit``, streams/schemas/audit.schema.json): who did what to what, when.

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

import fcntl
import getpass
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "AUDIT_FILE", "record", "read", "verify", "actor", "AUDIT_KINDS", "audit_id", "audit_record", "alert_config_entry",
]  # fmt: skip

AUDIT_FILE = "audit.jsonl"


def actor() -> str:
    """Who runs this command: the OS login name (uid:N where there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}"


def record(folder: str | os.PathLike[str], action: str, subject: str, *, reason: str | None = None,
           actor: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Append one entry to ``folder/audit.jsonl`` and return it."""
    path = Path(folder) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    who = actor if actor is not None else globals()["actor"]()
    with path.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            last = b""
            for line in fh:
                if line.strip():
                    last = line.rstrip(b"\n")
            entry = {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"), "action": action, "subject": subject,
                "actor": who, "reason": reason, "details": details or {},
                "prev": hashlib.sha256(last).hexdigest() if last else None,
            }  # fmt: skip
            fh.seek(0, os.SEEK_END)
            fh.write(json.dumps(entry, sort_keys=True, default=str).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return entry


def read(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every entry, oldest first (none when there is no trail yet)."""
    path = Path(folder) / AUDIT_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify(folder: str | os.PathLike[str]) -> str | None:
    """None when the chain is intact, else where it breaks (an edited, inserted or deleted line)."""
    path = Path(folder) / AUDIT_FILE
    if not path.exists():
        return None
    prev: str | None = None
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("prev") != prev:
            return f"{path}: line {n} does not follow line {n - 1} (edited, inserted or deleted entries)"
        prev = hashlib.sha256(line).hexdigest()
    return None


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


def alert_config_entry(settings: Any, *, at: float, who: str = "vigil worker") -> tuple[bytes, bytes]:
    """The ``config_override`` audit entry of the alert settings a worker runs with: the site level, the
    per-ward/unit overrides, the budget controller and the acknowledgement window (``(key, value)`` for the
    ``audit`` topic). ``audit_id`` is the hash of those settings, so every start with the same settings
    repeats one id (readers de-duplicate) and a changed setting appears as a new entry.

    >>> from vigil.config import Settings
    >>> k1, v1 = alert_config_entry(Settings(), at=0.0)
    >>> k2, v2 = alert_config_entry(Settings(alerts={"overrides": {"W3": {"model_risk": {"raise_at": 0.6}}}}), at=0.0)
    >>> k1 == k2, json.loads(v1)["audit_id"] != json.loads(v2)["audit_id"], json.loads(v2)["kind"]
    (True, True, 'config_override')
    """
    details = settings.alerts.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(details, sort_keys=True).encode()).hexdigest()
    rec = audit_record("config_override", who=who, at=at, subject="config:alerts", details=details,
                       audit_id=audit_id("config_override", "alerts", digest), source=who)  # fmt: skip
    return b"config:alerts", json.dumps(rec, sort_keys=True).encode()
