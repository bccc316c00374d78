"""Alert subscribers against the real embedded broker and a real HTTP server on 127.0.0.1 (no mocks):
``vigil alerts tail`` (filters, limit, raw JSON) and ``vigil alerts webhook`` (signatures, retries, dead letters,
restart from the committed offsets, metrics, SIGTERM)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from vigil.alerts import alert_id
from vigil.broker import free_port
from vigil.catalog import schema_for
from vigil.cli import cli
from vigil.config import Settings
from vigil.kafka_io import produce_many, read_topic
from vigil.subscribers.delivery import RetryPolicy, classify, destination_name, parse_retry_after, redact_url
from vigil.subscribers.metrics import WebhookMetrics
from vigil.subscribers.signing import signature_header, verify_signature
from vigil.subscribers.tail import AlertFilter, format_alert, tail_alerts
from vigil.subscribers.webhook import DEAD_LETTER_TOPIC, WebhookForwarder

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-\u00e9"  # non-ASCII on purpose: str secrets are UTF-8 encoded
PARTITIONS = 2
# Small backoff; a short group session (the embedded broker takes session/2 to complete a join).
FAST = {"max_attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.1, "timeout_s": 0.4, "session_timeout_ms": 2000}


# ------------------------------------------------------------------------------------------------ helpers
def make_alert(row: int, *, patient: str = "a3f9c2d17e6b4058", ward: str | None = "W1", severity: str = "high",
               kind: str = "model_risk") -> dict[str, Any]:  # fmt: skip
    """A schema-valid alert (plus a field the schema does not know yet, which must pass through)."""
    return {
        "v": 1, "alert_id": alert_id(patient, kind, "1", row), "type": kind, "severity": severity,
        "patient": patient, "ward": ward, "bed": "7", "time": f"2026-03-01T{row % 24:02d}:00:00+00:00", "row": row,
        "model": {"name": "sepsis-mlp", "version": "1"}, "score": 0.61, "threshold": 0.3,
        "news2": {"total": 8, "parts": {"resp_rate": 3, "spo2": 0, "air_or_oxygen": 2, "systolic_bp": 1,
                                        "pulse": 1, "consciousness": 0, "temperature": 1}, "missing": []},
        "message": f"Sepsis risk 0.610 at or above the operating threshold 0.300; NEWS2 8 (row {row})",
        "emitted_at": "2026-03-01T12:00:00.123+00:00", "escalation": {"level": 1},
    }  # fmt: skip


def key_on(partition: int, n: int = PARTITIONS) -> str:
    """A patient pseudonym whose key the default partitioner sends to ``partition`` of ``n``."""
    for i in range(1000):
        key = f"{i:04d}c0ffee{i:06x}"
        if (murmur2(key.encode()) & 0x7FFFFFFF) % n == partition:
            return key
    raise AssertionError("no key found")


async def produce(s: Settings, alerts: list[dict[str, Any]]) -> list[bytes]:
    """Produce alerts (key = patient) in order; returns the exact value bytes."""
    values = [orjson.dumps(a) for a in alerts]
    producer = AIOKafkaProducer(acks="all", **s.kafka.client_kwargs())
    await producer.start()
    try:
        for a, v in zip(alerts, values, strict=True):
            await producer.send_and_wait(s.topic("alerts"), v, key=a["patient"].encode())
    finally:
        await producer.stop()
    return values


async def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout_s}s")
        await asyncio.sleep(0.02)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP endpoint on 127.0.0.1. ``plan[alert_id]`` lists what the next requests for that alert get:
    a status code, or "slow" (no answer within the client's timeout); then 200."""

    plan: dict[str, list[int | str]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # alert ids answered 2xx, in order
    slow_s: float = 1.5
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/hook?token=abc"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        aid = request.headers.get("Idempotency-Key", "")
        self.requests.append(Received(dict(request.headers), body))
        steps = self.plan.get(aid)
        step = steps.pop(0) if steps else 200
        if step == "slow":
            await asyncio.sleep(self.slow_s)
            return web.Response(status=200)
        assert isinstance(step, int)
        headers = {"Retry-After": "0"} if step == 429 else {}
        if 200 <= step < 300:
            self.acked.append(aid)
        return web.Response(status=step, text="nope" if step >= 400 else "", headers=headers)


@contextlib.asynccontextmanager
async def receiving(plan: dict[str, list[int | str]] | None = None) -> AsyncIterator[tuple[Receiver, str]]:
    rx = Receiver(plan or {})
    url = await rx.start()
    try:
        yield rx, url
    finally:
        await rx.stop()


@contextlib.asynccontextmanager
async def forwarding(fwd: WebhookForwarder) -> AsyncIterator[WebhookForwarder]:
    """Run the forwarder in a task; on exit stop it (like SIGTERM) and wait until it has shut down."""
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop))
    try:
        await wait_until(lambda: fwd.ready.is_set() or task.done(), 30.0, "forwarder ready")
        if task.done():
            task.result()
        yield fwd
    finally:
        stop.set()
        await asyncio.wait_for(task, 15.0)


