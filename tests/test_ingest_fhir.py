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
