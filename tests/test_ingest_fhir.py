"""FHIR R4 Observations, end to end: HTTP -> server -> embedded broker -> topics (tests/data/fhir/README.md)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vigil.config import TimeWindowSettings
from vigil.errors import REASONS
from vigil.ingest.events import patient_key
from vigil.ingest.server_fhir import OUTCOMES, FhirServer
from vigil.kafka_io import read_at_least
from vigil.metrics import IngestMetrics

pytestmark = pytest.mark.broker
DATA = Path(__file__).parent / "data" / "fhir"
KEY = "test-pseudonym-key"  # conftest.INGEST_KEY: the key the ingest_env settings use
SPEC = ["heart-rate", "respiratory-rate", "body-temperature", "satO2", "bloodpressure", "f001-glucose"]


def replay_env(ingest_env, **ingest: object):  # type: ignore[no-untyped-def]
    """ingest_env with time_window.mode=replay: the spec examples are dated years ago."""
    s = ingest_env(**ingest)
    s.time_window = TimeWindowSettings(mode="replay")
    return s


def example(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((DATA / f"observation-example-{name}.json").read_text())


async def post(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers={"Content-Type": "application/fhir+json"}) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def test_spec_examples_through_http(ingest_env, conforms) -> None:  # type: ignore[no-untyped-def]
    s = replay_env(ingest_env, site_timezone="UTC")  # the spec examples carry dates without a time zone

    async def main() -> None:
        server = await FhirServer(s).start()
        url = f"http://127.0.0.1:{server.port}/fhir/Observation"
        try:
            async with aiohttp.ClientSession() as http:
                answers = [await post(http, url, example(n)) for n in SPEC]
                apgar = json.loads((DATA / "fhir-resources-R4B-Observation-apgar.json").read_text())
                status, outcome, _ = await post(http, url, apgar)
            vitals = await read_at_least(s, s.topic("vitals"), 6)
            labs = await read_at_least(s, s.topic("labs"), 1)
            dead = await read_at_least(s, s.topic("dead-letter"), 1)
        finally:
            await server.stop()
        assert [a[0] for a in answers] == [201] * 6
        base = f"{url}/"
        assert all(a[2]["Location"] == f"{base}{a[1]['id']}/_history/1" for a in answers)
        assert all(a[1]["id"].startswith("obs-") and a[1]["meta"]["versionId"] == "1" for a in answers)
        assert [a[1]["code"] for a in answers] == [example(n)["code"] for n in SPEC]  # the created resource
        assert status == 422 and outcome["resourceType"] == "OperationOutcome"
        assert "9273-4" in outcome["issue"][0]["diagnostics"]
        example_pt = patient_key("Patient/example", None, KEY).encode()
        assert {r.key for r in vitals} == {example_pt}
        got = sorted((orjson.loads(r.value)["code"], orjson.loads(r.value)["value"]) for r in vitals)
        assert got == [("2708-6", 95.0), ("8310-5", 36.5), ("8462-4", 60.0), ("8480-6", 107.0), ("8867-4", 44.0),
                       ("9279-1", 26.0)]  # fmt: skip
        assert labs[0].key == patient_key("Patient/f001", None, KEY).encode()
        assert orjson.loads(labs[0].value)["time"] == "2013-04-02T08:30:10+00:00"  # normalised to UTC
        d = orjson.loads(dead[0].value)
        raw = base64.b64decode(d["raw_b64"]).decode()
        assert d["reason"] == "unknown_code" and d["source_topic"] == "fhir-http"
        assert "Chalmers" not in raw and "12345" not in raw and dead[0].key == patient_key("12345", None, KEY).encode()
        conforms(s, {"vitals": vitals, "labs": labs, "dead-letter": dead})

    asyncio.run(main())


def test_bundles_naive_times_and_errors(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = replay_env(ingest_env, max_message_bytes=4096)  # no site zone: date-only examples are rejected
    sat, hr = example("satO2"), example("heart-rate")
    bad = copy.deepcopy(sat)
    bad["valueQuantity"]["value"] = 140
    bad["identifier"][0]["value"] = "other"

    def bundle(kind: str, *resources: dict) -> dict:  # type: ignore[type-arg]
        return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}

    async def main() -> None:
        server = await FhirServer(s).start()
        base = f"http://127.0.0.1:{server.port}/fhir"
        try:
            async with aiohttp.ClientSession() as http:
                naive = await post(http, f"{base}/Observation", hr)
                tx = await post(http, base, bundle("transaction", sat, bad))
                batch = await post(http, base, bundle("batch", sat, bad))
                again = await post(http, base, bundle("collection", sat))
                junk = await post(http, f"{base}/Observation", b"{not json")
                wrong = await post(http, f"{base}/Observation", {"resourceType": "Patient"})
                big = await post(http, f"{base}/Observation", b" " * 10_000)
            vitals = await read_at_least(s, s.topic("vitals"), 2)
            dead = await read_at_least(s, s.topic("dead-letter"), 6)
        finally:
            await server.stop()
        assert naive[0] == 422 and "UTC offset" in naive[1]["issue"][0]["diagnostics"]
        assert tx[0] == 422 and "entry[1]" in tx[1]["issue"][0]["diagnostics"]
        assert batch[0] == 200
        statuses = [e["response"]["status"] for e in batch[1]["entry"]]
        assert statuses == ["201 Created", "422 Unprocessable Entity"]
        assert again[0] == 200 and again[1]["entry"][0]["response"]["location"] == \
            batch[1]["entry"][0]["response"]["location"]  # fmt: skip
        assert (junk[0], wrong[0], big[0]) == (400, 400, 413)
        assert all(x[1]["resourceType"] == "OperationOutcome" for x in (junk, wrong, big))
        v = [orjson.loads(r.value) for r in vitals]
        assert len(v) == 2 and v[0]["seq"] == v[1]["seq"]  # the resend carries the same event id
        reasons = sorted(orjson.loads(r.value)["reason"] for r in dead)
        assert reasons == ["bad_type", "bad_type", "implausible_value", "implausible_value", "malformed_json",
                           "naive_timestamp"]  # fmt: skip

    asyncio.run(main())


def test_metrics_count_outcomes_and_carry_no_identifiers(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = replay_env(ingest_env, site_timezone="UTC", max_message_bytes=4096)
    hr, sat = example("heart-rate"), example("satO2")
    bad = copy.deepcopy(sat)
    bad["valueQuantity"]["value"] = 140
    bad["identifier"][0]["value"] = "other"
    bad["subject"] = {"identifier": {"value": "MRN-PRIV-4711"}}
    metrics = IngestMetrics(CollectorRegistry())
    reg = metrics.registry

    def bundle(kind: str, *resources: dict) -> dict:  # type: ignore[type-arg]
        return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, {"protocol": "fhir", **labels})

    async def main() -> list[int]:
        server = await FhirServer(s, metrics=metrics).start()
        base = f"http://127.0.0.1:{server.port}/fhir"
        try:
            assert value("vigil_ingest_up") == 1
            async with aiohttp.ClientSession() as http:
                statuses = [
                    (await post(http, f"{base}/Observation", hr))[0],
                    (await post(http, f"{base}/Observation", bad))[0],
                    (await post(http, f"{base}/Observation", b"{not json MRN-PRIV-4711"))[0],
                    (await post(http, base, bundle("transaction", sat, bad)))[0],
                    (await post(http, base, bundle("batch", sat, bad)))[0],
                    (await post(http, f"{base}/Observation", b" " * 10_000))[0],
                ]  # fmt: skip
                async with http.get(f"{base}/Observation") as r:
                    statuses.append(r.status)
        finally:
            await server.stop()
        assert value("vigil_ingest_up") == 0
        return statuses

    assert asyncio.run(main()) == [201, 422, 400, 422, 200, 413, 405]
    outcomes = {o: value("vigil_ingest_messages_total", outcome=o) for o in (*OUTCOMES.values(), "other")}
    assert outcomes == {"created": 1, "ok": 1, "rejected": 1, "too_large": 1, "unprocessable": 2,
                        "unavailable": None, "unauthorized": None, "not_acceptable": None, "unsupported_media": None,
                        "other": 1}  # fmt: skip
    observations = {o: value("vigil_ingest_observations_total", outcome=o) for o in ("published", "rejected",
                                                                                       "rolled_back")}  # fmt: skip
    assert observations == {"published": 2, "rejected": 3, "rolled_back": 1}
    dead = {r: value("vigil_ingest_dead_letters_total", reason=r) for r in ("implausible_value", "malformed_json",
                                                                             "bad_type")}  # fmt: skip
    assert dead == {"implausible_value": 3, "malformed_json": 1, "bad_type": 1}
    assert value("vigil_ingest_message_seconds_count") == 7 and value("vigil_ingest_message_seconds_sum") > 0
    text = generate_latest(reg).decode()
    for secret in ("MRN-PRIV-4711", "Patient/example", patient_key("Patient/example", None, KEY),
                   patient_key("MRN-PRIV-4711", None, KEY), "obs-"):  # fmt: skip
        assert secret not in text
    allowed = {"protocol": {"fhir"}, "outcome": {*OUTCOMES.values(), "other", "published", "rejected", "rolled_back"},
               "reason": {*REASONS, "other"}}  # fmt: skip
    for fam in reg.collect():
        for sample in fam.samples:
            assert all(k == "le" or v in allowed[k] for k, v in sample.labels.items()), sample


def test_rest_conformance_validated_with_fhir_resources(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """CapabilityStatement at /fhir/metadata; create = 201 + Location + ETag + the created resource (Prefer
    honoured); 415 for XML; 406 when only XML is acceptable; _format / Accept choose the JSON media type;
    batch and transaction answered per entry. Every response parses as its FHIR R4B model."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    s = replay_env(ingest_env, site_timezone="UTC")
    hr, sat = example("heart-rate"), example("satO2")
    get_obs = copy.deepcopy(hr)
    get_obs["id"] = "other-id"

    async def main() -> dict[str, tuple[int, dict[str, str], bytes]]:
        server = await FhirServer(s).start()
        base = f"http://127.0.0.1:{server.port}/fhir"
        out: dict[str, tuple[int, dict[str, str], bytes]] = {}

        async def call(name: str, method: str, url: str, body: object = None, **headers: str) -> None:
            data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
            async with http.request(method, url, data=data, headers=headers) as r:
                out[name] = (r.status, r.headers.copy(), await r.read())  # type: ignore[assignment]

        try:
            async with aiohttp.ClientSession() as http:
                fj = "application/fhir+json"
                await call("metadata", "GET", f"{base}/metadata")
                await call("create", "POST", f"{base}/Observation", hr, **{"Content-Type": fj})
                await call("minimal", "POST", f"{base}/Observation", hr, **{"Content-Type": fj,
                                                                             "Prefer": "return=minimal"})
                await call("oo", "POST", f"{base}/Observation", hr, **{"Content-Type": fj,
                                                                        "Prefer": "return=OperationOutcome"})
                await call("xml", "POST", f"{base}/Observation", b"<Observation xmlns='http://hl7.org/fhir'/>",
                           **{"Content-Type": "application/fhir+xml"})
                await call("accept_xml", "POST", f"{base}/Observation", hr,
                           **{"Content-Type": fj, "Accept": "application/fhir+xml"})
                await call("format_xml", "GET", f"{base}/metadata?_format=xml")
                await call("format_json", "GET", f"{base}/metadata?_format=application/json")
                await call("accept_json", "POST", f"{base}/Observation", sat,
                           **{"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"})
                batch = {"resourceType": "Bundle", "type": "batch", "entry": [
                    {"resource": hr, "request": {"method": "POST", "url": "Observation"}},
                    {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Observation"}},
                    {"resource": get_obs, "request": {"method": "PUT", "url": "Observation/x"}}]}
                await call("batch", "POST", base, batch, **{"Content-Type": fj})
                tx = {"resourceType": "Bundle", "type": "transaction",
                      "entry": [{"resource": sat, "request": {"method": "POST", "url": "Observation"}}]}
                await call("transaction", "POST", base, tx, **{"Content-Type": fj})
        finally:
            await server.stop()
        return out

    out = asyncio.run(main())
    status, headers, body = out["metadata"]
    cap = CapabilityStatement.model_validate(orjson.loads(body))
    assert status == 200 and headers["Content-Type"].startswith("application/fhir+json")
    assert cap.kind == "instance" and cap.fhirVersion == "4.0.1" and "json" in cap.format
    res = cap.rest[0].resource[0]
    assert res.type == "Observation" and [i.code for i in res.interaction] == ["create"]
    assert sorted(i.code for i in cap.rest[0].interaction) == ["batch", "transaction"]

    status, headers, body = out["create"]
    created = Observation.model_validate(orjson.loads(body))
    assert status == 201 and created.id.startswith("obs-") and created.meta.versionId == "1"
    assert headers["Location"].endswith(f"/fhir/Observation/{created.id}/_history/1") and headers["ETag"] == 'W/"1"'
    assert created.code.coding[0].code == "8867-4" and created.valueQuantity.value == 44
    assert out["minimal"][0] == 201 and out["minimal"][2] == b"" and out["minimal"][1]["Location"] == \
        headers["Location"]  # fmt: skip
    assert out["oo"][0] == 201 and OperationOutcome.model_validate(orjson.loads(out["oo"][2])).issue[0].severity == \
        "information"  # fmt: skip
    for name, code in (("xml", 415), ("accept_xml", 406), ("format_xml", 406)):
        status, headers, body = out[name]
        assert status == code, (name, status)
        assert OperationOutcome.model_validate(orjson.loads(body)).issue[0].code == "not-supported"
    assert out["format_json"][0] == 200 and out["format_json"][1]["Content-Type"].startswith("application/json")
    assert out["accept_json"][0] == 201 and out["accept_json"][1]["Content-Type"].startswith("application/json")

    status, _, body = out["batch"]
    bundle = Bundle.model_validate(orjson.loads(body))
    assert status == 200 and bundle.type == "batch-response"
    assert [e.response.status for e in bundle.entry] == ["201 Created", "422 Unprocessable Entity", "400 Bad Request"]
    assert bundle.entry[0].response.location == f"Observation/{created.id}/_history/1"
    assert bundle.entry[1].response.outcome is not None and bundle.entry[2].response.outcome is not None
    status, _, body = out["transaction"]
    tx_bundle = Bundle.model_validate(orjson.loads(body))
    assert status == 200 and tx_bundle.type == "transaction-response"
    assert [e.response.status for e in tx_bundle.entry] == ["201 Created"]


def test_implausible_time_is_refused_and_dead_lettered(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """time_window live (the production default): an Observation dated 9999-12-31 -> 422 naming the reason, a
    dead letter
    time_out_of_range, no event; one dated now is created."""
    import datetime as dt

    s = ingest_env()
    s.time_window.mode = "live"  # the test fixtures default to replay mode (replayed history)
    future, now = example("heart-rate"), example("heart-rate")
    future["effectiveDateTime"] = "9999-12-31T23:59:59Z"
    now["effectiveDateTime"] = dt.datetime.now(dt.UTC).isoformat()
    now["id"] = "now"

    async def main() -> tuple[list, list, list]:  # type: ignore[type-arg]
        server = await FhirServer(s).start()
        url = f"http://127.0.0.1:{server.port}/fhir/Observation"
        try:
            async with aiohttp.ClientSession() as http:
                answers = [await post(http, url, future), await post(http, url, now)]
            vitals = await read_at_least(s, s.topic("vitals"), 1)
            dead = await read_at_least(s, s.topic("dead-letter"), 1)
        finally:
            await server.stop()
        return answers, vitals, dead

    answers, vitals, dead = asyncio.run(main())
    (status, outcome, _), (ok, _, _) = answers
    assert status == 422 and ok == 201
    issue = outcome["issue"][0]
    assert "9999-12-31" in issue["diagnostics"] and "after the clock" in issue["diagnostics"]
    assert issue["expression"] == ["Observation.effective"]
    assert len(vitals) == 1 and len(dead) == 1
    d = orjson.loads(dead[0].value)
    assert d["reason"] == "time_out_of_range" and d["field"] == "Observation.effective"


PLANTED = ("MRN-PHI-8675309", "Zebediah", "Quuxworth", "555-0199", "1931-02-03", "Elm Street 42",
           "Patient/pt-8675309")  # fmt: skip


def _planted_patient() -> dict:  # type: ignore[type-arg]
    return {"resourceType": "Patient", "id": "pt-8675309",
            "identifier": [{"system": "urn:mrn", "value": "MRN-PHI-8675309"}],
            "name": [{"family": "Quuxworth", "given": ["Zebediah"]}],
            "telecom": [{"system": "phone", "value": "555-0199"}], "birthDate": "1931-02-03",
            "address": [{"line": ["Elm Street 42"]}],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Zebediah "
                                                  "Quuxworth, MRN-PHI-8675309</div>"}}  # fmt: skip


def _planted_observation(code: str = "8867-4", value: float = 72, when: str = "2026-01-01T12:00:00Z") -> dict:  # type: ignore[type-arg]
    pt = _planted_patient()
    pt["id"] = "p1"
    return {"resourceType": "Observation", "status": "final", "contained": [pt],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Zebediah "
                                                  "Quuxworth 555-0199</div>"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Zebediah"}],
                     "text": "Quuxworth"},
            "subject": {"reference": "#p1", "display": "Zebediah Quuxworth"},
            "note": [{"text": "called 555-0199, born 1931-02-03, lives Elm Street 42"}],
            "performer": [{"reference": "Patient/pt-8675309", "display": "Zebediah Quuxworth"}],
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}  # fmt: skip