def forwarder(s: Settings, url: str, **kw: Any) -> WebhookForwarder:
    kw.setdefault("metrics", WebhookMetrics(CollectorRegistry()))
    kw.setdefault("rng", random.Random(1))
    return WebhookForwarder(s, url, secret=SECRET, **kw)


def sample(fwd: WebhookForwarder, metric: str, **labels: str) -> float:
    value = fwd.metrics.registry.get_sample_value(metric, {"destination": fwd.name, **labels})
    return value or 0.0


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def topics(settings_factory: Callable[..., Settings], topics_factory: Callable[..., list[str]]
           ) -> Callable[..., Settings]:  # fmt: skip
    """Settings with fast retries (overridable) and freshly created catalogue topics of 2 partitions."""

    def make(**webhook: Any) -> Settings:
        s = settings_factory(webhook={**FAST, **webhook})
        topics_factory(s, PARTITIONS)
        return s

    return make


# ------------------------------------------------------------------------------------------ no broker needed
def test_signature_verification() -> None:
    """t=<unix>,v1=HMAC(secret, t + "." + body): body and timestamp are signed together; stale ones refused."""
    body = orjson.dumps(make_alert(1))
    t = 1_700_000_000
    header = signature_header(SECRET, body, t)
    sig = header.split(",v1=")[1]
    assert header.startswith(f"t={t},v1=") and len(sig) == 64
    assert verify_signature(SECRET, body, header, now=t + 10)
    assert verify_signature(SECRET.encode(), body, header.upper().replace("T=", "t=").replace("V1=", "v1="), now=t)
    assert not verify_signature(SECRET, body.replace(b"0.61", b"0.16"), header, now=t)  # tampered body
    assert not verify_signature("another-secret", body, header, now=t)  # wrong secret
    assert not verify_signature(SECRET, body, header, now=t + 301)  # stale: a captured delivery replayed later
    assert verify_signature(SECRET, body, header, now=t + 301, tolerance_s=600)  # the receiver's tolerance
    assert not verify_signature(SECRET, body, f"t={t + 301},v1={sig}", now=t + 301)  # fresh t, old signature
    assert verify_signature(SECRET, body, f"t={t},v1={'0' * 64},v1={sig}", now=t)  # rotation: one match suffices
    for bad in (None, "", "sha256=" + sig, sig, f"t={t}", f"v1={sig}", f"t=x,v1={sig}", f"t={t},v0={sig}"):
        assert not verify_signature(SECRET, body, bad, now=t)


def test_retry_policy_classification_and_destination_names() -> None:
    policy = RetryPolicy(max_attempts=6, base_s=0.1, cap_s=1.0, timeout_s=1.0)
    rng = random.Random(3)
    for n in range(1, 7):
        d = min(1.0, 0.1 * 2 ** (n - 1))
        assert all(d / 2 <= policy.delay(n, None, rng) <= d for _ in range(50))
    assert policy.delay(1, 0.0, rng) == 0.0 and policy.delay(1, 300.0, rng) == 1.0  # Retry-After, capped
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    noon = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now=noon) == 30.0
    assert [classify(c) for c in (200, 202, 301, 400, 401, 404, 408, 409, 429, 500, 503)] == [
        None, None, "http_other", "http_4xx", "http_4xx", "http_4xx", "http_408", "http_4xx", "http_429",
        "http_5xx", "http_5xx"]  # fmt: skip
    url = "https://svc:pw@Pager.Hospital.example:8443/in/vigil?key=k#f"
    assert redact_url(url) == "https://pager.hospital.example:8443/in/vigil"
    name = destination_name(url)
    assert name == destination_name(url.replace("key=k", "key=other"))  # query (tokens) may rotate
    assert name != destination_name(url.replace("/vigil", "/other"))
    assert name.startswith("pager.hospital.example-") and len(name) <= 49 and "/" not in name


