"""Code and unit coverage from the standards (docs/codes.md): MDC numeric / hex (MDIL) / reference-id codes, MDC
units, LOINC synonyms, UCUM conversion, HL7 SN and FHIR comparator values, and the site code map — on the
committed sample messages (tests/data/hl7/vigil_*.hl7, tests/data/fhir/vigil_*.json) and through a real socket.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
from pathlib import Path

import orjson
import pytest

from vigil import records
from vigil.codes import Normaliser, mdc_code, normaliser, read_table, site_normaliser
from vigil.errors import ConfigError, InvalidEvent
from vigil.ingest.fhir import map_observation
from vigil.ingest.hl7_oru import parse_oru
from vigil.ingest.values import hl7_value
from vigil.units import conversion
from vigil.variables import CANONICAL_UNITS, VAR_INDEX, VARIABLES

ROOT = Path(__file__).parent
HL7 = ROOT / "data" / "hl7"
FHIR = ROOT / "data" / "fhir"
SITE_MAP = ROOT / "data" / "codemaps" / "site.csv"
DOCS = ROOT.parent / "docs" / "codes.md"


def _decoded(events: list) -> list[tuple[str, float]]:  # type: ignore[type-arg]
    """(variable, canonical value) of each event, decoded by the worker's decoder."""
    out = []
    for ev in events:
        obs = records.decode(ev.value, ev.stream, ev.key)
        assert isinstance(obs, records.Observation), obs
        out.append((VARIABLES[obs.var], round(obs.value, 3)))
    return out


def _hl7(name: str, code_map: str | None = None):  # type: ignore[no-untyped-def]
    return parse_oru((HL7 / name).read_bytes(), secret="k", codes=site_normaliser(code_map))


def _fhir_entries(name: str) -> list[dict]:  # type: ignore[type-arg]
    return [e["resource"] for e in json.loads((FHIR / name).read_text())["entry"]]


# ------------------------------------------------------------------------------------------- sample messages
EXPECTED_HL7 = {
    "vigil_ihe_pcd01_gateway.hl7": [
        ("HR", 82.0), ("O2Sat", 95.0), ("HR", 81.0), ("SBP", 118.0), ("DBP", 64.0), ("MAP", 82.0),
        ("SBP", 120.01), ("DBP", 69.756), ("Resp", 18.0), ("Temp", 38.222), ("EtCO2", 36.003)],
    "vigil_philips_mdil.hl7": [
        ("HR", 72.0), ("O2Sat", 97.0), ("HR", 71.0), ("SBP", 128.0), ("DBP", 76.0), ("MAP", 93.0),
        ("SBP", 131.0), ("DBP", 66.0), ("MAP", 88.0), ("Resp", 16.0), ("Temp", 37.4), ("EtCO2", 38.0)],
    "vigil_mindray_style.hl7": [
        ("O2Sat", 93.0), ("HR", 104.0), ("Resp", 26.0), ("HR", 105.0), ("SBP", 92.0), ("DBP", 51.0),
        ("MAP", 64.0)],
    "vigil_lab_si_units.hl7": [
        ("WBC", 11.4), ("Platelets", 142.0), ("Hct", 41.0), ("Hgb", 13.532), ("Glucose", 140.525),
        ("Creatinine", 1.493), ("BUN", 26.61), ("Bilirubin_total", 1.462), ("Lactate", 4.2), ("TroponinI", 0.003),
        ("Potassium", 4.1), ("Magnesium", 1.945), ("Calcium", 8.818), ("Phosphate", 3.407), ("Glucose", 600.0),
        ("HCO3", 19.0), ("BaseExcess", -5.5), ("PTT", 32.5)],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED_HL7))
def test_hl7_sample_events_and_canonical_values(name: str) -> None:
    parsed = _hl7(name)
    assert parsed.ack_code == "AA" and parsed.errors == []
    assert _decoded(parsed.events) == EXPECTED_HL7[name]
    for ev in parsed.events:  # the event carries a packaged code in the canonical system name, and a unit that
        d = orjson.loads(ev.value)  # units.csv lists: the worker needs neither the site map nor the UCUM parser
        coded = normaliser().codes.get((d["system"], d["code"]))
        assert d["system"] in ("LOINC", "MDC") and coded is not None
        assert (coded[0], d["unit"]) in normaliser().units