def test_planted_identifiers_reach_no_topic_log_or_metric(ingest_env, caplog, all_records) -> None:  # type: ignore[no-untyped-def]
    """A Patient posted as an Observation, Observations carrying names / MRN / phone / birth date in a contained
    Patient, subject.display, note, narrative and performer (valid, unknown code, implausible value, far-future
    time), Bundles (batch and a wrong type) and a non-JSON body: every topic with the test prefix, the
    listener's log and its metrics are free of every planted string; the dead letters keep only the
    allow-listed projection."""
    import logging

    s = ingest_env()
    metrics = IngestMetrics(CollectorRegistry())
    caplog.set_level(logging.DEBUG)
    s.time_window = TimeWindowSettings(mode="live", max_past_s=10 * 365 * 86400.0)
    patient = _planted_patient()
    bodies = [
        ("Observation", patient),
        ("Observation", _planted_observation()),  # valid: published under the pseudonym only
        ("Observation", _planted_observation(code="99999-9")),  # unknown code
        ("Observation", _planted_observation(value=900)),  # implausible
        ("Observation", _planted_observation(when="9999-12-31T00:00:00Z")),  # time_out_of_range
        ("", {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": patient},
                                                                   {"resource": _planted_observation(code="1-1")}]}),
        ("", {"resourceType": "Bundle", "type": "document", "entry": [{"resource": patient}]}),
        ("", {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient}]}),
        ("Observation", b'{"resourceType": "Patient", "name": "Zebediah Quuxworth", MRN-PHI-8675309'),
    ]  # fmt: skip

    async def main() -> tuple[list[int], dict[str, list[bytes]]]:
        server = await FhirServer(s, metrics=metrics).start()
        base = f"http://127.0.0.1:{server.port}/fhir"
        try:
            async with aiohttp.ClientSession() as http:
                statuses = [(await post(http, f"{base}/{path}".rstrip("/"), body))[0] for path, body in bodies]
        finally:
            await server.stop()
        return statuses, await all_records(s)

    statuses, topics = asyncio.run(main())
    assert statuses == [400, 201, 422, 422, 422, 200, 400, 422, 400]
    assert len(topics[s.topic("vitals")]) == 1
    dead = [orjson.loads(v) for v in topics[s.topic("dead-letter")]]
    assert sorted(d["reason"] for d in dead) == sorted(["bad_type", "unknown_code", "implausible_value",
                                                        "time_out_of_range", "bad_type", "unknown_code", "bad_type",
                                                        "bad_type", "malformed_json"])  # fmt: skip
    kept = [orjson.loads(base64.b64decode(d["raw_b64"])) for d in dead if d["raw_b64"]]
    assert {"resourceType": "Patient", "error_at": "resourceType"} in kept
    allowed = {"resourceType", "status", "code", "value_type", "unit", "component", "error_at", "json_type"}
    assert all(set(k) <= allowed for k in kept), kept
    haystack = [v for vs in topics.values() for v in vs]
    haystack += [base64.b64decode(d["raw_b64"]) for d in dead if d["raw_b64"]]
    haystack.append(caplog.text.encode())
    haystack.append(generate_latest(metrics.registry))
    for secret in PLANTED:
        hits = [h[:200] for h in haystack if secret.encode() in h]
        assert not hits, (secret, hits)
