"""The decoder's fast path for observations (vigil.records._observation) accepts and rejects exactly what the
field-by-field checks (_observation_checked) do, with the same error, on well-formed and broken events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.errors import InvalidEvent
from vigil.records import MAX_STR, Observation, _observation, _observation_checked, decode

GOOD: dict[str, Any] = {"v": 1, "source": "monitor-7", "seq": 42, "patient": "pt-0f3a9c",
                        "time": "2026-01-01T05:00:00+00:00", "system": "LOINC", "code": "8867-4", "value": 88,
                        "unit": "/min"}  # fmt: skip
_DROP = object()

# values that each field may take: valid ones and every kind of invalid one
ODD: list[Any] = [_DROP, None, True, False, 0, -1, 1.5, float("nan"), float("inf"), 10**400, "", "x", "x" * MAX_STR,
                  "x" * (MAX_STR + 1), [], {}, "2026-01-01T05:00:00Z", "2026-01-01T05:00:00", "2026-13-01T00:00:00Z",
                  "2026-01-01T05:00:00+01:00", "9999-12-31T23:59:59-23:59", "8310-5", "[degF]", "LOINC", "x" * 65,
                  ]  # fmt: skip


def _outcome(fn: Any, d: dict[str, Any]) -> tuple[str, Any]:
    try:
        ev = fn(d)
    except InvalidEvent as exc:
        return "invalid", (exc.reason, exc.field, str(exc))
    except Exception as exc:  # noqa: BLE001 - decode() turns these into bad_type; both must raise the same
        return "error", (type(exc).__name__, str(exc))
    assert type(ev) is Observation
    return "ok", ev


def _event(field: str, value: Any) -> dict[str, Any]:
    d = dict(GOOD)
    if value is _DROP:
        del d[field]
    else:
        d[field] = value
    return d


def test_the_fast_path_builds_the_same_observation() -> None:
    fast, checked = _outcome(_observation, GOOD), _outcome(_observation_checked, GOOD)
    assert fast == checked and fast[0] == "ok"
    ev = fast[1]
    assert (ev.patient, ev.source, ev.seq, ev.time, ev.value, ev.kind) == (
        "pt-0f3a9c", "monitor-7", 42, 1767243600.0, 88.0, "vital")  # fmt: skip
    with pytest.raises(AttributeError):  # still frozen
        ev.value = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("field", ["patient", "source", "seq", "time", "system", "code", "value", "unit"])
def test_each_broken_field_gets_the_same_outcome(field: str) -> None:
    for value in ODD:
        d = _event(field, value)
        assert _outcome(_observation, d) == _outcome(_observation_checked, d), (field, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), st.sampled_from(ODD[1:]), max_size=4))
def test_any_combination_gets_the_same_outcome(changes: dict[str, Any]) -> None:
    d = {**GOOD, **changes}
    assert _outcome(_observation, d) == _outcome(_observation_checked, d)


def test_decode_reports_the_first_field_at_fault_as_before() -> None:
    import orjson

    bad = orjson.dumps({**GOOD, "source": "", "value": "88"})
    inv = decode(bad, "vitals", b"pt-0f3a9c")
    assert (inv.reason, inv.field) == ("bad_type", "source")  # type: ignore[union-attr]