def test_tail_line_format_shortens_the_pseudonym() -> None:
    a = make_alert(3, ward="ICU-MED", severity="emergency", kind="news2_emergency")
    line = format_alert(a)
    assert line.startswith("2026-03-01 03:00:00+00:00  EMERGENCY  news2_emergency ")
    assert "ICU-MED/7" in line and "pt a3f9c2d1 " in line and a["patient"] not in line
    assert "score 0.610 >= level 0.300" in line and "NEWS2 8" in line and line.endswith("(row 3)")
    assert "score -" in format_alert({"type": "new_kind", "score": None})  # future alert kinds still print
    assert AlertFilter.of(types=["NEWS2_emergency"]).matches(a) and not AlertFilter.of(severities=["high"]).matches(a)


def test_webhook_command_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_WEBHOOK__SECRET", raising=False)
    monkeypatch.delenv("MY_HOOK_SECRET", raising=False)
    res = CliRunner().invoke(cli, ["alerts", "webhook", "https://ehr.example/hook"])
    assert res.exit_code == 1 and "no webhook secret: set VIGIL_WEBHOOK__SECRET" in res.output
    res = CliRunner().invoke(cli, ["alerts", "webhook", "https://ehr.example/hook", "--secret-env", "MY_HOOK_SECRET"])
    assert res.exit_code == 1 and "set MY_HOOK_SECRET" in res.output
    monkeypatch.setenv("MY_HOOK_SECRET", "s")
    res = CliRunner().invoke(cli, ["alerts", "webhook", "ftp://u:pw@ehr.example/x", "--secret-env", "MY_HOOK_SECRET"])
    assert res.exit_code == 1 and "http:// or https://" in res.output and "pw" not in res.output


# ---------------------------------------------------------------------------------------------- on the broker
@pytest.mark.broker
def test_delivers_every_alert_once_with_signed_headers(topics: Callable[..., Settings]) -> None:
    s = topics()
    alerts = [make_alert(r, patient=key_on(r % PARTITIONS)) for r in range(8)]

    async def go() -> None:
        values = await produce(s, [*alerts, alerts[2]])  # the last one replays alerts[2] (same alert_id)
        async with receiving() as (rx, url), forwarding(forwarder(s, url, from_beginning=True)) as fwd:

            def handled() -> bool:
                dropped = sample(fwd, "vigil_webhook_duplicates_dropped_total")
                return dropped == 1 and sample(fwd, "vigil_webhook_delivered_total") == len(alerts)

            await wait_until(handled, what="all handled")
        assert sorted(rx.acked) == sorted(a["alert_id"] for a in alerts)  # each once, the replay dropped
        for p in range(PARTITIONS):  # in offset order per partition
            assert [i for i in rx.acked if i in {a["alert_id"] for a in alerts[p::PARTITIONS]}] == [
                a["alert_id"] for a in alerts[p::PARTITIONS]]  # fmt: skip
        by_id = {a["alert_id"]: v for a, v in zip(alerts, values, strict=False)}
        now = time.time()
        for req in rx.requests:
            h, aid = req.headers, req.headers["Idempotency-Key"]
            assert req.body == by_id[aid]  # exact bytes, unknown fields included
            assert h["Content-Type"] == "application/json" and h["X-Vigil-Alert-Id"] == aid
            assert verify_signature(SECRET, req.body, h["X-Vigil-Signature"])
            assert abs(int(h["X-Vigil-Timestamp"]) - now) < 60 and h["User-Agent"].startswith("vigil-webhook/")
        assert sample(fwd, "vigil_webhook_delivered_total") == len(alerts)
        assert sample(fwd, "vigil_webhook_delivery_seconds_count") == len(alerts)
        assert fwd.group_id == s.webhook.group_prefix + fwd.name and fwd.destination == url.split("?")[0]
        for metric in fwd.metrics.registry.collect():  # labels: destination and reason only, no patient/URL
            for smp in metric.samples:
                assert set(smp.labels) <= {"destination", "reason", "le"}, smp
                assert all("/" not in v and "token" not in v for v in smp.labels.values())

    run(go())


