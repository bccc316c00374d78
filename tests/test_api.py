"""``vigil api``: real HTTP on loopback against a live server that reads and writes the embedded broker."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import orjson
import pytest
import requests
from click.testing import CliRunner

from vigil.api.auth import hash_token
from vigil.api.openapi import document
from vigil.api.server import ApiServer, ack_id
from vigil.api.view import View
from vigil.audit import audit_id
from vigil.catalog import schema_for
from vigil.cli import cli
from vigil.config import Settings
from vigil.kafka_io import produce_records, read_topic
from vigil.records import AckEvent, decode, encode_adt

pytestmark = pytest.mark.broker

TOKEN = "clinical-system-token-1"
T0 = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
PARTS = {k: 0 for k in ("resp_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness", "temperature")}
PSEUDONYMS = ("pa0001aaaabbbbcccc", "pb0002ddddeeeeffff", "pc0003gggghhhhiiii")


def _iso(t: datetime) -> str:
    return t.isoformat()


def score(patient: str, row: int, risk: float, news2: int, ward: str | None = None) -> dict[str, Any]:
    t = _iso(T0 + timedelta(hours=row))
    return {"v": 1, "score_id": f"s-{patient}-{row}", "patient": patient, "ward": ward, "bed": None, "unit": None,
            "time": t, "row": row, "partial": False, "model": {"name": "sepsis-gbm", "version": "1"}, "risk": risk,
            "threshold": 0.38, "above_threshold": risk >= 0.38,
            "news2": {"total": news2, "parts": {**PARTS, "pulse": min(news2, 3)}, "missing": []},
            "emitted_at": t, "trigger_time": t}  # fmt: skip


def alert(patient: str, aid: str, event: str, row: int, episode: str | None = None, ward: str = "W1",
          ack: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    t = _iso(T0 + timedelta(hours=row))
    return {"v": 1, "alert_id": aid, "event": event, "episode_id": episode or aid, "type": "model_risk",
            "severity": "info" if event in ("resolved", "acknowledged") else "high", "patient": patient,
            "ward": ward, "bed": "4", "unit": None, "time": t, "row": row,
            "model": {"name": "sepsis-gbm", "version": "1"}, "score": None if ack else 0.61, "threshold": 0.38,
            "value": 0.61, "raise_at": 0.55, "news2": None, "factors": [], "ack": ack,
            "message": f"sepsis risk {event}", "emitted_at": t}  # fmt: skip


def adt(patient: str, kind: str, ward: str | None, bed: str | None, seq: int) -> bytes:
    return encode_adt(patient=patient, source="adt", seq=seq, time=T0, kind=kind, ward=ward, bed=bed)


def produce(s: Settings, records: list[tuple[str, str, Any]]) -> None:
    """Produce (topic, key, value) records; dict values are checked against the topic's JSON Schema first."""
    out = []
    for topic, key, value in records:
        if isinstance(value, dict):
            jsonschema.Draft202012Validator(schema_for(topic, s.streams_dir)).validate(value)
            value = orjson.dumps(value)
        out.append((s.topic(topic), key.encode(), value))
    asyncio.run(produce_records(s, out))


