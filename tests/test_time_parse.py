"""The event-time parser's fast path (ciso8601, cached) accepts and returns exactly what the reference
(``datetime.fromisoformat(...).timestamp()``, naive times refused) does."""

from __future__ import annotations

from datetime import datetime

import pytest

from vigil.records import _parse_time, decode, encode_observation

CASES = [
    "2026-01-01T05:00:00Z", "2026-01-01T05:00:00+00:00", "2026-01-01T05:00:00-00:00", "2026-01-01T05:00:00+05:30",
    "2026-01-01T05:00:00.5+01:30", "2026-01-01T05:00:00.123456Z", "2026-01-01T05:00:00.1234567Z",
    "2026-01-01 05:00:00Z", "2026-01-01t05:00:00z", "2026-01-01T05:00:00z", "2026-01-01T05:00:00+0000",
    "2026-01-01T05:00Z", "20260101T050000Z", "2026-01-01T24:00:00Z", "2026-01-01T05:00:60Z",
    "2026-02-30T05:00:00Z", "2026-01-01T05:00:00+24:00", "2026-01-01T05:00:00", "2026-01-01", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59-01:00", "2026-01-01T05:00:00+01:00:30", "", "garbage",
    "2026-01-01T05:00:00 +01:00", "2026-W01-1T05:00:00Z", "2026-001T05:00:00Z", "2026-01-01T05:00:00.Z",
]  # fmt: skip


def _reference(v: str) -> float | str:
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


@pytest.mark.parametrize("v", CASES)
def test_fast_parser_agrees_with_the_reference(v: str) -> None:
    _parse_time.cache_clear()
    assert _parse_time(v) == _reference(v)
    assert _parse_time(v) == _reference(v)  # cached


def test_naive_time_still_rejected_at_decode() -> None:
    good = encode_observation(patient="p", source="s", seq=1, time=datetime.fromisoformat("2026-01-01T00:00:00Z"),
                              system="LOINC", code="8867-4", value=80, unit="/min")  # fmt: skip
    assert decode(good, "vitals", b"p").time == 1767225600.0
    naive = good.replace(b"2026-01-01T00:00:00+00:00", b"2026-01-01T00:00:00")
    assert naive != good and decode(naive, "vitals", b"p").reason == "naive_timestamp"
