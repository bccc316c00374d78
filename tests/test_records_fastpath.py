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


# -- the msgspec decoder (vigil.records._fast_observation) in front of orjson + the checks ------------------------
def _raw(d: dict[str, Any]) -> bytes:
    import json

    return json.dumps(d, allow_nan=True).encode()  # NaN / Infinity / 10**400 as literals: what a bad producer sends


RAW_ODD: list[bytes] = [
    b"", b"null", b"[]", b"[1]", b'"x"', b"1", b"{}", b"{", b"\xef\xbb\xbf" + _raw(GOOD), _raw(GOOD) + b"x",
    _raw(GOOD) + b" \n", _raw(GOOD)[:-1] + b',"patient":"pt-2"}', _raw(GOOD)[:-1] + b',"patient":null}',
    _raw(GOOD)[:-1] + b',"watermark":null}', _raw({**GOOD, "watermark": "2026-01-01T05:00:00Z"}),
    _raw({**GOOD, "v": 1.0}), _raw({**GOOD, "v": 2}), _raw({**GOOD, "v": True}), _raw({**GOOD, "v": None}),
    _raw({**GOOD, "v": 10**30}), _raw({k: v for k, v in GOOD.items() if k != "v"}),
    _raw({**GOOD, "seq": 2**63 - 1}), _raw({**GOOD, "seq": 2**63}), _raw({**GOOD, "seq": 2**64 - 1}),
    _raw({**GOOD, "seq": 2**64}), _raw({**GOOD, "seq": -0}), _raw({**GOOD, "value": 10**30}),
    _raw({**GOOD, "value": -(10**30)}), _raw({**GOOD, "value": 10**400}), _raw({**GOOD, "value": 1e308}),
    _raw(GOOD).replace(b'"value": 88', b'"value": 1e400'), _raw(GOOD).replace(b'"value": 88', b'"value": -0.0'),
    _raw(GOOD).replace(b'"value": 88', b'"value": 8.8E1'), _raw(GOOD).replace(b'"value": 88', b'"value": 088'),
    _raw({**GOOD, "patient": "\U0001f600" * MAX_STR}), _raw({**GOOD, "patient": "\U0001f600" * (MAX_STR + 1)}),
    _raw({**GOOD, "patient": "a\u0000b"}), _raw(GOOD).replace(b"monitor-7", b"\\ud800"),
    _raw(GOOD).replace(b"monitor-7", b"\xff\xfe"), _raw(GOOD).replace(b"monitor-7", b"a\x01"),
    _raw({**GOOD, "extra": {"a": [1, 2, {"b": None}]}}), _raw(GOOD)[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    _raw({**GOOD, "code": "0000-0"}), _raw({**GOOD, "unit": "kg"}), _raw({**GOOD, "value": 100000}),
    _raw({**GOOD, "unit": ""}), _raw({**GOOD, "time": "2026-01-01 05:00:00Z"}), _raw({**GOOD, "time": "x" * 65}),
    _raw({**GOOD, "system": "http://loinc.org"}), _raw({**GOOD, "code": "8310-5", "value": 100.4, "unit": "[degF]"}),
]  # fmt: skip


def _invalid(ev: Any) -> tuple[Any, ...]:
    from vigil.records import Invalid

    return (ev.reason, ev.error_type, ev.detail, ev.field) if type(ev) is Invalid else (ev,)


def _decoded_both_ways(raw: bytes, key: bytes | None) -> tuple[Any, Any]:
    """``decode`` as shipped, and with the msgspec decoder switched off (orjson + the checks only)."""
    import vigil.records as records

    fast = decode(raw, "vitals", key)
    real = records._fast_observation
    records._fast_observation = lambda raw: None  # type: ignore[assignment]
    try:
        checked = decode(raw, "vitals", key)
    finally:
        records._fast_observation = real
    return fast, checked


@pytest.mark.parametrize("i", range(len(RAW_ODD)))
def test_the_msgspec_decoder_accepts_exactly_what_the_checked_path_accepts(i: int) -> None:
    raw = RAW_ODD[i]
    for key in (None, b"pt-0f3a9c", b"pt-2"):
        fast, checked = _decoded_both_ways(raw, key)
        assert type(fast) is type(checked), (raw[:80], key, fast, checked)
        assert _invalid(fast) == _invalid(checked), (raw[:80], key)


def test_the_msgspec_decoder_takes_well_formed_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    import vigil.records as records

    seen: list[Any] = []
    real = records._fast_observation
    monkeypatch.setattr(records, "_fast_observation", lambda raw: seen.append(real(raw)) or seen[-1])
    ev = decode(_raw(GOOD), "labs", b"pt-0f3a9c")
    assert type(ev) is Observation and seen == [ev]  # decoded by msgspec, not re-read by the checked path
    assert real(_raw({**GOOD, "v": 2})) is None and real(_raw({**GOOD, "watermark": None})) is None
    from vigil.records import AdtEvent

    assert type(decode(_raw({**GOOD, "kind": "admit"}), "adt")) is AdtEvent and len(seen) == 1  # not an observation


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from([*sorted(GOOD), "watermark", "extra"]), st.sampled_from(ODD[1:]),
                               max_size=4))  # fmt: skip
def test_any_combination_decodes_the_same_both_ways(changes: dict[str, Any]) -> None:
    raw = _raw({**GOOD, **changes})
    fast, checked = _decoded_both_ways(raw, b"pt-0f3a9c")
    assert _invalid(fast) == _invalid(checked), (raw, fast, checked)