@contextmanager
def serving(s: Settings) -> Iterator[tuple[str, ApiServer]]:
    """A live ApiServer on its own event loop thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ApiServer(s)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        yield f"http://127.0.0.1:{server.port}", server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def api_settings(settings_factory: Callable[..., Settings], topics_factory: Callable[..., list[str]]) -> Settings:
    s = settings_factory(api={"port": 0, "tokens_sha256": [hash_token("other-token"), hash_token(TOKEN)]})
    topics_factory(s, partitions=1)
    return s


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def until(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 20.0) -> Any:
    """Poll ``fetch`` until ``done`` holds for its result (the server follows the topics asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = fetch()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"condition not met: {got}"
        time.sleep(0.1)


def test_tokens_are_required_and_nothing_is_published_without_one(api_settings: Settings) -> None:
    s = api_settings
    pa = PSEUDONYMS[0]
    produce(s, [("alerts", pa, alert(pa, "a1", "raised", 3))])
    with serving(s) as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
            for method, path in (("GET", f"/patients/{pa}"), ("GET", "/wards/W1"), ("GET", "/alerts"),
                                 ("POST", "/alerts/a1/ack"), ("GET", "/nowhere")):  # fmt: skip
                r = requests.request(method, url + path, headers=headers, json={"by": "rn-1", "action": "treated"},
                                     timeout=10)  # fmt: skip
                assert r.status_code == 401, (headers, path)
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="vigil"'
                assert r.json() == {"error": "a valid bearer token is required"}
        assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok", "caught_up": True, "patients": 1}
        ok = requests.get(url + "/alerts", headers={"Authorization": "Bearer other-token"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["count"] == 1
    assert read_topic_sync(s, "alert-acks") == [] and read_topic_sync(s, "audit") == []


def read_topic_sync(s: Settings, topic: str) -> list[Any]:
    return [orjson.loads(r.value) for r in asyncio.run(read_topic(s, s.topic(topic), quiet_s=1.0))]


def test_patient_ward_and_alert_views(api_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = api_settings
    pa, pb, pc = PSEUDONYMS
    produce(s, [  # before start-up: read in the catch-up
        ("adt", pa, adt(pa, "admit", "W1", "4", 1)), ("adt", pb, adt(pb, "admit", "W1", "5", 2)),
        ("adt", pc, adt(pc, "admit", "W2", "1", 3)),
        ("scores", pa, score(pa, 2, 0.21, 3, "W1")), ("scores", pa, score(pa, 3, 0.61, 6, "W1")),
        ("scores", pb, score(pb, 3, 0.05, 1, "W1")),
        ("alerts", pa, alert(pa, "alert-a", "raised", 3)),
        ("scores", pc, b"{not json"),  # skipped and counted, never fatal
    ])  # fmt: skip
    with serving(s) as (url, server):
        def get(path: str) -> requests.Response:
            return requests.get(url + path, headers=AUTH, timeout=10)

        p = get(f"/patients/{pa}").json()
        assert p["patient"] == pa and (p["ward"], p["bed"], p["present"]) == ("W1", "4", True)
        assert p["scores"] == [{"model": {"name": "sepsis-gbm", "version": "1"}, "risk": 0.61, "threshold": 0.38,
                                "above_threshold": True, "time": "2026-01-01T08:00:00+00:00", "row": 3}]
        assert p["news2"]["total"] == 6 and p["news2"]["parts"]["pulse"] == 3
        assert [(a["alert_id"], a["event"], a["severity"], a["score"]) for a in p["open_alerts"]] == [
            ("alert-a", "raised", "high", 0.61)]
        ward = get("/wards/W1").json()
        assert ward["count"] == 2 and [q["patient"] for q in ward["patients"]] == [pa, pb]
        assert [q["scores"][0]["risk"] for q in ward["patients"]] == [0.61, 0.05]
        assert [q["patient"] for q in get("/wards/W2").json()["patients"]] == [pc]
        assert get("/wards/W9").json() == {"ward": "W9", "count": 0, "patients": []}
        assert [a["alert_id"] for a in get("/alerts?ward=W1").json()["alerts"]] == ["alert-a"]
        assert get("/alerts?ward=W2").json() == {"count": 0, "alerts": []}
        r = get("/patients/nobody")
        assert r.status_code == 404 and r.json() == {"error": "no such patient"}
        assert server.view.skipped == {("scores", "JSONDecodeError"): 1}

        # after start-up: followed live — an escalation, a transfer, a discharge and a resolution
        produce(s, [
            ("alerts", pa, alert(pa, "alert-a-esc", "escalated", 4, episode="alert-a")),
            ("adt", pc, adt(pc, "transfer", "W1", "9", 4)), ("adt", pb, adt(pb, "discharge", None, None, 5)),
        ])  # fmt: skip
        ward = until(lambda: get("/wards/W1").json(), lambda w: [q["patient"] for q in w["patients"]] == [pa, pc])
        assert ward["patients"][1]["bed"] == "9"
        alerts = get("/alerts").json()["alerts"]
        assert [(a["alert_id"], a["latest_alert_id"], a["event"]) for a in alerts] == [
            ("alert-a", "alert-a-esc", "escalated")]
        assert get(f"/patients/{pb}").json()["present"] is False
        produce(s, [("alerts", pa, alert(pa, "alert-a-res", "resolved", 6, episode="alert-a"))])
        until(lambda: get("/alerts").json(), lambda d: d["count"] == 0)
        assert get(f"/patients/{pa}").json()["open_alerts"] == []
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert 'vigil_api_skipped_records_total{reason="JSONDecodeError",topic="scores"} 1.0' in metrics
    # the API's own logs and aiohttp's (access log off): test-side producers and HTTP clients log what they send
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("vigil", "aiohttp")))
    assert "skipped a scores record" in text
    assert not any(p in text for p in PSEUDONYMS), "a pseudonym reached the logs"


def test_ack_publishes_once_and_is_idempotent(api_settings: Settings) -> None:
    s = api_settings
    pa = PSEUDONYMS[0]
    produce(s, [("adt", pa, adt(pa, "admit", "W1", "4", 1)), ("alerts", pa, alert(pa, "alert-a", "raised", 3)),
                ("alerts", pa, alert(pa, "alert-a-esc", "escalated", 4, episode="alert-a"))])  # fmt: skip
    body = {"by": "rn-ward1-07", "action": "acknowledged"}
    with serving(s) as (url, _):
        def ack(aid: str, payload: Any = body, **kw: Any) -> requests.Response:
            return requests.post(f"{url}/alerts/{aid}/ack", headers=AUTH, json=payload, timeout=10, **kw)

        first = ack("alert-a")
        assert first.status_code == 200
        res = first.json()
        assert res == {"ack_id": ack_id("alert-a", "acknowledged"), "alert_id": "alert-a", "patient": pa,
                       "action": "acknowledged", "by": "rn-ward1-07", "at": res["at"],
                       "audit_id": audit_id("alert_ack", "alert-a", "acknowledged")}  # fmt: skip
        again = ack("alert-a", {"by": "someone-else", "action": "acknowledged"})
        assert (again.status_code, again.json()) == (200, res)  # the first result; nothing new
        treated = ack("alert-a-esc", {"by": "dr-3", "action": "treated"})  # an escalation: its episode
        assert treated.status_code == 200 and (treated.json()["alert_id"], treated.json()["action"]) == (
            "alert-a", "treated")
        assert ack("alert-a", {"by": "dr-4", "action": "treated"}).json() == treated.json()
        open_alert = requests.get(url + "/alerts", headers=AUTH, timeout=10).json()["alerts"][0]
        assert [a["action"] for a in open_alert["acknowledgements"]] == ["acknowledged", "treated"]
        # refusals publish nothing
        assert ack("no-such-alert").status_code == 404
        assert ack("alert-a", {"by": "Jane Smith", "action": "acknowledged"}).status_code == 400  # a name: no
        assert ack("alert-a", {"by": "rn-1", "action": "ignored"}).status_code == 400
        assert ack("alert-a", {"by": "rn-1", "action": "treated", "note": "x"}).status_code == 400
        r = requests.post(f"{url}/alerts/alert-a/ack", headers={**AUTH, "Content-Type": "text/plain"},
                          data=b"by=rn-1", timeout=10)  # fmt: skip
        assert r.status_code == 415
        r = requests.post(f"{url}/alerts/alert-a/ack", headers={**AUTH, "Content-Type": "application/json"},
                          data=b"x" * 20_000, timeout=10)  # fmt: skip
        assert r.status_code == 413 and "error" in r.json()
    acks, audit = read_topic_sync(s, "alert-acks"), read_topic_sync(s, "audit")
    assert [(a["alert_id"], a["action"], a["by"], a["patient"]) for a in acks] == [
        ("alert-a", "acknowledged", "rn-ward1-07", pa), ("alert-a", "treated", "dr-3", pa)]
    for a in acks:
        jsonschema.Draft202012Validator(schema_for("alert-acks", s.streams_dir)).validate(a)
        ev = decode(orjson.dumps(a), "alert-acks", pa.encode())
        assert isinstance(ev, AckEvent) and ev.alert_id == a["alert_id"]
    assert [(e["kind"], e["who"], e["subject"], e["details"]["action"], e["details"]["ward"]) for e in audit] == [
        ("alert_ack", "rn-ward1-07", "alert:alert-a", "acknowledged", "W1"),
        ("alert_ack", "dr-3", "alert:alert-a", "treated", "W1")]
    for e in audit:
        jsonschema.Draft202012Validator(schema_for("audit", s.streams_dir)).validate(e)

    # a restarted API remembers both topics: the repeat publishes nothing and returns the first result
    with serving(s) as (url, _):
        again = requests.post(f"{url}/alerts/alert-a/ack", headers=AUTH, json=body, timeout=10)
        assert (again.status_code, again.json()) == (200, res)
    assert len(read_topic_sync(s, "alert-acks")) == 2 and len(read_topic_sync(s, "audit")) == 2


def test_openapi_document_is_valid_and_served(api_settings: Settings) -> None:
    from openapi_spec_validator import validate

    with serving(api_settings) as (url, _):
        served = requests.get(url + "/openapi.json", timeout=10).json()
    validate(served)
    assert served == document()
    ops = {(p, m) for p, item in served["paths"].items() for m in item}
    assert ops == {("/patients/{pseudonym}", "get"), ("/wards/{ward}", "get"), ("/alerts", "get"),
                   ("/alerts/{alert_id}/ack", "post"), ("/healthz", "get"), ("/openapi.json", "get")}
    for p, item in served["paths"].items():
        for op in item.values():
            if op.get("security") != []:
                assert "401" in op["responses"], p


def test_schemathesis_fuzz_of_the_live_server(api_settings: Settings) -> None:
    """Every documented operation, with generated parameters and bodies: only documented statuses and bodies,
    never a 5xx (503 is documented for a broker failure and must not happen here)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    s = api_settings
    pa = PSEUDONYMS[0]
    produce(s, [("adt", pa, adt(pa, "admit", "W1", "4", 1)), ("scores", pa, score(pa, 3, 0.61, 6, "W1")),
                ("alerts", pa, alert(pa, "alert-a", "raised", 3))])  # fmt: skip
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]  # fmt: skip
    with serving(s) as (url, server):
        assert server._runner is not None and server._runner.addresses[0][0] == "127.0.0.1"  # bound exactly there
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        seen: dict[str, set[int]] = {}

        def fuzz(op: Any, **fixed: Any) -> Callable[[], None]:
            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy(**fixed))
            def run(case: Any) -> None:
                response = case.call(base_url=url, headers=AUTH, timeout=10)
                case.validate_response(response, checks=checks)
                assert response.status_code < 500
                seen.setdefault(op.label, set()).add(response.status_code)

            return run

        ops = [result.ok() for result in schema.get_all_operations()]
        for op in ops:
            fuzz(op)()
        by_label = {op.label: op for op in ops}
        # and with the known patient and alert, so that the 200 bodies are checked against the document too
        fuzz(by_label["GET /patients/{pseudonym}"], path_parameters={"pseudonym": pa})()
        fuzz(by_label["POST /alerts/{alert_id}/ack"], path_parameters={"alert_id": "alert-a"})()
        fuzz(by_label["GET /wards/{ward}"], path_parameters={"ward": "W1"})()
        # invalid bodies and parameters: refused with a documented 4xx, never a 5xx
        for label in ("POST /alerts/{alert_id}/ack", "GET /alerts", "GET /patients/{pseudonym}"):
            fuzz(by_label[label], generation_mode=schemathesis.GenerationMode.NEGATIVE)()
    # schemathesis does not fuzz the document's own address (GET /openapi.json: test_openapi_document_...)
    assert sorted(seen) == ["GET /alerts", "GET /healthz", "GET /patients/{pseudonym}", "GET /wards/{ward}",
                            "POST /alerts/{alert_id}/ack"], [op.label for op in ops]
    assert {200, 404} <= seen["GET /patients/{pseudonym}"] and {200, 400, 404} <= seen["POST /alerts/{alert_id}/ack"]
    assert all(code < 500 for codes in seen.values() for code in codes)


def test_view_is_bounded() -> None:
    v = View(max_patients=2, max_alerts=10)
    for i, p in enumerate(("p1", "p2", "p3")):
        v.apply_score(score(p, i, 0.1, 1, "W1"))
    assert v.patient("p1") is None and v.evicted_patients == 1
    assert [q["patient"] for q in v.ward("W1")["patients"]] == ["p2", "p3"]


def test_cli_hash_token_and_refusal_without_tokens() -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["api", "hash-token", "s3cret"])
    assert r.exit_code == 0 and r.output.strip() == hash_token("s3cret")
    assert runner.invoke(cli, ["api", "hash-token"], input="s3cret\n").output.strip() == hash_token("s3cret")
    r = runner.invoke(cli, ["api", "--port", "0"], env={"VIGIL_API__TOKENS_SHA256": "[]"})
    assert r.exit_code == 1 and "needs at least one token" in r.output
    r = runner.invoke(cli, ["api"], env={"VIGIL_API__TOKENS_SHA256": '["not-a-digest"]'})
    assert r.exit_code == 1 and "not SHA-256 hex digests" in r.output


def test_an_ack_through_the_api_reaches_the_worker(settings_factory: Callable[..., Settings],
                                                   topics_factory: Callable[..., list[str]], sample_path: Any,
                                                   tmp_path: Any) -> None:  # fmt: skip
    """The real worker raises alerts from replayed sample stays; the API shows them, a clinician acknowledges one
    through it, and the worker records that acknowledgement (its ``acknowledged`` alert for the episode)."""
    from vigil.physionet import iter_stays
    from vigil.privacy import pseudonymise
    from vigil.replay import stay_events
    from vigil.tools.procs import WorkerProcess

    alert_env = {"VIGIL_ALERTS__MODEL_RISK__RAISE_AT": "0.45", "VIGIL_ALERTS__MODEL_RISK__REFRACTORY_H": "0"}
    s = settings_factory(api={"port": 0, "tokens_sha256": [hash_token(TOKEN)]})
    topics_factory(s, 2)
    events: list[tuple[str, str, bytes]] = []
    for i, stay in enumerate(iter_stays(sample_path, limit=8)):
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        evs = list(stay_events(stay, patient=patient, anchor=T0, source="test-feed", ward=f"W{i % 2}", bed=str(i)))
        events += [(stream, patient, value) for stream, _t, value in evs[: len(evs) // 2]]  # still admitted
    with serving(s) as (url, _), WorkerProcess(s, log_path=tmp_path / "worker.log", extra_env=alert_env) as w:
        w.wait_ready()
        produce(s, events)

        def settled(text: str) -> bool:  # every event applied, none held: no later row can resolve the alert
            total = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vigil_events_total{"))
            held = [ln for ln in text.splitlines() if ln.startswith("vigil_reorder_held_events ")]
            return total == len(events) and held == ["vigil_reorder_held_events 0.0"]

        until(w.metrics_text, settled, timeout_s=90)
        last: dict[str, str] = {}  # episode -> its last event on the topic (the worker is done: this is final)
        for d in read_topic_sync(s, "alerts"):
            last[d.get("episode_id") or d["alert_id"]] = d["event"]
        still_open = {e for e, ev in last.items() if ev != "resolved"}
        assert still_open, last
        # the API follows the topic asynchronously: pick an episode it shows that is open for good
        alerts = until(lambda: requests.get(url + "/alerts", headers=AUTH, timeout=10).json()["alerts"],
                       lambda a: any(x["alert_id"] in still_open for x in a), timeout_s=90)  # fmt: skip
        first = next(x for x in alerts if x["alert_id"] in still_open)
        r = requests.post(f"{url}/alerts/{first['alert_id']}/ack", headers=AUTH,
                          json={"by": "rn-w0-1", "action": "acknowledged"}, timeout=10)  # fmt: skip
        assert r.status_code == 200
        tail = asyncio.run(_worker_ack(s, first["alert_id"]))
        assert tail["ack"]["by"] == "rn-w0-1" and tail["ack"]["action"] == "acknowledged"
        assert tail["patient"] == first["patient"]
        mine = until(lambda: requests.get(f"{url}/patients/{first['patient']}", headers=AUTH, timeout=10).json(),
                     lambda p: any(a["alert_id"] == first["alert_id"] for a in p["open_alerts"]))  # fmt: skip
        ep = next(a for a in mine["open_alerts"] if a["alert_id"] == first["alert_id"])
        assert [(a["action"], a["by"]) for a in ep["acknowledgements"]] == [("acknowledged", "rn-w0-1")]
        assert w.stop() == 0


async def _worker_ack(s: Settings, episode: str) -> dict[str, Any]:
    from vigil.kafka_io import TopicTail

    tail = await TopicTail(s, s.topic("alerts")).start()
    try:
        def acked(recs: list[Any]) -> bool:
            return any((d := orjson.loads(r.value))["event"] == "acknowledged" and d["episode_id"] == episode
                       for r in recs)  # fmt: skip

        recs = await tail.wait_for(acked, 60)
    finally:
        await tail.stop()
    return next(d for r in recs if (d := orjson.loads(r.value))["event"] == "acknowledged"
                and d["episode_id"] == episode)  # fmt: skip
