"""``vigil api`` over real HTTP on loopback and the embedded broker: token auth, a patient's and a ward's current
risk (the alert level in force beside it), open alerts, an idempotent acknowledgement published to
``alert-acks`` and audited, the OpenAPI document, and a schema-driven fuzz of the inputs (hypothesis)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from vigil import audit
from vigil.api.server import ACTIONS, ApiServer, openapi
from vigil.catalog import schema_for
from vigil.config import REPO_ROOT, Settings
from vigil.kafka_io import produce_many, read_at_least

pytestmark = pytest.mark.broker
TOKEN = "test-api-token"
T = "2026-01-01T0{h}:00:00+00:00"


def _score(patient: str, ward: str, h: int, risk: float) -> dict[str, Any]:
    return {"v": 1, "score_id": f"s-{patient}-{h}", "patient": patient, "ward": ward, "bed": "1", "unit": "MICU",
            "time": T.format(h=h), "row": h, "partial": False,
            "model": {"name": "sepsis-gbm", "version": "1", "provider": "CPUExecutionProvider"},
            "risk": risk, "threshold": 0.55, "above_threshold": risk >= 0.55,
            "news2": {"total": 3 + h, "parts": {"resp": h}},
            "emitted_at": T.format(h=h), "trigger_time": T.format(h=h)}  # fmt: skip


def _alert(patient: str, ward: str, event: str, aid: str, episode: str) -> dict[str, Any]:
    return {"v": 1, "alert_id": aid, "event": event, "episode_id": episode, "type": "model_risk", "severity": "high",
            "patient": patient, "ward": ward, "bed": "1", "unit": "MICU", "time": T.format(h=3), "row": 3,
            "model": {"name": "sepsis-gbm", "version": "1"}, "score": 0.7, "threshold": 0.55, "raise_at": 0.55}


@pytest.fixture
def api_env(settings_factory: Callable[..., Settings], topics_factory: Callable[..., list[str]],
            tmp_path: Path) -> Settings:  # fmt: skip
    models = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", models, ignore=shutil.ignore_patterns("*.onnx", "*.jsonl"))
    s = settings_factory(api={"token": TOKEN, "port": 0}, models_dir=str(models))
    topics_factory(s, partitions=1)
    scores = [_score("pt-a1", "W1", 1, 0.2), _score("pt-a1", "W1", 3, 0.71), _score("pt-a1", "W1", 2, 0.4),
              _score("pt-b2", "W1", 3, 0.3), _score("pt-c3", "W2", 3, 0.9)]  # pt-a1's hour 2 arrives late
    alerts = [_alert("pt-a1", "W1", "raised", "al-1", "al-1"), _alert("pt-c3", "W2", "raised", "al-2", "al-2"),
              _alert("pt-c3", "W2", "resolved", "al-3", "al-2")]  # fmt: skip

    async def fill() -> None:
        await produce_many(s, s.topic("scores"), [(r["patient"].encode(), orjson.dumps(r)) for r in scores])
        await produce_many(s, s.topic("alerts"), [(r["patient"].encode(), orjson.dumps(r)) for r in alerts])

    asyncio.run(fill())
    return s


async def _until(http: aiohttp.ClientSession, url: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(150):
        async with http.get(url) as r:
            if r.status == 200:
                body = await r.json()
                if ok(body):
                    return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: condition not met")


def test_api_reads_acknowledges_idempotently_and_audits(api_env: Settings) -> None:
    s = api_env

    async def main() -> None:
        server = await ApiServer(s).start()
        base = f"http://127.0.0.1:{server.port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession() as anon:
                async with anon.get(f"{base}/v1/wards/W1") as r:
                    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                async with anon.get(f"{base}/v1/wards/W1", headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
                async with anon.get(f"{base}/openapi.json") as r:
                    assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
            async with aiohttp.ClientSession(headers=auth) as http:
                ward = await _until(http, f"{base}/v1/wards/W1", lambda b: len(b["patients"]) == 2
                                    and b["patients"][0]["scores"][0]["row"] == 3)  # fmt: skip
                assert [p["patient"] for p in ward["patients"]] == ["pt-a1", "pt-b2"]  # highest risk first
                top = ward["patients"][0]["scores"][0]
                got = (top["risk"], top["alert_level"], top["above_alert_level"], top["news2"], top["news2_parts"])
                assert got == (0.71, 0.55, True, 6, {"resp": 3})
                alerts = await _until(http, f"{base}/v1/alerts", lambda b: len(b["alerts"]) == 1)
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200 and await r.json() == {"ok": True, "patients": 3, "open_alerts": 1}
                assert alerts["alerts"][0]["alert_id"] == "al-1"  # al-2's episode was resolved
                async with http.get(f"{base}/v1/patients/pt-zz") as r:
                    assert r.status == 404
                async with http.get(f"{base}/v1/patients/bad%20id") as r:
                    assert r.status == 400 and "X-Request-Id" in r.headers
                answers = []
                for _ in range(2):
                    async with http.post(f"{base}/v1/alerts/al-1/ack", json={"by": "rn-7", "action": "acknowledged"},
                                         headers={"X-Request-Id": "ward-3-req"}) as r:  # fmt: skip
                        answers.append((r.status, await r.json(), r.headers["X-Request-Id"]))
                async with http.post(f"{base}/v1/alerts/al-1/ack", json={"by": "rn-7", "action": "later"}) as r:
                    assert r.status == 400
                async with http.post(f"{base}/v1/alerts/al-9/ack", json={"by": "rn-7"}) as r:
                    assert r.status == 404
        finally:
            await server.stop()
        (c1, b1, rid), (c2, b2, _) = answers
        assert (c1, c2, b1["published"], b2["published"], rid) == (201, 200, True, False, "ward-3-req")
        assert b1["ack_id"] == b2["ack_id"]
        await asyncio.sleep(1.0)  # a second publication would have arrived by now
        acks = await read_at_least(s, s.topic("alert-acks"), 1)
        assert len(acks) == 1 and acks[0].key == b"pt-a1"  # published once
        rec = json.loads(acks[0].value)
        Draft202012Validator(schema_for("alert-acks", s.streams_dir)).validate(rec)
        assert (rec["alert_id"], rec["by"], rec["action"]) == ("al-1", "rn-7", "acknowledged")

    asyncio.run(main())
    [entry] = audit.read(s.models_dir)
    assert (entry["action"], entry["subject"], entry["actor"]) == ("alert-acknowledged", "al-1", "rn-7")


def test_openapi_document_is_valid_and_every_route_is_documented() -> None:
    doc = openapi()
    from jsonschema import Draft202012Validator as V

    for name, schema in doc["components"]["schemas"].items():
        V.check_schema(schema)  # each component is a valid JSON Schema
        assert name
    assert set(doc["paths"]) == {"/v1/patients/{patient}", "/v1/wards/{ward}", "/v1/alerts",
                                 "/v1/alerts/{alert_id}/ack", "/healthz"}  # fmt: skip
    assert doc["components"]["schemas"]["AckRequest"]["properties"]["action"]["enum"] == list(ACTIONS)


def test_schema_driven_fuzz_never_errors_and_answers_documented_statuses(api_env: Settings) -> None:
    """Inputs drawn from the OpenAPI document's parameter and body schemas and around them (any text, any JSON):
    the API answers only documented statuses, always JSON, never 5xx."""
    s = api_env
    doc = openapi()
    statuses = {path: {int(c) for op in ops.values() for c in op["responses"]} for path, ops in doc["paths"].items()}
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(ApiServer(s).start(consume=False))
    http = loop.run_until_complete(_session())
    base = f"http://127.0.0.1:{server.port}"
    ident = st.one_of(st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z"), st.text(min_size=1, max_size=30))
    body = st.one_of(st.fixed_dictionaries({"by": st.text(max_size=70)},
                                           optional={"action": st.one_of(st.sampled_from(ACTIONS), st.text())}),
                     st.dictionaries(st.text(max_size=5), st.integers(-9, 9), max_size=3), st.integers(-9, 9),
                     st.none())  # fmt: skip

    async def call(method: str, path: str, template: str, payload: Any = None, params: Any = None) -> None:
        kw = {"data": orjson.dumps(payload)} if method == "POST" else {}
        async with http.request(method, yarl.URL(base + path, encoded=True), params=params, **kw) as r:
            assert r.status < 500, (method, path, r.status)
            assert r.status in statuses[template] or r.status in (404, 405), (method, path, r.status)
            await r.json(content_type=None)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ident=ident, payload=body, which=st.integers(0, 3))
    def fuzz(ident: str, payload: Any, which: int) -> None:
        template = ["/v1/patients/{patient}", "/v1/wards/{ward}", "/v1/alerts", "/v1/alerts/{alert_id}/ack"][which]
        seg = quote(ident, safe="")
        path = template.replace("{patient}", seg).replace("{ward}", seg).replace("{alert_id}", seg)
        params = {"ward": ident} if which == 2 else None
        loop.run_until_complete(call("POST" if which == 3 else "GET", path, template, payload, params))

    try:
        fuzz()
    finally:
        loop.run_until_complete(http.close())
        loop.run_until_complete(server.stop())
        loop.close()


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