def test_lab_sample_censored_values_published_at_the_limit_and_counted() -> None:
    parsed = _hl7("vigil_lab_si_units.hl7")
    assert parsed.censored == 2  # troponin <3 ng/L, glucose >600 mg/dL
    assert parsed.ignored == {"unmapped_code": 2}  # sodium 2951-2 and CRP 1988-5: not vigil variables


def test_site_code_map_adds_private_codes_and_default_unit() -> None:
    plain, mapped = _hl7("vigil_mindray_style.hl7"), _hl7("vigil_mindray_style.hl7", str(SITE_MAP))
    assert len(plain.events) == 7 and plain.ignored == {"unmapped_code": 4}
    assert len(mapped.events) == 8 and mapped.ignored == {"unmapped_code": 3}
    extra = orjson.loads(mapped.events[-1].value)
    assert (extra["system"], extra["code"], extra["unit"], extra["value"]) == ("LOINC", "8310-5", "Cel", 38.6)
    assert _decoded(mapped.events)[-1] == ("Temp", 38.6)


def test_fhir_bundle_sample() -> None:
    got, bad, censored = [], [], 0
    for resource in _fhir_entries("vigil_vital_signs_bundle.json"):
        res = map_observation(resource, secret="k", zone=None)
        if res.invalid is not None:
            bad.append((resource["id"], res.invalid.reason))
        got += _decoded(res.events)
        censored += res.censored
    assert got == [("HR", 88.0), ("O2Sat", 96.0), ("Temp", 38.5), ("SBP", 132.0), ("DBP", 84.0), ("Resp", 22.0),
                   ("HR", 90.0), ("Temp", 37.9), ("WBC", 15.1), ("Lactate", 10.0)]  # fmt: skip
    assert bad == [("weight", "unknown_code")] and censored == 1


def _sample_counts() -> dict[str, tuple[int, int, int]]:
    """sample -> (observations, observations that map to a vigil variable, events produced)."""
    out: dict[str, tuple[int, int, int]] = {}
    n = normaliser()
    for path in sorted(HL7.glob("vigil_*.hl7")):
        parsed = _hl7(path.name)
        obx = [s for s in path.read_bytes().decode("utf-8").split("\r") if s.startswith("OBX")]
        mapped = 0
        for seg in obx:
            f = seg.split("|")
            code = (f[3].split("^") + ["", "", ""])[:3]
            mapped += n.resolve(code[2], code[0], code[1]) is not None and f[11] not in ("X", "D", "W")
        out[path.name] = (len(obx), mapped, len(parsed.events))
    for path in sorted(FHIR.glob("vigil_*.json")):
        total = mapped = events = 0
        for resource in _fhir_entries(path.name):
            codings = [resource["code"]] + [c["code"] for c in resource.get("component", [])]
            for i, cc in enumerate(codings):
                if i == 0 and "component" in resource:
                    continue  # a panel: its components are the measurements
                total += 1
                mapped += any(n.resolve(c["system"], c["code"]) for c in cc["coding"])
            events += len(map_observation(resource, secret="k", zone=None).events)
        out[path.name] = (total, mapped, events)
    return out