@pytest.mark.broker
def test_retries_and_dead_letters_then_moves_on(topics: Callable[..., Settings]) -> None:
    s = topics()
    patient = key_on(0)
    a = [make_alert(r, patient=patient) for r in range(5)]  # one partition: a deterministic order
    ids = [x["alert_id"] for x in a]
    plan: dict[str, list[int | str]] = {ids[0]: [503, 503], ids[1]: ["slow"], ids[2]: [400], ids[3]: [429]}
    injected = {**a[0], "alert_id": "x\r\nX-Injected: 1"}  # would become a header: refused, never sent
    values = [orjson.dumps(x) for x in a]
    records = [*values[:3], b"{oops", values[3], orjson.dumps(injected), values[4]]

    def dead_letters(fwd: WebhookForwarder) -> float:
        reasons = ("http_4xx", "invalid_alert", "connection_error")
        return sum(sample(fwd, "vigil_webhook_dead_lettered_total", reason=r) for r in reasons)

    async def go() -> None:
        await produce_many(s, s.topic("alerts"), [(patient.encode(), v) for v in records])
        async with receiving(plan) as (rx, url):
            async with forwarding(forwarder(s, url, from_beginning=True)) as fwd:
                await wait_until(lambda: len(rx.acked) == 4 and dead_letters(fwd) == 3, what="all handled")
            assert rx.acked == [ids[0], ids[1], ids[3], ids[4]]  # the 400 was skipped, the rest went on
            assert [r.headers["Idempotency-Key"] for r in rx.requests].count(ids[2]) == 1  # 400: no retry
            assert {r.headers["Idempotency-Key"] for r in rx.requests} == set(ids)  # invalid records never sent
            assert sample(fwd, "vigil_webhook_retries_total", reason="http_5xx") == 2
            assert sample(fwd, "vigil_webhook_retries_total", reason="timeout") == 1
            assert sample(fwd, "vigil_webhook_retries_total", reason="http_429") == 1
            assert sample(fwd, "vigil_webhook_failed_attempts_total", reason="http_4xx") == 1
            assert sample(fwd, "vigil_webhook_dead_lettered_total", reason="http_4xx") == 1
            assert sample(fwd, "vigil_webhook_dead_lettered_total", reason="invalid_alert") == 2
            assert sample(fwd, "vigil_webhook_delivered_total") == 4
        # a destination that refuses connections: every alert dead-lettered after max_attempts, none blocks
        port = free_port()  # nothing listens there
        refused = forwarder(s, f"http://user:pw@127.0.0.1:{port}/hook?k=v", name="down", from_beginning=True)
        async with forwarding(refused):
            await wait_until(lambda: dead_letters(refused) == len(records), what="all dead-lettered")
        assert sample(refused, "vigil_webhook_failed_attempts_total", reason="connection_error") == 3 * len(a)
        dead = [orjson.loads(r.value) for r in await read_topic(s, s.topic(DEAD_LETTER_TOPIC), quiet_s=0.3)]
        validator = Draft202012Validator(schema_for(DEAD_LETTER_TOPIC, s.streams_dir))
        for d in dead:
            assert not list(validator.iter_errors(d)), d
        assert [(d["destination_name"], d["reason"], d["alert_id"], d["attempts"], d["status_code"]) for d in dead] == [
            (fwd.name, "http_4xx", ids[2], 1, 400), (fwd.name, "invalid_alert", None, 0, None),
            (fwd.name, "invalid_alert", None, 0, None),
            *[("down", "connection_error", i, 3, None) for i in ids[:3]], ("down", "invalid_alert", None, 0, None),
            ("down", "connection_error", ids[3], 3, None), ("down", "invalid_alert", None, 0, None),
            ("down", "connection_error", ids[4], 3, None),
        ]  # fmt: skip
        http_400, oops, bad_id = dead[:3]
        assert http_400["last_error"].startswith("HTTP 400") and http_400["alert"] == a[2]
        assert base64.b64decode(http_400["raw_b64"]) == values[2] and "token" not in http_400["destination"]
        assert oops["alert"] is None and base64.b64decode(oops["raw_b64"]) == b"{oops"
        assert bad_id["alert"] == injected and dead[3]["last_error"].startswith("ClientConnectorError")
        assert dead[3]["destination"] == f"http://127.0.0.1:{port}/hook"  # no credentials, no query

    run(go())


