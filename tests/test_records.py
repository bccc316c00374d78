"""The edge decoder (vigil.records), the code/unit/range tables (vigil.codes) and the error hierarchy."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil import deadletters
from vigil.codes import SYSTEM_ALIASES, Normaliser, normaliser, read_table
from vigil.errors import REASONS, ConfigError, InvalidEvent, ModelError, VigilError
from vigil.records import (
    MAX_STR,
    AdtEvent,
    Invalid,
    Observation,
    dead_letter_record,
    decode,
    encode_adt,
    encode_observation,
)
from vigil.variables import CANONICAL_UNITS, LABS, VAR_INDEX, VARIABLES, VITALS

T0 = datetime(2026, 1, 1, 5, tzinfo=UTC)
PATIENT = "pt-0f3a9c"
KEY = PATIENT.encode()
_DROP = object()  # a field value meaning "leave this field out"

# ----------------------------------------------------------------------------------------- factories
Factory = Callable[..., bytes]


def _obs_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"v": 1, "source": "monitor-7", "seq": 42, "patient": PATIENT, "time": T0.isoformat(),
                         "system": "LOINC", "code": "8867-4", "value": 88, "unit": "/min"}  # fmt: skip
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


def _adt_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"v": 1, "source": "adt", "seq": 7, "patient": PATIENT, "time": T0.isoformat(),
                         "kind": "admit"}  # fmt: skip
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


@pytest.fixture
def obs_event() -> Factory:
    """Raw vitals/labs event bytes; keyword overrides replace fields, ``field=_DROP`` removes one."""
    return lambda **over: orjson.dumps(_obs_dict(**over))


@pytest.fixture
def adt_event() -> Factory:
    return lambda **over: orjson.dumps(_adt_dict(**over))


def _ok(raw: bytes, stream: str = "vitals", key: bytes | None = KEY) -> Observation | AdtEvent:
    ev = decode(raw, stream, key)
    assert not isinstance(ev, Invalid), ev
    return ev


def _bad(raw: bytes | None, stream: str = "vitals", key: bytes | None = None) -> Invalid:
    ev = decode(raw, stream, key)
    assert isinstance(ev, Invalid), ev
    assert ev.reason in REASONS
    return ev


def _loinc(var: str) -> str:
    return next(r["code"] for r in read_table("codes.csv") if r["variable"] == var and r["system"] == "LOINC")


# -------------------------------------------------------------------------------------- valid events
def test_valid_vital_in_canonical_unit(obs_event: Factory) -> None:
    ev = _ok(obs_event())
    assert ev == Observation(PATIENT, "monitor-7", 42, T0.timestamp(), VAR_INDEX["HR"], 88.0, "vital")
    assert type(ev.value) is float


def test_valid_lab_in_canonical_unit(obs_event: Factory) -> None:
    ev = _ok(obs_event(code="2524-7", value=2.4, unit="mmol/L"), "labs")
    assert isinstance(ev, Observation)
    assert (ev.var, ev.value, ev.kind) == (VAR_INDEX["Lactate"], 2.4, "lab")


@pytest.mark.parametrize(
    ("system", "code", "unit", "value", "var", "expected"),
    [
        ("LOINC", "8310-5", "[degF]", 98.6, "Temp", 37.0),
        ("LOINC", "8310-5", "°F", 100.4, "Temp", 38.0),
        ("MDC", "150344", "266560", 96.8, "Temp", 36.0),
        ("MDC", "188496", "268192", 36.4, "Temp", 36.4),
        ("LOINC", "8310-5", "degC", 36.6, "Temp", 36.6),
        ("LOINC", "8480-6", "kPa", 16.0, "SBP", 120.00992),
        ("MDC", "150301", "266016", 121.0, "SBP", 121.0),
        ("MDC", "150302", "mmHg", 71.0, "DBP", 71.0),
        ("MDC", "150303", "mm[Hg]", 88.0, "MAP", 88.0),
        ("MDC", "150035", "kPa", 10.0, "MAP", 75.0062),
        ("LOINC", "2019-8", "kPa", 5.3, "PaCO2", 39.753286),
        ("LOINC", "19889-5", "kPa", 5.0, "EtCO2", 37.5031),
        ("LOINC", "2345-7", "mmol/L", 5.5, "Glucose", 99.088),
        ("LOINC", "2339-0", "mg/dL", 140.0, "Glucose", 140.0),
        ("LOINC", "3150-0", "%", 40.0, "FiO2", 0.4),
        ("LOINC", "19996-8", "1", 0.5, "FiO2", 0.5),
        ("LOINC", "2160-0", "umol/L", 88.42, "Creatinine", 1.0),
        ("LOINC", "3094-0", "mmol/L", 10.0, "BUN", 28.01),
        ("LOINC", "2524-7", "mg/dL", 18.016, "Lactate", 2.0),
        ("LOINC", "17861-6", "mmol/L", 2.5, "Calcium", 10.02),
        ("LOINC", "19123-9", "mmol/L", 1.0, "Magnesium", 2.431),
        ("LOINC", "2777-1", "mmol/L", 1.0, "Phosphate", 3.097),
        ("LOINC", "718-7", "g/L", 120.0, "Hgb", 12.0),
        ("LOINC", "718-7", "mmol/L", 8.0, "Hgb", 12.888),
        ("LOINC", "1975-2", "umol/L", 17.1, "Bilirubin_total", 1.0),
        ("LOINC", "1968-7", "µmol/L", 34.2, "Bilirubin_direct", 2.0),
        ("LOINC", "10839-9", "ng/L", 45.0, "TroponinI", 0.045),
        ("LOINC", "3255-7", "g/L", 3.5, "Fibrinogen", 350.0),
        ("LOINC", "6690-2", "10*9/L", 12.3, "WBC", 12.3),
        ("LOINC", "8867-4", "bpm", 72.0, "HR", 72.0),
        ("LOINC", "8867-4", "{beats}/min", 72.0, "HR", 72.0),
        ("LOINC", "8889-8", "beats/min", 72.0, "HR", 72.0),
        ("MDC", "149530", "264864", 72.0, "HR", 72.0),
        ("MDC", "151562", "264928", 16.0, "Resp", 16.0),
        ("LOINC", "9279-1", "{breaths}/min", 16.0, "Resp", 16.0),
        ("MDC", "150456", "262688", 97.0, "O2Sat", 97.0),
        ("LOINC", "59408-5", "%", 97.0, "O2Sat", 97.0),
        ("LOINC", "20564-1", "%", 96.0, "SaO2", 96.0),
        ("http://loinc.org", "2744-1", "[pH]", 7.31, "pH", 7.31),
        ("LN", "11558-4", "[pH]", 7.4, "pH", 7.4),
        ("urn:iso:std:iso:11073:10101", "151708", "266016", 38.0, "EtCO2", 38.0),
        ("MDC", "MDC_PULS_OXIM_SAT_O2", "%", 95.0, "O2Sat", 95.0),  # MDC reference id accepted as a code
        ("LOINC", "8867-4", "  /min ", 60.0, "HR", 60.0),  # surrounding whitespace is stripped
    ],
)
def test_valid_converted_units(
    obs_event: Factory, system: str, code: str, unit: str, value: float, var: str, expected: float
) -> None:
    stream = "vitals" if var in VITALS else "labs"
    ev = _ok(obs_event(system=system, code=code, unit=unit, value=value), stream)
    assert isinstance(ev, Observation)
    assert ev.var == VAR_INDEX[var]
    assert ev.value == pytest.approx(expected, abs=1e-6)
    assert ev.kind == ("vital" if var in VITALS else "lab")


def test_time_offsets_are_honoured(obs_event: Factory) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    local = T0.astimezone(ist)
    assert _ok(obs_event(time=local.isoformat())).time == T0.timestamp()
    assert _ok(obs_event(time="2026-01-01T05:00:00Z")).time == T0.timestamp()
    assert _ok(obs_event(time="2026-01-01T05:00:00.250+00:00")).time == T0.timestamp() + 0.25


@pytest.mark.parametrize(
    ("code", "unit", "var"),
    [("8867-4", "/min", "HR"), ("9279-1", "/min", "Resp"), ("8480-6", "mm[Hg]", "SBP"),
     ("19889-5", "mm[Hg]", "EtCO2"), ("2524-7", "mmol/L", "Lactate"), ("6690-2", "10*3/uL", "WBC")],
)  # fmt: skip
def test_zero_is_accepted_where_physically_possible(
    obs_event: Factory, code: str, unit: str, var: str
) -> None:
    ev = _ok(obs_event(code=code, unit=unit, value=0), "vitals" if var in VITALS else "labs")
    assert isinstance(ev, Observation) and ev.var == VAR_INDEX[var] and ev.value == 0.0


def test_fio2_room_air_to_pure_oxygen(obs_event: Factory) -> None:
    for value, unit in ((0.21, "1"), (1.0, "1"), (21, "%"), (100, "%")):
        ev = _ok(obs_event(code="3150-0", value=value, unit=unit), "labs")
        assert ev.value == pytest.approx(value / (100 if unit == "%" else 1))  # type: ignore[union-attr]
    for value, unit in ((0, "1"), (0.2, "1"), (40, "1"), (1.01, "1"), (101, "%")):
        assert _bad(obs_event(code="3150-0", value=value, unit=unit), "labs").reason == "implausible_value"


@pytest.mark.parametrize("var", VARIABLES)
def test_range_bounds_are_inclusive(obs_event: Factory, var: str) -> None:
    lo, hi = normaliser().ranges[VAR_INDEX[var]]
    stream = "vitals" if var in VITALS else "labs"
    fields = {"code": _loinc(var), "unit": CANONICAL_UNITS[var]}
    for value in (lo, hi):
        ev = _ok(obs_event(value=value, **fields), stream)
        assert ev.value == value  # type: ignore[union-attr]
    eps = max(abs(hi), 1.0) * 1e-6
    for value in (lo - eps, hi + eps):
        bad = _bad(obs_event(value=value, **fields), stream)
        assert bad.reason == "implausible_value" and bad.field == "value"
        assert bad.detail.startswith(f"{var} {value:g} outside the plausible range [{lo:g}, {hi:g}]")


def test_extra_fields_are_ignored_and_v_defaults_to_1(obs_event: Factory) -> None:
    ev = _ok(obs_event(note="free text", device={"eui64": "00-11"}, v=_DROP))
    assert isinstance(ev, Observation) and ev.value == 88.0


def test_key_is_optional(obs_event: Factory) -> None:
    assert isinstance(decode(obs_event(), "vitals"), Observation)


def test_valid_adt_admit_with_context(adt_event: Factory) -> None:
    raw = adt_event(ward="ICU-MED", bed="4", unit="MICU", age=71.5, sex="F", hosp_adm_time_h=-12.25)
    ev = _ok(raw, "adt")
    assert ev == AdtEvent(PATIENT, "adt", 7, T0.timestamp(), "admit", "ICU-MED", "4", "MICU", T0.timestamp(),
                          71.5, "F", -12.25)  # fmt: skip


def test_adt_admit_time_defaults_only_for_admit(adt_event: Factory) -> None:
    earlier = (T0 - timedelta(hours=30)).isoformat()
    admit = _ok(adt_event(kind="admit", admit_time=earlier), "adt")
    assert isinstance(admit, AdtEvent) and admit.admit_time == T0.timestamp() - 30 * 3600
    moved = _ok(adt_event(kind="transfer", ward="ICU-SURG", unit="other-unit"), "adt")
    assert isinstance(moved, AdtEvent) and moved.admit_time is None and moved.unit == "other-unit"
    gone = _ok(adt_event(kind="discharge"), "adt")
    assert isinstance(gone, AdtEvent) and (gone.ward, gone.bed, gone.age, gone.sex) == (
        None,
        None,
        None,
        None,
    )


def test_adt_age_zero_and_sex_unknown(adt_event: Factory) -> None:
    ev = _ok(adt_event(age=0, sex="U"), "adt")
    assert isinstance(ev, AdtEvent) and ev.age == 0.0 and ev.sex == "U"


def test_encoders_round_trip() -> None:
    raw = encode_observation(patient=PATIENT, source="s", seq=0, time=T0, system="MDC", code="150456",
                             value=99, unit="%")  # fmt: skip
    assert _ok(raw) == Observation(PATIENT, "s", 0, T0.timestamp(), VAR_INDEX["O2Sat"], 99.0, "vital")
    raw = encode_adt(patient=PATIENT, source="s", seq=1, time=T0, kind="transfer", ward="W", bed="B",
                     unit="SICU", admit_time=T0 - timedelta(hours=2), age=60, sex="M",
                     hosp_adm_time_h=0.0)  # fmt: skip
    ev = _ok(raw, "adt")
    assert isinstance(ev, AdtEvent) and ev.admit_time == T0.timestamp() - 7200 and ev.hosp_adm_time_h == 0.0
    minimal = orjson.loads(encode_adt(patient=PATIENT, source="s", seq=1, time=T0, kind="discharge"))
    assert set(minimal) == {"v", "source", "seq", "patient", "time", "kind"}
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_observation(patient=PATIENT, source="s", seq=0, time=datetime(2026, 1, 1), system="LOINC",
                           code="8867-4", value=80, unit="/min")  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        encode_observation(patient=PATIENT, source="s", seq=0, time=T0, system="LOINC", code="8867-4",
                           value=math.nan, unit="/min")  # fmt: skip


# ------------------------------------------------------------------------------------ invalid events
@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"v":1,', b"{'single': 'quotes'}"])
def test_malformed_json(raw: bytes) -> None:
    assert _bad(raw).reason == "malformed_json"


def test_null_value_is_malformed() -> None:
    inv = _bad(None)
    assert (inv.reason, inv.error_type) == ("malformed_json", "EmptyValue")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert _bad(raw).reason == "not_an_object"


@pytest.mark.parametrize("field", ["source", "seq", "patient", "time", "system", "code", "value", "unit"])
def test_missing_field_names_the_field(obs_event: Factory, field: str) -> None:
    for raw in (obs_event(**{field: _DROP}), obs_event(**{field: None})):
        inv = _bad(raw)
        assert (inv.reason, inv.field) == ("missing_field", field)
        assert repr(field) in inv.detail


@pytest.mark.parametrize("field", ["source", "seq", "patient", "time", "kind"])
def test_adt_missing_field(adt_event: Factory, field: str) -> None:
    inv = _bad(adt_event(**{field: _DROP}), "adt")
    assert (inv.reason, inv.field) == ("missing_field", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", "88"), ("value", [88]), ("value", {"v": 88}), ("value", True), ("value", False),
        ("seq", -1), ("seq", 1.5), ("seq", "1"), ("seq", True),
        ("patient", 123), ("patient", ""), ("patient", "x" * (MAX_STR + 1)), ("source", ["a"]),
        ("code", 88674), ("system", 1), ("unit", 1), ("time", 1767243600),
    ],
)  # fmt: skip
def test_wrong_types(obs_event: Factory, field: str, value: Any) -> None:
    inv = _bad(obs_event(**{field: value}))
    assert (inv.reason, inv.field) == ("bad_type", field), inv
    assert repr(field) in inv.detail


def test_long_strings_are_limited_but_the_limit_is_accepted(obs_event: Factory) -> None:
    assert isinstance(decode(obs_event(source="s" * MAX_STR), "vitals"), Observation)
    assert _bad(obs_event(source="s" * (MAX_STR + 1))).reason == "bad_type"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_are_bad_type(obs_event: Factory, literal: bytes) -> None:
    raw = obs_event(value=123456.0).replace(b"123456.0", literal)
    inv = _bad(raw)
    assert (inv.reason, inv.field) == ("bad_type", "value"), inv


def test_non_finite_age_is_bad_type(adt_event: Factory) -> None:
    inv = _bad(adt_event(age=71.0).replace(b"71.0", b"NaN"), "adt")
    assert (inv.reason, inv.field) == ("bad_type", "age")


@pytest.mark.parametrize("when", ["2026-01-01T05:00:00", "2026-01-01 05:00:00", "2026-01-01"])
def test_naive_timestamp(obs_event: Factory, when: str) -> None:
    inv = _bad(obs_event(time=when))
    assert (inv.reason, inv.field) == ("naive_timestamp", "time")
    assert when in inv.detail


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01T00:00:00+00:00", "2026-01-01T25:00:00Z", ""])
def test_bad_timestamp(obs_event: Factory, when: str) -> None:
    assert _bad(obs_event(time=when)).reason == "bad_timestamp"


def test_naive_admit_time(adt_event: Factory) -> None:
    inv = _bad(adt_event(admit_time="2026-01-01T00:00:00"), "adt")
    assert (inv.reason, inv.field) == ("naive_timestamp", "admit_time")


@pytest.mark.parametrize(
    ("system", "code"),
    [("LOINC", "0000-0"), ("SNOMED", "8867-4"), ("MDC", "8867-4"), ("LOINC", "150456"), ("loinc", "8867-4")],
)
def test_unknown_code(obs_event: Factory, system: str, code: str) -> None:
    inv = _bad(obs_event(system=system, code=code))
    assert (inv.reason, inv.field) == ("unknown_code", "code")
    assert code in inv.detail and system in inv.detail


@pytest.mark.parametrize(
    ("code", "unit"),
    [("8867-4", "furlongs/fortnight"), ("8867-4", "breaths/min"), ("9279-1", "beats/min"), ("8480-6", "MMHG"),
     ("2345-7", "MMOL/L"), ("8310-5", "C"), ("19889-5", "%"), ("3150-0", ""), ("8867-4", "%")],
)  # fmt: skip
def test_unknown_unit(obs_event: Factory, code: str, unit: str) -> None:
    inv = _bad(obs_event(code=code, unit=unit, value=1))
    assert (inv.reason, inv.field) == ("unknown_unit", "unit")
    assert repr(unit) in inv.detail


def test_implausible_value_names_code_value_and_range(obs_event: Factory) -> None:
    inv = _bad(obs_event(value=900))
    assert (inv.reason, inv.field) == ("implausible_value", "value")
    assert "HR 900" in inv.detail and "[0, 350]" in inv.detail and "8867-4" in inv.detail
    converted = _bad(obs_event(code="8310-5", unit="[degF]", value=200))
    assert converted.reason == "implausible_value"
    assert "Temp 93.3333" in converted.detail and "[degF]" in converted.detail
    assert _bad(obs_event(value=-1)).reason == "implausible_value"


def test_adt_invalid(adt_event: Factory) -> None:
    inv = _bad(adt_event(kind="teleport"), "adt")
    assert (inv.reason, inv.field) == ("unknown_adt_kind", "kind") and "teleport" in inv.detail
    assert _bad(adt_event(kind=3), "adt").reason == "unknown_adt_kind"
    assert _bad(adt_event(sex="female"), "adt").reason == "bad_type"
    assert _bad(adt_event(age=200), "adt").reason == "implausible_value"
    assert _bad(adt_event(age=True), "adt").reason == "bad_type"
    assert _bad(adt_event(ward=""), "adt").reason == "bad_type"


def test_key_mismatch(obs_event: Factory, adt_event: Factory) -> None:
    for raw, stream in ((obs_event(), "vitals"), (adt_event(), "adt")):
        inv = _bad(raw, stream, key=b"someone-else")
        assert (inv.reason, inv.field) == ("key_mismatch", "patient")
        assert isinstance(decode(raw, stream, KEY), Observation | AdtEvent)


def test_unsupported_version(obs_event: Factory) -> None:
    for v in (2, "1", True, 1.0):
        assert _bad(obs_event(v=v)).reason == "unsupported_version"


# ------------------------------------------------------------------------------------- never raises
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = JSON | st.sampled_from(
    ["2026-01-01T05:00:00+00:00", "2026-01-01T05:00:00", "LOINC", "MDC", "8867-4", "150456", "/min", "%",
     "[degF]", "admit", "discharge", PATIENT]
)  # fmt: skip
FIELDS = ["v", "source", "seq", "patient", "time", "system", "code", "value", "unit", "kind", "ward", "bed",
          "admit_time", "age", "sex", "hosp_adm_time_h"]  # fmt: skip
STREAM = st.sampled_from(["vitals", "labs", "adt"])
KEYS = st.none() | st.binary(max_size=12) | st.just(KEY)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # the standard library: integers beyond 64 bits too


def _check(ev: object) -> None:
    assert isinstance(ev, Observation | AdtEvent | Invalid)
    if isinstance(ev, Invalid):
        assert ev.reason in REASONS and isinstance(ev.detail, str) and isinstance(ev.error_type, str)


@FAST
@given(raw=st.binary(max_size=200), stream=STREAM, key=KEYS)
def test_decode_never_raises_on_arbitrary_bytes(raw: bytes, stream: str, key: bytes | None) -> None:
    _check(decode(raw, stream, key))


@FAST
@given(doc=JSON, stream=STREAM)
def test_decode_never_raises_on_arbitrary_json(doc: Any, stream: str) -> None:
    _check(decode(_dumps(doc), stream))


@FAST
@given(
    base=st.sampled_from(["obs", "adt"]),
    changes=st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=4),
    stream=STREAM,
    key=KEYS,
)
def test_decode_never_raises_on_mutated_events(
    base: str, changes: dict[str, Any], stream: str, key: bytes | None
) -> None:
    doc = (_obs_dict if base == "obs" else _adt_dict)(**changes)
    ev = decode(_dumps(doc), stream, key)
    _check(ev)
    if isinstance(ev, Observation):  # what gets through is normalised and in range
        lo, hi = normaliser().ranges[ev.var]
        assert lo <= ev.value <= hi and math.isfinite(ev.time)


# ---------------------------------------------------------------------------------------- dead letters
@FAST
@given(raw=st.none() | st.binary(max_size=300), key=st.none() | st.binary(max_size=40))
def test_dead_letter_is_bounded_and_keeps_only_coordinates_hash_and_key(raw: bytes | None, key: bytes | None) -> None:
    inv = decode(raw, "labs", key)
    if not isinstance(inv, Invalid):
        inv = Invalid("bad_type", "Test", "synthetic")
    out = dead_letter_record(inv, topic="t-labs", partition=2, offset=99, raw=raw, key=key, received_at=1767243600.5)
    rec = orjson.loads(out)
    assert len(out) <= deadletters.MAX_RECORD_BYTES and rec["raw_b64"] is None  # never the raw bytes
    assert rec["size"] == (None if raw is None else len(raw))
    assert rec["sha256"] == (None if raw is None else hashlib.sha256(raw).hexdigest())
    assert (None if rec["key_b64"] is None else base64.b64decode(rec["key_b64"])) == key
    assert set(rec["content"] or {}) <= set(deadletters.ALLOWED)
    coords = (rec["v"], rec["reason"], rec["source_topic"], rec["partition"], rec["offset"])
    assert coords == (2, inv.reason, "t-labs", 2, 99)
    assert datetime.fromisoformat(rec["received_at"]) == datetime(2026, 1, 1, 5, 0, 0, 500000, tzinfo=UTC)


def test_dead_letter_keeps_reason_detail_and_field(obs_event: Factory) -> None:
    raw = obs_event(time="2026-01-01T05:00:00")
    inv = _bad(raw)
    rec = orjson.loads(dead_letter_record(inv, topic="vitals", partition=0, offset=0, raw=raw, key=KEY,
                                          received_at=0.0))  # fmt: skip
    assert (rec["reason"], rec["field"], rec["error_type"]) == ("naive_timestamp", "time", "InvalidEvent")
    assert rec["detail"] == inv.detail


PLANTED = ("MRN-4417-0092", "Jonathan Q. Publicfigure", "+1-555-0100-337", "44170092")


@pytest.mark.parametrize("raw", [
    # a valid event with identifiers in extra fields and in `source`
    b'{"v":1,"source":"+1-555-0100-337","seq":1,"patient":"MRN-4417-0092","time":"2026-01-01T00:00:00Z",'
    b'"system":"LOINC","code":"8867-4","value":80,"unit":"/min","name":"Jonathan Q. Publicfigure",'
    b'"MRN-4417-0092":"Jonathan Q. Publicfigure"}',
    # invalid: the identifiers sit where a code, a unit, a value and a time should be
    b'{"v":1,"source":"s","seq":2,"patient":"p","time":"Jonathan Q. Publicfigure","system":"LOINC",'
    b'"code":"MRN-4417-0092","value":"+1-555-0100-337","unit":"MRN-4417-0092"}',
    b'{"v":1,"source":"s","seq":3,"patient":"p","time":"2026-01-01T00:00:00Z","system":"MRN-4417-0092",'
    b'"code":"8867-4","value":80,"unit":"Jonathan Q. Publicfigure"}',
    b'{"v":"MRN-4417-0092","patient":"Jonathan Q. Publicfigure"}',
    b'["MRN-4417-0092", "Jonathan Q. Publicfigure", "+1-555-0100-337"]',
    b'MRN-4417-0092 Jonathan Q. Publicfigure +1-555-0100-337',
    b'{"v":1,"source":"s","seq":4,"patient":"MRN-4417-0092","time":"2026-01-01T00:00:00Z","system":"LOINC",'
    b'"code":"8867-4","value":80,"unit":"/min"}',  # key_mismatch: the detail would name the patient
    b'{"v":1,"source":"s","seq":5,"patient":"p","time":"2026-01-01T00:00:00Z","system":"LOINC",'
    b'"code":"8867-4","value":44170092,"unit":"/min"}',  # a numeric MRN as the value: implausible_value
])  # fmt: skip
def test_dead_letter_never_copies_planted_identifiers(raw: bytes) -> None:
    for stream in ("vitals", "adt", "alert-acks"):
        inv = decode(raw, stream, KEY)
        if not isinstance(inv, Invalid):
            inv = Invalid("bad_type", "Test", f"synthetic {raw[:60]!r}")
        out = dead_letter_record(inv, topic="t-vitals", partition=0, offset=1, raw=raw, key=KEY, received_at=0.0)
        text = out.decode()
        assert not any(p in text for p in PLANTED), (stream, text)
        assert orjson.loads(out)["sha256"] == hashlib.sha256(raw).hexdigest()


def test_dead_letter_projection_keeps_what_explains_the_rejection(obs_event: Factory) -> None:
    raw = obs_event(value=900)
    inv = decode(raw, "vitals", KEY)
    assert isinstance(inv, Invalid) and inv.reason == "implausible_value"
    rec = orjson.loads(dead_letter_record(inv, topic="vitals", partition=0, offset=0, raw=raw, key=KEY,
                                          received_at=0.0))  # fmt: skip
    assert rec["content"]["value"] == 900 and rec["content"]["code"] and rec["detail"] == inv.detail
    assert "patient" in rec["withheld"] and "source" in rec["withheld"] and "patient" not in rec["content"]


def test_dead_letter_of_a_huge_record_stays_small() -> None:
    raw = b'{"v":1,"pad":"' + b"x" * 900_000 + b'"}'
    out = dead_letter_record(Invalid("oversize", "OversizeRecord", "too big"), topic="t-vitals", partition=0,
                             offset=3, raw=raw, key=b"k" * 10_000, received_at=0.0)  # fmt: skip
    rec = orjson.loads(out)
    assert len(out) < 1024 and rec["size"] == len(raw) and rec["key_b64"] is None and rec["content"] is None
    edge = dead_letter_record(Invalid("bad_type", "X", "y"), topic="hl7-mllp", partition=0, offset=0, raw=raw,
                              key=None, received_at=0.0, keep_raw=True)  # fmt: skip
    assert len(edge) <= deadletters.MAX_RECORD_BYTES and orjson.loads(edge)["raw_truncated"] is True


# ------------------------------------------------------------------------------------------ the tables
BRIEF_CODES = {
    ("LOINC", "8867-4"): "HR", ("LOINC", "8889-8"): "HR", ("LOINC", "2708-6"): "O2Sat",
    ("LOINC", "59408-5"): "O2Sat", ("LOINC", "8310-5"): "Temp", ("LOINC", "8480-6"): "SBP",
    ("LOINC", "8462-4"): "DBP", ("LOINC", "8478-0"): "MAP", ("LOINC", "9279-1"): "Resp",
    ("LOINC", "19889-5"): "EtCO2", ("LOINC", "1925-7"): "BaseExcess", ("LOINC", "1959-6"): "HCO3",
    ("LOINC", "1963-8"): "HCO3", ("LOINC", "3150-0"): "FiO2", ("LOINC", "19996-8"): "FiO2",
    ("LOINC", "2744-1"): "pH", ("LOINC", "11558-4"): "pH", ("LOINC", "2019-8"): "PaCO2",
    ("LOINC", "20564-1"): "SaO2", ("LOINC", "1920-8"): "AST", ("LOINC", "3094-0"): "BUN",
    ("LOINC", "6768-6"): "Alkalinephos", ("LOINC", "17861-6"): "Calcium", ("LOINC", "2075-0"): "Chloride",
    ("LOINC", "2160-0"): "Creatinine", ("LOINC", "1968-7"): "Bilirubin_direct",
    ("LOINC", "2345-7"): "Glucose", ("LOINC", "2339-0"): "Glucose", ("LOINC", "2524-7"): "Lactate",
    ("LOINC", "32693-4"): "Lactate", ("LOINC", "19123-9"): "Magnesium", ("LOINC", "2777-1"): "Phosphate",
    ("LOINC", "2823-3"): "Potassium", ("LOINC", "1975-2"): "Bilirubin_total",
    ("LOINC", "10839-9"): "TroponinI", ("LOINC", "4544-3"): "Hct", ("LOINC", "718-7"): "Hgb",
    ("LOINC", "3173-2"): "PTT", ("LOINC", "6690-2"): "WBC", ("LOINC", "3255-7"): "Fibrinogen",
    ("LOINC", "777-3"): "Platelets", ("MDC", "147842"): "HR", ("MDC", "149530"): "HR",
    ("MDC", "150456"): "O2Sat", ("MDC", "151562"): "Resp", ("MDC", "151708"): "EtCO2",
    ("MDC", "150344"): "Temp", ("MDC", "150364"): "Temp", ("MDC", "188496"): "Temp",
    ("MDC", "150021"): "SBP", ("MDC", "150022"): "DBP", ("MDC", "150023"): "MAP", ("MDC", "150033"): "SBP",
    ("MDC", "150034"): "DBP", ("MDC", "150035"): "MAP", ("MDC", "150301"): "SBP", ("MDC", "150302"): "DBP",
    ("MDC", "150303"): "MAP",
}  # fmt: skip


def test_codes_table_covers_every_variable_with_known_names() -> None:
    rows = read_table("codes.csv")
    assert {r["variable"] for r in rows} == set(VARIABLES)
    for r in rows:
        assert r["variable"] in VAR_INDEX, r
        assert r["system"] in SYSTEM_ALIASES and r["display"], r
        assert r["kind"] == ("vital" if r["variable"] in VITALS else "lab"), r
    table = {(r["system"], r["code"]): r["variable"] for r in rows}
    assert len(table) == len(rows), "duplicate (system, code) rows"
    for key, var in BRIEF_CODES.items():
        assert table.get(key) == var, key
    assert {v for (s, _), v in table.items() if s == "LOINC"} == set(VARIABLES)  # a LOINC code for everything


def test_every_code_normalises_in_its_canonical_unit() -> None:
    n = normaliser()
    for r in read_table("codes.csv"):
        var = r["variable"]
        _, hi = n.ranges[VAR_INDEX[var]]
        for system in [s for s, target in SYSTEM_ALIASES.items() if target == r["system"]]:
            assert n.normalise(system, r["code"], CANONICAL_UNITS[var], hi) == (VAR_INDEX[var], hi, r["kind"])


def test_units_and_ranges_tables() -> None:
    units = read_table("units.csv")
    ranges = {r["variable"]: (float(r["min"]), float(r["max"])) for r in read_table("ranges.csv")}
    identity = {
        (r["variable"], r["unit"]) for r in units if float(r["factor"]) == 1 and float(r["offset"]) == 0
    }
    for var in VARIABLES:
        assert (var, CANONICAL_UNITS[var]) in identity, var
        lo, hi = ranges[var]
        assert lo <= hi
    assert set(ranges) == set(VARIABLES)
    for r in units:
        assert r["variable"] in VAR_INDEX and r["unit"] == r["unit"].strip() and float(r["factor"]) > 0, r
    assert len({(r["variable"], r["unit"]) for r in units}) == len(units), "duplicate unit rows"


def test_range_judgement_calls() -> None:
    rng = {VARIABLES[i]: b for i, b in enumerate(normaliser().ranges)}
    assert rng["HR"][0] == 0 and rng["Resp"][0] == 0  # asystole, apnoea
    assert rng["FiO2"] == (0.21, 1.0)
    assert rng["O2Sat"] == (0, 100) and rng["SaO2"][1] == 100
    # PhysioNet 2019 set A extremes that are real patients stay accepted ...
    real = [("HR", 280), ("Temp", 20.9), ("Temp", 42.2), ("SBP", 281), ("MAP", 300), ("Resp", 69),
            ("pH", 6.62), ("pH", 7.93), ("Glucose", 988), ("Lactate", 31), ("WBC", 422.9),
            ("Platelets", 1783), ("AST", 9890), ("Alkalinephos", 3833), ("Fibrinogen", 1760)]  # fmt: skip
    for var, value in real:
        lo, hi = rng[var]
        assert lo <= value <= hi, (var, value)
    # ... and recording errors are not.
    for var, value in [("FiO2", 0), ("FiO2", 10), ("BaseExcess", 100), ("HCO3", 0), ("Potassium", 27.5),
                       ("Hgb", 32), ("Calcium", 22), ("Chloride", 26)]:  # fmt: skip
        lo, hi = rng[var]
        assert not lo <= value <= hi, (var, value)


def test_labs_and_vitals_partition_the_variables() -> None:
    kinds = {r["variable"]: r["kind"] for r in read_table("codes.csv")}
    assert {v for v, k in kinds.items() if k == "vital"} == set(VITALS)
    assert {v for v, k in kinds.items() if k == "lab"} == set(LABS)


def _rows(text: str) -> list[dict[str, str]]:
    head, *lines = text.strip().splitlines()
    return [dict(zip(head.split(","), ln.split(","), strict=True)) for ln in lines]


def _tables(**over: str) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    codes = over.get("codes", "system,code,variable,kind,display\nLOINC,8867-4,HR,vital,Heart rate")
    units = "variable,unit,factor,offset\n" + "\n".join(f"{v},{CANONICAL_UNITS[v]},1,0" for v in VARIABLES)
    ranges = "variable,min,max\n" + "\n".join(f"{v},0,1000" for v in VARIABLES)
    return _rows(codes), _rows(units + over.get("units", "")), _rows(over.get("ranges", ranges))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"codes": "system,code,variable,kind,display\nLOINC,1-1,Nope,vital,x"}, "unknown variable"),
        ({"codes": "system,code,variable,kind,display\nLOINC,1-1,HR,lab,x"}, "kind"),
        ({"codes": "system,code,variable,kind,display\nSNOMED,1,HR,vital,x"}, "coding system"),
        (
            {"codes": "system,code,variable,kind,display\nLOINC,1-1,HR,vital,x\nLOINC,1-1,Resp,vital,y"},
            "conflicting",
        ),
        ({"units": "\nHR,bpm,1,0\nHR,bpm,2,0"}, "conflicting"),
        ({"ranges": "variable,min,max\nHR,0,350"}, "no range"),
        ({"ranges": "variable,min,max\n" + "\n".join(f"{v},5,1" for v in VARIABLES)}, "min"),
    ],
)
def test_bad_tables_raise_config_error(over: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Normaliser.from_rows(*_tables(**over))


def test_missing_identity_unit_raises() -> None:
    codes, units, ranges = _tables()
    with pytest.raises(ConfigError, match="identity"):
        Normaliser.from_rows(codes, [u for u in units if u["variable"] != "Hgb"], ranges)


# ------------------------------------------------------------------------------------------------ errors
def test_error_hierarchy() -> None:
    err = InvalidEvent("unknown_unit", "unit 'x' is not known", "unit")
    assert (
        isinstance(err, VigilError)
        and issubclass(ConfigError, VigilError)
        and issubclass(ModelError, VigilError)
    )
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.field, back.detail) == ("unknown_unit", "unit", "unit 'x' is not known")
    assert str(back) == "unit 'x' is not known"
    with pytest.raises(InvalidEvent) as info:
        normaliser().normalise("LOINC", "8867-4", "/min", 351.0)
    assert info.value.reason == "implausible_value"