def test_docs_table_reports_the_measured_counts() -> None:
    """docs/codes.md publishes, per sample, observations / mapped / events: the numbers this run measures."""
    table = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*`(vigil_[^`]+)`\s*\|[^|]*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", line)
        if m:
            table[m[1]] = (int(m[2]), int(m[3]), int(m[4]))
    counts = _sample_counts()
    assert table == counts
    for name, (_, mapped, events) in counts.items():  # every mapped observation produced an event
        assert events == mapped, name


# ------------------------------------------------------------------------------------------- MDC and LOINC
def test_mdc_hex_partition_form() -> None:
    assert mdc_code("0002-4bb8") == "150456" == str(2 * 65536 + 0x4BB8)
    assert mdc_code("0004-0AA0") == "264864" and mdc_code("8867-4") == "8867-4"
    n = normaliser()
    for system, code, name in [("MDIL", "0002-4bb8", ""), ("MDC", "150456", ""), ("MDC", "", "MDC_PULS_OXIM_SAT_O2"),
                               ("urn:iso:std:iso:11073:10101", "0002-4BB8", ""), ("MDC", "MDC_PULS_OXIM_SAT_O2", "")]:
        coded = n.resolve(system, code, name)
        assert coded is not None and (coded.var, coded.system, coded.code) == (VAR_INDEX["O2Sat"], "MDC", "150456")
    assert n.resolve("MDIL", "0002-4bd8") is None  # perfusion index: not a vigil variable


@pytest.mark.parametrize(("unit", "value", "expected"), [
    ("266560", 100.4, 38.0), ("MDC_DIM_FAHR", 100.4, 38.0), ("0004-1140", 100.4, 38.0), ("268192", 37.2, 37.2),
    ("MDC_DIM_DEGC", 37.2, 37.2), ("0004-17a0", 37.2, 37.2)])  # fmt: skip
def test_mdc_units_numeric_hex_and_refid(unit: str, value: float, expected: float) -> None:
    assert normaliser().normalise("MDC", "150364", unit, value)[1] == pytest.approx(expected, abs=1e-6)


def test_mdc_rate_units_are_not_swapped() -> None:
    with pytest.raises(InvalidEvent) as e:
        normaliser().normalise("MDC", "147842", "MDC_DIM_RESP_PER_MIN", 60.0)
    assert e.value.reason == "unknown_unit"
    assert normaliser().normalise("MDC", "151562", "MDC_DIM_RESP_PER_MIN", 14.0)[:2] == (VAR_INDEX["Resp"], 14.0)


@pytest.mark.parametrize(("code", "variable"), [
    ("26464-8", "WBC"), ("6690-2", "WBC"), ("26515-7", "Platelets"), ("777-3", "Platelets"), ("20570-8", "Hct"),
    ("4544-3", "Hct"), ("59408-5", "O2Sat"), ("2708-6", "O2Sat"), ("8331-1", "Temp"), ("8332-9", "Temp"),
    ("8328-7", "Temp"), ("8333-7", "Temp"), ("8329-5", "Temp"), ("14749-6", "Glucose"), ("14682-9", "Creatinine"),
    ("14937-7", "BUN"), ("14631-6", "Bilirubin_total"), ("2518-9", "Lactate"), ("89579-7", "TroponinI"),
    ("8893-0", "HR"), ("76534-7", "SBP"), ("76535-4", "DBP"), ("76536-2", "MAP"), ("76214-6", "MAP"),
    ("76215-3", "SBP"), ("76213-8", "DBP"), ("11557-6", "PaCO2"), ("42719-5", "Bilirubin_total")])  # fmt: skip
def test_loinc_synonyms(code: str, variable: str) -> None:
    coded = normaliser().resolve("http://loinc.org", code)
    assert coded is not None and VARIABLES[coded.var] == variable


def test_codes_table_has_no_duplicates_and_every_variable_a_loinc_code() -> None:
    rows = read_table("codes.csv")
    keys = [(r["system"], r["code"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert {r["variable"] for r in rows if r["system"] == "LOINC"} == set(VARIABLES)


# ------------------------------------------------------------------------------------------------ UCUM
@pytest.mark.parametrize(("variable", "unit", "value", "expected"), [
    ("Temp", "[degF]", 98.6, 37.0), ("Temp", "K", 310.15, 37.0),
    ("WBC", "{cells}/uL", 7200, 7.2), ("WBC", "/uL", 7200, 7.2), ("WBC", "10*9/L", 7.2, 7.2),
    ("WBC", "10*3/uL", 7.2, 7.2), ("Platelets", "/nL", 250, 250.0),
    ("Glucose", "mmol/L", 5.0, 90.078), ("Glucose", "g/L", 0.9, 90.0),
    ("Creatinine", "umol/L", 88.4, 1.0), ("Creatinine", "mmol/L", 0.0884, 1.0),
    ("Bilirubin_total", "umol/L", 17.1, 1.0), ("Bilirubin_direct", "umol/L", 17.1, 1.0),
    ("BUN", "mmol/L", 1.0, 2.801), ("Lactate", "mg/dL", 9.008, 1.0), ("Lactate", "umol/L", 2000, 2.0),
    ("Magnesium", "meq/L", 2.0, 2.431), ("Calcium", "meq/L", 5.0, 10.02), ("Potassium", "meq/L", 4.0, 4.0),
    ("SBP", "kPa", 16.0, 120.01), ("Hct", "L/L", 0.42, 42.0), ("FiO2", "%", 40, 0.4), ("TroponinI", "ng/L", 12, 0.012),
    ("Hgb", "g/L", 135, 13.5), ("PTT", "min", 0.5, 30.0), ("Fibrinogen", "g/L", 3.1, 310.0)])  # fmt: skip
def test_ucum_conversion(variable: str, unit: str, value: float, expected: float) -> None:
    var, canonical, _ = normaliser().normalise("LOINC", normaliser().codes_for(VAR_INDEX[variable])[0], unit, value)
    assert VARIABLES[var] == variable and canonical == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize(("variable", "unit"), [
    ("HR", "{breaths}/min"), ("Resp", "{beats}/min"), ("EtCO2", "%"), ("Temp", "C"), ("Temp", "F"),
    ("Creatinine", "meq/L"), ("AST", "mmol/L"), ("Glucose", "mmol"), ("HR", "not a unit"), ("FiO2", ""),
    ("WBC", "{copies}/uL"), ("Glucose", "x" * 200), ("O2Sat", "262657"), ("HR", "1000")])  # fmt: skip
def test_ucum_refuses_incommensurable_or_mislabelled_units(variable: str, unit: str) -> None:
    assert conversion(variable, unit) is None
    with pytest.raises(InvalidEvent) as e:
        normaliser().normalise("LOINC", normaliser().codes_for(VAR_INDEX[variable])[0], unit, 1.0)
    assert e.value.reason == "unknown_unit"


def test_units_table_agrees_with_ucum() -> None:
    """Every units.csv row that is a UCUM unit converts as the UCUM library + analytes.csv say (within 0.1 %)."""
    checked = 0
    for row in read_table("units.csv"):
        ucum = conversion(row["variable"], row["unit"])
        if ucum is None:
            continue  # an alias that is not UCUM (mmHg, bpm, degF, IU/L, mEq/L, ...) or an MDC unit code
        checked += 1
        factor, offset = float(row["factor"]), float(row["offset"])
        assert ucum[0] == pytest.approx(factor, rel=1e-3), row
        assert ucum[1] == pytest.approx(offset, abs=1e-6), row
    assert checked >= 60


# ------------------------------------------------------------------------------------ SN and comparators
@pytest.mark.parametrize(("vtype", "comps", "expected"), [
    ("SN", ["", "182"], (182.0, "")), ("SN", ["=", "7.4"], (7.4, "")), ("SN", [">", "10"], (10.0, ">")),
    ("SN", ["<", "0.5"], (0.5, "<")), ("SN", ["<=", "3"], (3.0, "<=")), ("SN", [">=", "1e2"], (100.0, ">=")),
    ("NM", ["98.6"], (98.6, "")), ("NM", ["<0.01"], (0.01, "<")), ("NM", ["-2.5"], (-2.5, ""))])  # fmt: skip
def test_hl7_numeric_values(vtype: str, comps: list[str], expected: tuple[float, str]) -> None:
    assert hl7_value(vtype, comps) == expected


@pytest.mark.parametrize(("vtype", "comps", "reason"), [
    ("SN", ["", "1", ":", "2"], "bad_type"), ("SN", ["", "2", "-", "5"], "bad_type"), ("SN", ["<>", "3"], "bad_type"),
    ("SN", ["", ""], "missing_field"), ("NM", ["abc"], "bad_type"), ("NM", ["nan"], "bad_type"),
    ("NM", ["inf"], "bad_type"), ("NM", [""], "missing_field")])  # fmt: skip
def test_hl7_numeric_values_refused(vtype: str, comps: list[str], reason: str) -> None:
    with pytest.raises(InvalidEvent) as e:
        hl7_value(vtype, comps)
    assert e.value.reason == reason


def test_sn_ratio_in_a_message_is_dead_lettered_with_AE() -> None:
    msg = ("MSH|^~\\&|LIS|LAB|VIGIL|H|20261204093000+0000||ORU^R01|R-1|P|2.5.1\rPID|||MRN-9\r"
           "OBX|1|SN|2524-7^Lactate^LN||^1^:^2|mmol/L|||||F|||20261204093000+0000\r"
           "OBX|2|SN|2524-7^Lactate^LN||>^20|mmol/L|||||F|||20261204093000+0000\r")  # fmt: skip
    parsed = parse_oru(msg.encode(), secret="k")
    assert parsed.ack_code == "AE" and [(e.field, e.invalid.reason) for e in parsed.errors] == [("OBX-5", "bad_type")]
    assert "ratio or range" in parsed.errors[0].invalid.detail
    assert _decoded(parsed.events) == [("Lactate", 20.0)] and parsed.censored == 1


def test_fhir_comparator() -> None:
    base = _fhir_entries("vigil_vital_signs_bundle.json")[8]
    assert base["valueQuantity"]["comparator"] == ">"
    res = map_observation(base, secret="k", zone=None)
    assert res.invalid is None and res.censored == 1 and _decoded(res.events) == [("Lactate", 10.0)]
    bad = json.loads(json.dumps(base))
    bad["valueQuantity"]["comparator"] = "~"
    assert map_observation(bad, secret="k", zone=None).invalid is not None


# ---------------------------------------------------------------------------------------- site code map
def test_site_map_in_fhir_uses_a_local_coding_system() -> None:
    resource = _fhir_entries("vigil_vital_signs_bundle.json")[4]
    resource["code"]["coding"] = [{"system": "http://hospital.example/fhir/CodeSystem/vitals", "code": "rr-manual"}]
    del resource["valueQuantity"]["code"], resource["valueQuantity"]["unit"]
    assert map_observation(resource, secret="k", zone=None).invalid.reason == "unknown_code"  # type: ignore[union-attr]
    res = map_observation(resource, secret="k", zone=None, codes=site_normaliser(str(SITE_MAP)))
    assert res.invalid is None
    d = orjson.loads(res.events[0].value)
    assert (d["system"], d["code"], d["unit"], d["value"]) == ("LOINC", "9279-1", "/min", 22.0)


@pytest.mark.parametrize(("body", "message"), [
    ("system,code,variable,unit\nL,X1,HRX,/min\n", "line 2: unknown variable 'HRX'"),
    ("system,code,variable,unit\n# c\nL,X1,HR,furlongs\n", "line 3: unknown unit 'furlongs' for HR"),
    ("system,code,variable,unit\nL,X1,HR,/min\nL,X2,Resp,/min\nL,X1,HR,/min\n",
     "line 4: duplicate code L X1 (already on line 2)"),
    ("system,code,variable,unit\nLN,8867-4,Resp,/min\n", "line 2: duplicate code LN 8867-4: codes.csv already maps"),
    ("system,code,variable,unit\nMDIL,0002-4182,HR,\n", "line 2: duplicate code MDIL 0002-4182"),
    ("system,code\nL,X1\n", "line 1: the header needs"), ("# only a comment\n", "empty"),
    ("system,code,variable,unit\n,X1,HR,/min\n", "line 2: system and code must not be empty"),
    ("system,code,variable,unit\nL,X1,HR,/min,extra,more\n", "line 2: 6 fields"),
    ("system,code,variable,unit\nL,X1,Temp,C\n", "line 2: unknown unit 'C' for Temp")])  # fmt: skip
def test_site_map_validation(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        normaliser().with_site_map(path)
    assert message in str(e.value) and "bad.csv" in str(e.value)


def test_site_map_example_is_valid_and_missing_file_is_a_config_error(tmp_path: Path) -> None:
    n = normaliser().with_site_map(SITE_MAP)
    assert isinstance(n, Normaliser) and len({c for c in n.site.values()}) == 3
    with pytest.raises(ConfigError, match="cannot be read"):
        normaliser().with_site_map(tmp_path / "missing.csv")
    rows = list(csv.reader(ln for ln in SITE_MAP.read_text().splitlines() if not ln.startswith("#")))
    assert rows[0] == ["system", "code", "variable", "unit", "display"]
    assert all(CANONICAL_UNITS[r[2]] for r in rows[1:])


def test_listener_refuses_to_start_with_a_bad_code_map(tmp_path: Path) -> None:
    from vigil.config import Settings
    from vigil.ingest.server_fhir import FhirServer
    from vigil.ingest.server_hl7 import Hl7Listener

    path = tmp_path / "site.csv"
    path.write_text("system,code,variable,unit\nL,X1,HR,/min\nL,X1,HR,/min\n")
    s = Settings(ingest={"code_map": str(path)})  # type: ignore[arg-type]
    for cls in (Hl7Listener, FhirServer):
        with pytest.raises(ConfigError, match="line 3: duplicate code L X1"):
            cls(s)


@pytest.mark.broker
def test_site_map_through_the_socket(ingest_env, conforms) -> None:  # type: ignore[no-untyped-def]
    """A listener started with the example code map publishes the Mindray-style sample's private temperature
    code under LOINC 8310-5; every record is valid for its schema and for the worker's decoder."""
    from vigil.ingest.mllp import Framer, frame
    from vigil.ingest.server_hl7 import Hl7Listener
    from vigil.kafka_io import read_at_least

    s = ingest_env(code_map=str(SITE_MAP))
    raw = (HL7 / "vigil_mindray_style.hl7").read_bytes()

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame(raw))
            await writer.drain()
            framer, acks = Framer(), []
            while not acks:
                data = await asyncio.wait_for(reader.read(65536), 15)
                assert data
                acks += framer.feed(data)
            writer.close()
            vitals = await read_at_least(s, s.topic("vitals"), 8)
        finally:
            await listener.stop()
        assert b"MSA|AA|MR-0003" in acks[0].data
        assert _decoded([records_event(r) for r in vitals])[-1] == ("Temp", 38.6)
        assert [orjson.loads(r.value)["code"] for r in vitals][-1] == "8310-5"
        conforms(s, {"vitals": vitals})

    asyncio.run(main())


def records_event(rec):  # type: ignore[no-untyped-def]
    from vigil.ingest.events import Event

    return Event("vitals", rec.key, rec.value)


def test_codes_table_is_published() -> None:
    """docs/codes.md lists every code of codes.csv and every MDC unit (the coverage table is not stale)."""
    text = DOCS.read_text()
    missing = [r["code"] for r in read_table("codes.csv") if f"`{r['code']}`" not in text]
    missing += [r["refid"] for r in read_table("mdc_units.csv") if r["refid"] not in text]
    assert missing == []


def test_mdc_chemistry_units() -> None:
    n = normaliser()
    assert n.normalise("LOINC", "14682-9", "MDC_DIM_MICRO_MOLE_PER_L", 88.42)[1] == pytest.approx(1.0, rel=1e-3)
    assert n.normalise("LOINC", "2345-7", "0004-1272", 5.0)[1] == pytest.approx(90.08, rel=1e-3)  # mmol/L, hex
    assert n.normalise("LOINC", "2345-7", "264274", 90.0)[1] == 90.0  # MDC_DIM_MILLI_G_PER_DL
    assert n.normalise("MDC", "150364", "MDC_DIM_KELVIN", 310.15)[1] == pytest.approx(37.0)