@pytest.mark.broker
def test_restart_resumes_after_the_last_confirmed_alert(topics: Callable[..., Settings]) -> None:
    s = topics(max_attempts=1000)  # never gives up during this test: a stop interrupts the retries
    group, p0, p1 = f"hook-{uuid.uuid4().hex[:8]}", key_on(0), key_on(1)
    old = make_alert(0, patient=p0)
    first = [make_alert(r, patient=p0) for r in (1, 2, 3)]
    later = [make_alert(r, patient=p0) for r in (4, 5)] + [make_alert(6, patient=p1)]
    stuck = first[2]["alert_id"]

    async def go() -> None:
        await produce(s, [old])  # before the group exists: a new group starts at new alerts only
        async with receiving({stuck: [503] * 10_000}) as (rx, url):
            async with forwarding(forwarder(s, url, group_id=group)) as fwd:
                await produce(s, first)
                await wait_until(lambda: len(rx.acked) == 2 and rx.requests[-1].headers["Idempotency-Key"] == stuck,
                                 what="2 delivered, the third failing")  # fmt: skip
            assert rx.acked == [a["alert_id"] for a in first[:2]]
            assert sample(fwd, "vigil_webhook_dead_lettered_total", reason="http_5xx") == 0
            await produce(s, later)  # while the forwarder is down, on both partitions
            rx.plan.clear()  # the receiver recovers
            async with forwarding(forwarder(s, url, group_id=group)) as again:
                await wait_until(lambda: len(rx.acked) == 6, what="resumed")
                await asyncio.sleep(0.5)  # nothing else arrives
        on_p0 = [a["alert_id"] for a in first + later if a["patient"] == p0]
        assert [i for i in rx.acked if i in on_p0] == on_p0  # each once, in order; `old` never
        assert sorted(rx.acked) == sorted(a["alert_id"] for a in first + later)
        assert sample(again, "vigil_webhook_delivered_total") == 4

    run(go())


@pytest.mark.broker
def test_tail_filters_limits_and_prints_raw_json(topics: Callable[..., Settings], broker: str) -> None:
    s = topics()
    alerts = [
        make_alert(1, patient=key_on(0), ward="W1", severity="high"),
        make_alert(2, patient=key_on(1), ward="W2", severity="emergency", kind="news2_emergency"),
        make_alert(3, patient=key_on(0), ward="W1", severity="emergency", kind="news2_emergency"),
        make_alert(4, patient=key_on(1), ward="W1", severity="high"),
        make_alert(5, patient=key_on(0), ward="W1", severity="emergency", kind="news2_emergency"),
    ]

    async def go() -> None:
        values = await produce(s, alerts)
        lines: list[str] = []
        n = await tail_alerts(s, flt=AlertFilter.of(wards=["w1"], severities=["emergency"]), from_beginning=True,
                              limit=2, out=lines.append)  # fmt: skip
        assert n == 2 and len(lines) == 2
        assert sorted(line.split("(row ")[1] for line in lines) == ["3)", "5)"]
        assert all("EMERGENCY" in line and " W1/7 " in line and key_on(0)[:8] in line for line in lines)
        assert not any(key_on(0) in line for line in lines)  # the pseudonym is shortened
        raw: list[str] = []
        await tail_alerts(s, flt=AlertFilter.of(types=["model_risk"]), from_beginning=True, limit=2, as_json=True,
                          out=raw.append)  # fmt: skip
        assert sorted(raw) == sorted(v.decode() for v in (values[0], values[3]))
        # default: only alerts produced after the tail started
        ready, got = asyncio.Event(), []
        task = asyncio.create_task(tail_alerts(s, limit=1, out=got.append, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        await produce(s, [make_alert(9, ward="W9")])
        assert await asyncio.wait_for(task, 10) == 1 and " W9/7 " in got[0]

    run(go())
    res = CliRunner().invoke(cli, ["--bootstrap", broker, "--topic-prefix", s.topic_prefix, "alerts", "tail",
                                   "--from-beginning", "--ward", "W2", "--limit", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.count("\n") == 1 and "EMERGENCY" in res.output and "news2_emergency" in res.output


@pytest.mark.broker
def test_webhook_command_serves_metrics_and_stops_on_sigterm(topics: Callable[..., Settings], broker: str) -> None:
    s = topics()
    metrics_port = free_port()

    async def go() -> None:
        async with receiving() as (rx, url):
            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "VIGIL_TOPIC_PREFIX": s.topic_prefix,
                   "HOOK_SECRET": SECRET, "VIGIL_WEBHOOK__SESSION_TIMEOUT_MS": "2000"}  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-m", "vigil", "alerts", "webhook", url, "--secret-env", "HOOK_SECRET", "--name",
                 "ehr", "--from-beginning", "--metrics-port", str(metrics_port)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                await produce(s, [make_alert(r) for r in range(3)])
                await wait_until(lambda: len(rx.acked) == 3 or proc.poll() is not None, 30.0, "delivered by the CLI")
                assert len(rx.acked) == 3, proc.communicate(timeout=5)[0].decode()
                assert all(verify_signature(SECRET, r.body, r.headers["X-Vigil-Signature"]) for r in rx.requests)
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                assert 'vigil_webhook_delivered_total{destination="ehr"} 3.0' in text
            finally:
                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.to_thread(proc.communicate, None, 15)
            assert proc.returncode == 0, out.decode()
            assert b"Traceback" not in out

    run(go())
