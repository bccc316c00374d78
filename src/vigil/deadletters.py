"""Bounded, allow-listed dead-letter records: what a dead letter may keep, and nothing else.

A dead letter must let an operator find the rejected record and understand why it was rejected, without
ever copying patient data into the dead-letter topic and without ever growing past what a producer can
send. So a dead letter keeps:

* the coordinates of the original (``source_topic``, ``partition``, ``offset``), its ``size`` and the
  ``sha256`` of its bytes: the original stays findable (and provably the same) on its topic, within the
  topic's retention;
* the ``reason``, ``error_type``, ``field`` and a ``detail`` bounded to :data:`MAX_DETAIL` characters;
  the detail is kept only where it cannot carry an unvetted value (a value the allow-list below did not
  keep), otherwise it is replaced by a generic sentence;
* ``content``: an **allow-listed projection** of a JSON object in vigil's input schema — only the
  non-identifying fields of :data:`ALLOWED`, each only when its value passes a strict check (a known
  code, a known unit, a number — a ``value`` at most :data:`MAX_VALUE` in magnitude —, an ISO 8601
  time, an enum). Free text, unknown keys, ``patient``, ``source``, ``bed``, ``age``, ``sex`` are never
  copied: ``withheld`` lists the schema fields that were present but not copied and ``unknown_fields``
  counts the other keys (their names are not kept either: a key can itself be an identifier);
* ``key_b64``: the Kafka key (the pseudonymised patient id, as on the input topic), when at most
  :data:`MAX_KEY` bytes;
* ``raw_b64``: only for callers that pass ``keep_raw=True`` because they already reduced the payload to
  an allow-list (the edge listeners: HL7 segments and FHIR elements); at most :data:`MAX_RAW_PREFIX`
  bytes of it (``raw_truncated`` says whether it was cut).

Every record is at most :data:`MAX_RECORD_BYTES` bytes; :func:`minimal` is the fallback the worker sends
when even that cannot be produced.

>>> import orjson
>>> rec = orjson.loads(build(reason="unknown_code", error_type="InvalidEvent", detail="unknown code 'X'",
...     field="code", topic="t-vitals", partition=1, offset=7, received_at=0.0, key=b"pt-1",
...     raw=b'{"v":1,"patient":"MRN 123","time":"2026-01-01T00:00:00Z","code":"X","value":5,"name":"J"}'))
>>> rec["content"], rec["withheld"], rec["unknown_fields"], rec["size"]
({'v': 1, 'value': 5, 'time': '2026-01-01T00:00:00Z'}, ['code', 'patient'], 1, 89)
>>> rec["detail"]
"unknown_code in field 'code' (detail withheld: the value is not on the dead-letter allow-list)"
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "build", "minimal", "project", "safe_detail", "key_hash", "ALLOWED", "MAX_RECORD_BYTES", "MAX_DETAIL",
    "MAX_KEY", "MAX_RAW_PREFIX", "MAX_PARSE_BYTES", "VERSION",
]  # fmt: skip

VERSION = 2
MAX_RECORD_BYTES = 16 * 1024  # far below any producer's max request size (1 MiB by default)
MAX_DETAIL = 300
MAX_KEY = 256
MAX_RAW_PREFIX = 4096
MAX_PARSE_BYTES = 64 * 1024  # a larger value is never parsed for a projection (size and hash only)
MAX_VALUE = 1e5  # a larger `value` is withheld (it could be an id); ranges.csv's largest canonical bound is 30,000
_MAX_NAME = 64

# Every field name of vigil's input schemas (vitals/labs, adt, alert-acks): a present field that is not
# kept is listed by name in ``withheld``; any other key is only counted.
SCHEMA_FIELDS = frozenset({
    "v", "source", "seq", "patient", "time", "system", "code", "value", "unit", "kind", "ward", "bed",
    "admit_time", "age", "sex", "hosp_adm_time_h", "alert_id", "by", "at", "action",
})  # fmt: skip
ALLOWED = ("v", "kind", "system", "code", "unit", "value", "time", "admit_time", "at", "seq", "action")
# Reasons whose detail vigil writes itself from checked values (times, types, sizes), never from raw text.
_OWN_REASONS = frozenset({"time_out_of_range", "processing_error", "wrong_partition", "oversize"})
# Reasons without a field whose detail is a parser message (positions, type names), never a value.
_FIELDLESS_SAFE = frozenset({"malformed_json", "not_an_object"})
_KINDS = frozenset({"admit", "transfer", "discharge", "vital", "lab"})
_ACTIONS = frozenset({"acknowledged", "escalated", "dismissed", "treated"})
_ICU_UNITS = frozenset({"MICU", "SICU"})
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?")
_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}")


def _tables() -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]]:
    from vigil.codes import normaliser

    n = normaliser()
    return (frozenset(s for s, _ in n.codes), frozenset(n.codes), frozenset(u for _, u in n.units))


_TABLES: tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]] | None = None


def _known() -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]]:
    global _TABLES  # noqa: PLW0603 - a lazily built, immutable cache of the code tables
    if _TABLES is None:
        _TABLES = _tables()
    return _TABLES


def _number(v: object) -> bool:
    t = type(v)
    return (t is int and -(2**63) <= v <= 2**63) or (t is float and math.isfinite(v))  # type: ignore[operator,arg-type]


def project(d: dict[str, Any]) -> tuple[dict[str, Any], list[str], int]:
    """The allow-listed projection of a decoded JSON object: (kept, withheld schema fields, other keys).

    >>> project({"v": 1, "kind": "admit", "ward": "ICU", "patient": "p", "phone": "555", "seq": -1})
    ({'v': 1, 'kind': 'admit', 'seq': -1}, ['patient', 'ward'], 1)
    """
    systems, codes, units = _known()
    kept: dict[str, Any] = {}
    for name in ALLOWED:
        if name not in d:
            continue
        v = d[name]
        ok = False
        if name in ("v", "seq"):
            ok = type(v) is int and -(2**63) <= v <= 2**63
        elif name == "value":  # a measurement; a long number (an MRN, a phone) is withheld
            ok = v is None or (_number(v) and abs(v) <= MAX_VALUE)  # type: ignore[arg-type]
        elif name == "kind":
            ok = v in _KINDS if type(v) is str else False
        elif name == "action":
            ok = v in _ACTIONS if type(v) is str else False
        elif name == "system":
            ok = type(v) is str and v in systems
        elif name == "code":
            ok = type(v) is str and (d.get("system"), v) in codes
        elif name == "unit":
            ok = type(v) is str and (v in units or v in _ICU_UNITS)
        else:  # time, admit_time, at
            ok = type(v) is str and len(v) <= 40 and _TIME.fullmatch(v) is not None
        if ok:
            kept[name] = v
    withheld = sorted(k for k in d if k in SCHEMA_FIELDS and k not in kept)
    unknown = sum(1 for k in d if k not in SCHEMA_FIELDS)
    return kept, withheld, unknown


def safe_detail(reason: str, field: str | None, detail: str, kept: dict[str, Any] | None) -> str:
    """The detail when it cannot carry an unvetted value, else a generic sentence; bounded."""
    if reason in _OWN_REASONS or (field is None and reason in _FIELDLESS_SAFE) or (
        field is not None and kept is not None and field in kept
    ):
        return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."
    where = f" in field {field!r}" if field is not None else ""
    return f"{reason}{where} (detail withheld: the value is not on the dead-letter allow-list)"


def _name(s: str | None) -> str | None:
    if s is None:
        return None
    return s if _NAME.fullmatch(s) else "(not shown)"


def key_hash(key: bytes | None) -> str:
    """A short, non-reversible tag of a Kafka key for logs (never the key itself)."""
    return "none" if key is None else hashlib.sha256(key).hexdigest()[:12]


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return datetime.fromtimestamp(0, UTC).isoformat()


def build(
    *, reason: str, error_type: str, detail: str, field: str | None, topic: str, partition: int, offset: int,
    received_at: float, raw: bytes | None = None, key: bytes | None = None, keep_raw: bool = False,
    content: dict[str, Any] | None = None,
) -> bytes:  # fmt: skip
    """One dead-letter value (JSON, at most :data:`MAX_RECORD_BYTES`); see the module docstring.

    ``content``: a projection the caller already built from a decoded event (the worker's processing
    errors); otherwise it is projected from ``raw`` when that is a JSON object of at most
    :data:`MAX_PARSE_BYTES`."""
    withheld: list[str] = []
    unknown = 0
    if content is None and raw is not None and len(raw) <= MAX_PARSE_BYTES:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            d = None
        if type(d) is dict:
            content, withheld, unknown = project(d)
    rec: dict[str, Any] = {
        "v": VERSION, "reason": reason, "error_type": _name(error_type) or "Error",
        "detail": safe_detail(reason, field, detail, content), "field": _name(field),
        "source_topic": topic[:255], "partition": max(0, partition), "offset": max(0, offset),
        "size": None if raw is None else len(raw),
        "sha256": None if raw is None else hashlib.sha256(raw).hexdigest(),
        "content": content, "withheld": withheld, "unknown_fields": unknown,
        "key_b64": base64.b64encode(key).decode("ascii") if key is not None and len(key) <= MAX_KEY else None,
        "raw_b64": None, "raw_truncated": False, "received_at": _iso(received_at),
    }  # fmt: skip
    if keep_raw and raw is not None:
        rec["raw_b64"] = base64.b64encode(raw[:MAX_RAW_PREFIX]).decode("ascii")
        rec["raw_truncated"] = len(raw) > MAX_RAW_PREFIX
    out = orjson.dumps(rec)
    if len(out) > MAX_RECORD_BYTES:  # cannot happen with the bounds above; kept as the last line of defence
        rec.update(content=None, raw_b64=None, raw_truncated=raw is not None, detail=rec["detail"][:100])
        out = orjson.dumps(rec)
    return out


def minimal(
    *, reason: str, topic: str, partition: int, offset: int, received_at: float, size: int | None = None,
    sha256: str | None = None, key: bytes | None = None, error_type: str = "DeadLetterFallback",
    detail: str = "the full dead letter could not be produced; this is its minimal form",
) -> bytes:  # fmt: skip
    """The fallback dead letter: coordinates, size, hash and reason only (a few hundred bytes)."""
    return orjson.dumps({
        "v": VERSION, "reason": reason, "error_type": _name(error_type) or "Error", "detail": detail[:MAX_DETAIL],
        "field": None, "source_topic": topic[:255], "partition": max(0, partition), "offset": max(0, offset),
        "size": size, "sha256": sha256, "content": None, "withheld": [], "unknown_fields": 0,
        "key_b64": base64.b64encode(key).decode("ascii") if key is not None and len(key) <= MAX_KEY else None,
        "raw_b64": None, "raw_truncated": False, "received_at": _iso(received_at),
    })  # fmt: skip
