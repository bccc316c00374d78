"""ISO 8601 event times to POSIX seconds, on the decoder's hot path (:mod:`vigil.records`)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from ciso8601 import parse_rfc3339

__all__ = ["parse_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=1 << 14)
def parse_time(v: str) -> float | str:
    """POSIX seconds of an ISO 8601 string with an offset, or why not (``bad``, ``naive_timestamp``,
    ``out_of_range``): exactly what ``datetime.fromisoformat(v).timestamp()`` accepts and returns.

    Events of one hour share their time string, so results are cached. The common RFC 3339 shape
    (``YYYY-MM-DDTHH:MM:SS[.f]`` then ``Z`` or ``+hh:mm``), on which both parsers agree, goes through the
    C parser ``ciso8601``; every other string through ``fromisoformat``.

    >>> parse_time("2026-01-01T00:00:00Z"), parse_time("2026-01-01T01:00:00+01:00")
    (1767225600.0, 1767225600.0)
    >>> parse_time("2026-01-01T00:00:00"), parse_time("2026-13-01T00:00:00Z"), parse_time("20260101T000000Z")
    ('naive_timestamp', 'bad', 1767225600.0)
    """
    n = len(v)
    if n >= 20 and v[10] == "T" and (v[-1] == "Z" or (n >= 25 and v[-6] in "+-" and v[-3] == ":")):
        try:
            return (parse_rfc3339(v) - _EPOCH).total_seconds()
        except ValueError:
            pass  # the reference parser decides (and words the error)
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return "bad"
    if dt.tzinfo is None:
        return "naive_timestamp"
    try:
        return dt.timestamp()
    except (OverflowError, ValueError):
        return "out_of_range"
