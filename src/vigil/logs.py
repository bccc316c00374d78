"""One log format for vigil and Faust/mode: ``text`` (one line per record) or ``json`` (one JSON object per
line), chosen by ``--log-format`` / ``VIGIL_LOG_FORMAT``; both carry the trace id of the request or
delivery being handled (:func:`trace`), when there is one.

The same :func:`logging_config` dict configures the CLI (:func:`setup_logging`) and the Faust worker
(``faust.Worker(logging_config=...)``: mode replaces the root handlers with exactly this configuration),
so the two never interleave two formats.

Privacy: log messages name pseudonyms, topics, offsets and counts, never a patient identifier or a value
read from a message (tests/test_logs.py checks the worker's and the listeners' logs).

>>> import io, json, logging
>>> stream = io.StringIO()
>>> h = logging.StreamHandler(stream); h.setFormatter(JsonFormatter())
>>> log = logging.getLogger("vigil.doctest"); log.addHandler(h); log.propagate = False
>>> with trace("req-1"):
...     log.warning("delivered %d alerts", 3)
>>> rec = json.loads(stream.getvalue())
>>> rec["level"], rec["logger"], rec["message"], rec["trace_id"]
('WARNING', 'vigil.doctest', 'delivered 3 alerts', 'req-1')
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "TextFormatter", "logging_config", "setup_logging", "trace",
    "new_trace_id", "current_trace_id", "request_id",
]  # fmt: skip

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACE: ContextVar[str | None] = ContextVar("vigil_trace_id", default=None)
# LogRecord attributes that are not "extra" fields
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "trace_id"}


def new_trace_id() -> str:
    """A fresh random trace id (32 hex digits, W3C trace-context size)."""
    return uuid.uuid4().hex


def request_id(header: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is a plain token (1-128 of ``[A-Za-z0-9._:-]``), else a new id: a
    header value is never logged unchecked.

    >>> request_id("abc-123"), len(request_id("bad id\\n")), len(request_id(None))
    ('abc-123', 32, 32)
    """
    if header and _REQUEST_ID_OK.fullmatch(header):
        return header
    return new_trace_id()


def current_trace_id() -> str | None:
    return _TRACE.get()


@contextmanager
def trace(trace_id: str | None = None) -> Iterator[str]:
    """Log records emitted inside carry ``trace_id`` (a new one when None)."""
    tid = trace_id or new_trace_id()
    token = _TRACE.set(tid)
    try:
        yield tid
    finally:
        _TRACE.reset(token)


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = _TRACE.get()
        return True


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the moment it was
    configured): a test runner's or a daemon's replaced stderr never leaves a handler on a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging assigns it; the live sys.stderr is always used
        pass


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [trace=...]`` on one line (a traceback follows on its own lines)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tid = getattr(record, "trace_id", None) or _TRACE.get()
        return f"{line} [trace={tid}]" if tid else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601 UTC), level, logger, message, trace_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        tid = getattr(record, "trace_id", None) or _TRACE.get()
        if tid:
            out["trace_id"] = tid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: one stderr handler, ``fmt`` lines, ``level`` at the root;
    chatty client libraries (aiokafka, kafka) at WARNING at least."""
    if fmt not in LOG_FORMATS:
        msg = f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}"
        raise ValueError(msg)
    level = level.upper()
    quiet = max(logging.WARNING, logging.getLevelName(level)) if level in LOG_LEVELS else logging.WARNING
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"trace": {"()": _TraceFilter}},
        "formatters": {"vigil": {"()": formatter}},
        "handlers": {
            "default": {"()": StderrHandler, "formatter": "vigil", "filters": ["trace"], "level": level},
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {name: {"level": logging.getLevelName(quiet)} for name in ("aiokafka", "kafka")},
    }


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """The CLI's logging: :func:`logging_config`'s handler on the root logger, replacing an earlier one of ours.

    Not through :func:`logging.config.dictConfig`, which flushes and closes every handler of the process (a test
    runner's capture files included); handlers others installed stay. (The Faust worker passes
    :func:`logging_config` to mode, which configures a fresh process with it.)"""
    cfg = logging_config(level, fmt)
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(h)
    handler = StderrHandler()
    handler.setLevel(cfg["handlers"]["default"]["level"])
    handler.setFormatter(cfg["formatters"]["vigil"]["()"]())
    handler.addFilter(_TraceFilter())
    root.addHandler(handler)
    root.setLevel(cfg["root"]["level"])
    for name, conf in cfg["loggers"].items():
        logging.getLogger(name).setLevel(conf["level"])
