"""The model registry on disk: ``models/<name>/<version>/{model.onnx, card.json}`` + ``models/serving.json``.

``serving.json`` maps each model name to the version that workers serve. The model card carries the
feature schema (names and hash), the operating threshold, metrics and provenance. Every change of a
serving version (``vigil models promote`` / ``rollback``) rewrites ``serving.json`` atomically and appends
one line to ``serving-history.jsonl``; :meth:`Registry.previous_version` reads that history back.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from vigil.card import CARD_FILE, ModelCard
from vigil.errors import ModelError

__all__ = [
    "ModelRef", "Registry", "HISTORY_FILE", "ACTIONS", "served_stack", "update_event",
]  # fmt: skip

HISTORY_FILE = "serving-history.jsonl"
ACTIONS = ("promote", "rollback", "shadow", "unshadow")  # the model-updates actions workers understand


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    path: Path  # the version folder
    card: dict[str, Any]  # the card document as loaded (validated when it came from Registry.get)
    typed: ModelCard | None = field(default=None, compare=False, repr=False)  # set by Registry.get

    @property
    def model_card(self) -> ModelCard:
        """The card, typed (:class:`vigil.card.ModelCard`); validated here when the ref was built by hand."""
        if self.typed is not None:
            return self.typed
        return ModelCard.from_dict(self.card, f"{self.path}/{CARD_FILE}")

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def threshold(self) -> float:
        if self.typed is not None:
            return float(self.typed.threshold)
        return float(self.card["threshold"])

    @property
    def alert_level(self) -> float:
        """The risk at which model-risk alerts are raised by default: the card's ``alert_policy.raise_at``
        (chosen on validation data for an alert budget, ``vigil evaluate --policy-sweep``), else the
        operating threshold."""
        if self.typed is not None:
            return self.typed.alert_level
        level = (self.card.get("alert_policy") or {}).get("raise_at")
        return float(level) if level is not None else self.threshold

    @property
    def feature_hash(self) -> str:
        if self.typed is not None:
            return self.typed.feature_schema.hash
        return str(self.card["feature_schema"]["hash"])


class Registry:
    """The on-disk registry: read access, plus :meth:`switch` (the one write: change a serving version).

    >>> from vigil.config import REPO_ROOT
    >>> reg = Registry(REPO_ROOT / "models")
    >>> serving = reg.serving()  # name -> version, e.g. {"sepsis-gbm": "1"}
    >>> bool(serving) and all(reg.get(f"{n}:{v}").version == v for n, v in serving.items())
    True
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def serving(self) -> dict[str, str]:
        path = self.root / "serving.json"
        if not path.exists():
            return {}
        return {str(k): str(v) for k, v in orjson.loads(path.read_bytes()).items()}

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / CARD_FILE).exists() and (p / "model.onnx").exists()]
        return sorted(found, key=lambda v: (len(v), v))

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def get(self, spec: str) -> ModelRef:
        """Resolve ``NAME`` (the serving version, else the newest) or ``NAME:VERSION``."""
        name, _, version = spec.partition(":")
        if not version:
            version = self.serving().get(name) or (self.versions(name) or [""])[-1]
        path = self.root / name / version
        card_path = path / CARD_FILE
        if not self.root.is_dir():
            msg = (f"model registry {self.root} is not a folder (models_dir: VIGIL_MODELS_DIR or the settings "
                   f"file; default ./models in the working directory {Path.cwd()})")  # fmt: skip
            raise ModelError(msg)
        if not version or not card_path.exists() or not (path / "model.onnx").exists():
            msg = f"model {spec!r} not found in registry {self.root} (have: {self.names()})"
            raise ModelError(msg)
        card = orjson.loads(card_path.read_bytes())
        for key in ("name", "version", "feature_schema", "threshold", "input", "output"):
            if key not in card:
                msg = f"model card {card_path} lacks required field {key!r}"
                raise ModelError(msg)
        typed = ModelCard.from_dict(card, str(card_path))  # vigil.card.ModelCard: ModelError if invalid
        return ModelRef(name=name, version=version, path=path, card=card, typed=typed)

    def serving_refs(self, specs: list[str] | None = None) -> list[ModelRef]:
        specs = specs or list(self.serving())
        if not specs:
            msg = f"no serving model in {self.root}/serving.json and none configured"
            raise ModelError(msg)
        return [self.get(s) for s in specs]

    # ------------------------------------------------------------------ serving changes and their history
    @property
    def history_path(self) -> Path:
        return self.root / HISTORY_FILE

    def history(self, name: str | None = None) -> list[dict[str, Any]]:
        """Entries of ``serving-history.jsonl``, oldest first (only ``name``'s when given)."""
        if not self.history_path.exists():
            return []
        entries: list[dict[str, Any]] = []
        for i, line in enumerate(self.history_path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                msg = f"{self.history_path} line {i} is not JSON: {exc}"
                raise ModelError(msg) from exc
            if name is None or entry.get("name") == name:
                entries.append(entry)
        return entries

    def previous_version(self, name: str) -> str | None:
        """The version that served ``name`` before the current one, from the history (None if unknown)."""
        current = self.serving().get(name)
        stack = served_stack(self.history(name))
        while stack and stack[-1] == current:
            stack.pop()
        return stack[-1] if stack else None

    def replaced_line(self, name: str) -> tuple[str, str] | None:
        """``(line, version)`` that served before ``name``'s current version took over from another model line
        (a ``promote --replaces``, or a rollback to this line from one), when ``name`` has no earlier version of
        its own to return to; else None."""
        current = self.serving().get(name)
        if current is None or self.previous_version(name) is not None:
            return None
        for entry in reversed(self.history(name)):
            if entry.get("to_version") != current:
                continue
            other, version = entry.get("replaces"), entry.get("from_version")
            return (str(other), str(version)) if other and version else None
        return None

    def switch(
        self, name: str, version: str, action: str, *, expect_from: str | None, replaces: str | None = None,
        **details: Any,
    ) -> dict[str, Any]:
        """Make ``version`` the serving version of ``name``; returns the history entry it appended.
        ``replaces``: another model line that stops serving in the same write (a new family taking over;
        ``expect_from`` is then that line's serving version).

        ``serving.json`` is rewritten atomically (temporary file, fsync, ``os.replace``) and the entry is
        appended to ``serving-history.jsonl``, both under an exclusive lock on the history file. If the
        serving version is no longer ``expect_from`` (another promotion got there first, so a gate compared
        against a stale version), nothing changes and :class:`ModelError` is raised.
        """
        if action not in ("promote", "rollback"):
            msg = f"action must be promote or rollback, got {action!r}"
            raise ValueError(msg)
        self.get(f"{name}:{version}")  # exists and has a complete card
        self.root.mkdir(parents=True, exist_ok=True)
        with self.history_path.open("ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                serving = self.serving()
                line = replaces or name
                if serving.get(line) != expect_from:
                    msg = (
                        f"the serving version of {line} changed to {serving.get(line)!r} meanwhile "
                        f"(expected {expect_from!r}); nothing was changed, run the command again"
                    )
                    raise ModelError(msg)
                entry = {
                    "at": _utc_now(), "name": name, "action": action, "from_version": expect_from,
                    "to_version": version, **({"replaces": replaces} if replaces else {}), **details,
                }  # fmt: skip
                self._write_serving({**{k: v for k, v in serving.items() if k != replaces}, name: version})
                fh.write(orjson.dumps(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def update_refusal(self, name: str, version: str, action: str) -> str | None:
        """Why a worker must refuse a ``model-updates`` event, or None when the registry vouches for it.

        ``promote``: the history records a promotion of ``name:version`` whose gate passed, or a forced one with
        its reason; or it is the serving version of a model with no history yet (the deployed ``serving.json``).
        ``rollback``: the history records a rollback to it (``vigil models rollback``). ``shadow`` /
        ``unshadow`` change no live score and need only a registered version. Anyone able to write to the
        topic can therefore only (re)announce what ``vigil models`` recorded."""
        if action in ("shadow", "unshadow"):
            return None
        entries = [e for e in self.history(name) if str(e.get("to_version")) == version]
        if action == "rollback":
            if any(e.get("action") == "rollback" for e in entries):
                return None
            return f"no rollback to {name}:{version} is recorded in {HISTORY_FILE}"
        for e in entries:
            if e.get("action") != "promote":
                continue
            gate = e.get("gate") if isinstance(e.get("gate"), dict) else {}
            if e.get("forced") and str(e.get("reason") or "").strip():
                return None
            if gate.get("passed") is True and not gate.get("forced"):
                return None
        if not entries and not self.history(name) and self.serving().get(name) == version:
            return None  # the deployed serving version of a model line never promoted since
        return (f"{name}:{version} is not recorded as promoted through the gate (or forced with a reason) in "
                f"{HISTORY_FILE}; use `vigil models promote`")

    def _write_serving(self, serving: dict[str, str]) -> None:
        path = self.root / "serving.json"
        tmp = path.with_name(f".serving.json.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as out:
                out.write(json.dumps(serving, sort_keys=True).encode() + b"\n")  # as written by hand
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def served_stack(entries: list[dict[str, Any]]) -> list[str]:
    """The versions that served one model, oldest first, replaying its history entries as a stack: a
    promotion pushes its version; a rollback pops back to the last time its target served (or pushes
    the target if it never had). An entry that ``replaces`` another line starts the stack at its own version
    (its ``from_version`` is that other line's).

    >>> promote = lambda a, b: {"action": "promote", "from_version": a, "to_version": b}
    >>> h = [promote("1", "2"), promote("2", "3")]
    >>> served_stack(h), served_stack(h + [{"action": "rollback", "from_version": "3", "to_version": "2"}])
    (['1', '2', '3'], ['1', '2'])
    """
    stack: list[str] = []
    for e in entries:
        before, to = e.get("from_version"), str(e["to_version"])
        if not stack and before is not None and not e.get("replaces"):  # a takeover's from_version is the other line's
            stack.append(str(before))
        if e.get("action") == "rollback" and to in stack:
            del stack[len(stack) - stack[::-1].index(to) :]
        elif not stack or stack[-1] != to:
            stack.append(to)
    return stack


# ------------------------------------------------------------------------------ model-updates events
def update_event(
    name: str,
    version: str,
    action: str,
    *,
    from_version: str | None = None,
    reason: str | None = None,
    forced: bool | None = None,
    at: str | None = None,
    replaces: str | None = None,
) -> dict[str, Any]:
    """A ``model-updates`` value (``streams/schemas/model-updates.schema.json``); workers hot-swap on it.

    >>> ev = update_event("sepsis-mlp", "2", "promote", from_version="1")
    >>> ev["v"], ev["action"], ev["from_version"], ev["at"].endswith("Z")
    (1, 'promote', '1', True)
    """
    if action not in ACTIONS:
        msg = f"action must be one of {ACTIONS}, got {action!r}"
        raise ValueError(msg)
    event: dict[str, Any] = {"v": 1, "name": name, "version": version, "action": action}
    event["from_version"] = from_version
    event["at"] = at or _utc_now()
    if reason:
        event["reason"] = reason
    if forced is not None:
        event["forced"] = forced
    if replaces:
        event["replaces"] = replaces
    return event
