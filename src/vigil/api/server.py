"""``vigil api``: the clinicians' HTTP API (aiohttp) over the view of :mod:`vigil.api.view`.

Start-up reads ``adt``, ``scores``, ``alerts``, ``alert-acks`` and ``audit`` from the beginning (a group-less
consumer) up to the end offsets found at start, then binds exactly ``api.host:api.port`` and follows the topics.
Every route but ``/healthz``, ``/openapi.json`` and ``/metrics`` needs ``Authorization: Bearer <token>`` whose
SHA-256 is in ``api.tokens_sha256``; a refused request gets 401 with ``WWW-Authenticate`` before its body is read.

An acknowledgement publishes one ``alert-acks`` record (key: the patient pseudonym) and one ``audit`` entry for the
alert's episode (the raising alert's id, the one the worker accepts; an escalation's id acknowledges its episode);
the same episode and action again returns the first result and publishes nothing (the view remembers both topics,
so this holds across restarts too). No access log: request paths carry pseudonyms.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vigil import kafka_io
from vigil.api.auth import TokenCheck
from vigil.api.openapi import BY_PATTERN, ID_PATTERN, WARD_PATTERN, document
from vigil.api.view import View, iso_time
from vigil.audit import audit_id, audit_record
from vigil.config import Settings
from vigil.errors import ConfigError
from vigil.kafka_io import wait_for_topic
from vigil.records import ACK_ACTIONS, AckEvent, AdtEvent, Watermark, decode

__all__ = ["ApiServer", "TOPICS", "ack_id"]

log = logging.getLogger(__name__)

TOPICS = ("adt", "scores", "alerts", "alert-acks", "audit")
PUBLIC = frozenset({"/healthz", "/openapi.json", "/metrics"})
_ID, _WARD, _BY = (re.compile(p.strip("^$")) for p in (ID_PATTERN, WARD_PATTERN, BY_PATTERN))
_MAX_BODY = 16 * 1024


def ack_id(alert_id: str, action: str) -> str:
    """Deterministic id of an acknowledgement: the same alert and action, the same id."""
    return hashlib.sha256(f"ack\x1f{alert_id}\x1f{action}".encode()).hexdigest()[:32]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vigil_api_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)  # fmt: skip
        self.auth_failures = Counter("vigil_api_auth_failures", "requests refused for a missing or wrong token",
                                     registry=self.registry)  # fmt: skip
        self.skipped = Counter("vigil_api_skipped_records", "topic records the view could not read",
                               ["topic", "reason"], registry=self.registry)  # fmt: skip
        self.published = Counter("vigil_api_published", "records published", ["topic"], registry=self.registry)
        self.patients = Gauge("vigil_api_patients", "patients in the view", registry=self.registry)
        self.evicted = Gauge("vigil_api_evicted_patients", "patients evicted from the bounded view since start",
                             registry=self.registry)  # fmt: skip


class ApiServer:
    """The API: ``await start()`` (catch up, then listen), ``await stop()``; or ``await run(stop_event)``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.api
        self.tokens = TokenCheck(t.get_secret_value() for t in self.cfg.tokens_sha256)
        if not self.tokens:
            msg = "vigil api needs at least one token: set api.tokens_sha256 (make one with: vigil api hash-token)"
            raise ConfigError(msg)
        self.view = View(self.cfg.max_patients, self.cfg.max_alerts)
        self.metrics = _Metrics()
        self.caught_up = False
        self.port: int | None = None
        self._topic_of = {settings.topic(t): t for t in TOPICS}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self._follow: asyncio.Task[None] | None = None
        self._ack_lock = asyncio.Lock()

    # --------------------------------------------------------------------------------------------- topics
    def _apply(self, rec: Any) -> None:
        topic = self._topic_of.get(rec.topic, rec.topic)
        try:
            if topic in ("adt", "alert-acks"):
                ev = decode(rec.value, topic, rec.key)
                if isinstance(ev, AdtEvent):
                    self.view.apply_adt(ev)
                elif isinstance(ev, AckEvent):
                    self.view.apply_ack(ev)
                elif isinstance(ev, Watermark):  # a producer's event-time progress (vigil.punctuate): not an event
                    return
                else:
                    self._skip(topic, ev.reason, rec)
                return
            doc = orjson.loads(rec.value) if rec.value else None
            if not isinstance(doc, dict):
                self._skip(topic, "not_an_object", rec)
            elif topic == "scores":
                self.view.apply_score(doc)
            elif topic == "alerts":
                self.view.apply_alert(doc)
            elif topic == "audit":
                self.view.apply_audit(doc)
        except Exception as exc:  # noqa: BLE001 - one unreadable record never stops the view: skipped, counted
            self._skip(topic, type(exc).__name__, rec)

    def _skip(self, topic: str, reason: str, rec: Any) -> None:
        self.view.skip(topic, reason)
        self.metrics.skipped.labels(topic, reason).inc()
        log.warning("api: skipped a %s record (%s) at partition %d offset %d", topic, reason, rec.partition,
                    rec.offset)  # fmt: skip

    async def _poll(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
        for recs in batch.values():
            for rec in recs:
                self._apply(rec)
        self.metrics.patients.set(self.view.patients)
        self.metrics.evicted.set(self.view.evicted_patients)

    async def _catch_up(self) -> None:
        self._consumer = kafka_io.consumer(self.settings)
        await self._consumer.start()
        tps = [TopicPartition(name, p) for name in self._topic_of
               for p in sorted(await wait_for_topic(self._consumer, name))]  # fmt: skip
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        end = await self._consumer.end_offsets(tps)
        deadline = time.monotonic() + self.cfg.catch_up_timeout_s
        while True:
            behind = [tp for tp in tps if await self._consumer.position(tp) < end[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                msg = f"vigil api: not caught up with {len(behind)} partitions after {self.cfg.catch_up_timeout_s} s"
                raise ConfigError(msg)
            await self._poll()
        self.caught_up = True
        log.info("api: caught up (%d records at start, %d patients)", sum(end.values()), self.view.patients)

    async def _follow_topics(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not end the API; the consumer retries
                log.exception("api: reading the topics failed; retrying")
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self._catch_up()
            self._producer = kafka_io.producer(self.settings, linger_ms=0,
                                               request_timeout_ms=int(self.cfg.publish_timeout_s * 1000))
            await self._producer.start()
            self._follow = asyncio.create_task(self._follow_topics())
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = self._runner.addresses[0][1]
        log.info("api: listening on http://%s:%d", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            self._follow = None
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()
        self._producer = self._consumer = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------------------------------------ web
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=_MAX_BODY)
        app.router.add_get("/patients/{pseudonym}", self._patient)
        app.router.add_get("/wards/{ward}", self._ward)
        app.router.add_get("/alerts", self._alerts)
        app.router.add_post("/alerts/{alert_id}/ack", self._ack)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            resp = await handler(request)
        except web.HTTPException as exc:  # routing 404/405, body too large: JSON like every other error
            resp = _error(exc.status, exc.reason, headers={k: v for k, v in exc.headers.items()
                                                           if k.lower() in ("allow", "www-authenticate")})
        self.metrics.requests.labels(route, str(resp.status)).inc()
        return resp

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in PUBLIC and request.method == "GET":
            return await handler(request)
        if not self.tokens.accepts(request.headers.get("Authorization")):
            self.metrics.auth_failures.inc()
            return _error(401, "a valid bearer token is required", {"WWW-Authenticate": 'Bearer realm="vigil"'})
        return await handler(request)

    @staticmethod
    def _param(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
        value = request.match_info[name]
        if not pattern.fullmatch(value):
            raise web.HTTPBadRequest(reason=f"{name} must match {pattern.pattern}")
        return value

    async def _patient(self, request: web.Request) -> web.Response:
        doc = self.view.patient(self._param(request, "pseudonym", _ID))
        if doc is None:
            return _error(404, "no such patient")
        return web.json_response(doc, dumps=_dumps)

    async def _ward(self, request: web.Request) -> web.Response:
        return web.json_response(self.view.ward(self._param(request, "ward", _WARD)), dumps=_dumps)

    async def _alerts(self, request: web.Request) -> web.Response:
        ward = request.query.get("ward")
        if ward is not None and not _WARD.fullmatch(ward):
            return _error(400, f"ward must match {_WARD.pattern}")
        alerts = self.view.open_alerts(ward)
        return web.json_response({"count": len(alerts), "alerts": alerts}, dumps=_dumps)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "caught_up": self.caught_up, "patients": self.view.patients},
                                 dumps=_dumps)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document(), dumps=_dumps)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(reason="send application/json")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(reason="the body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="the body must be a JSON object")
        extra = sorted(set(body) - {"by", "action"})
        if extra:
            raise web.HTTPBadRequest(reason=f"unknown fields {extra}")
        by, action = body.get("by"), body.get("action")
        if not isinstance(by, str) or not _BY.fullmatch(by):
            raise web.HTTPBadRequest(reason=f"by must be a role or pseudonymised staff id matching {_BY.pattern}")
        if action not in ACK_ACTIONS:
            raise web.HTTPBadRequest(reason=f"action must be one of {', '.join(ACK_ACTIONS)}")
        return body

    async def _ack(self, request: web.Request) -> web.Response:
        alert = self._param(request, "alert_id", _ID)
        body = await self._body(request)
        where = self.view.find_alert(alert)
        if where is None:
            return _error(404, "no such alert")
        patient, episode = where  # an escalation's id acknowledges its episode: the worker knows raised alerts
        async with self._ack_lock:
            try:
                result = await self._record_ack(episode, patient, body["by"], body["action"])
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - any broker failure: retryable 503
                log.warning("api: publishing an acknowledgement failed (%s)", type(exc).__name__)
                return _error(503, "the broker did not acknowledge in time; retry (acknowledgements are idempotent)")
        return web.json_response(result, dumps=_dumps)

    async def _publish(self, topic: str, key: str, value: dict[str, Any]) -> None:
        assert self._producer is not None
        fut = await self._producer.send(self.settings.topic(topic), orjson.dumps(value), key=key.encode())
        await asyncio.wait_for(fut, self.cfg.publish_timeout_s)
        self.metrics.published.labels(topic).inc()

    async def _record_ack(self, alert: str, patient: str, by: str, action: str) -> dict[str, Any]:
        """Publish the acknowledgement of the episode ``alert`` (its raising alert's id) and its audit entry,
        each unless the view has already seen it; the result of the first acknowledgement of alert and action."""
        rec = self.view.recorded_ack(alert, action)
        if rec is None:
            now = time.time()
            await self._publish("alert-acks", patient, {"v": 1, "alert_id": alert, "patient": patient, "by": by,
                                                        "at": iso_time(now), "action": action})  # fmt: skip
            rec = self.view.apply_ack(AckEvent(patient, now, alert, by, action))
        aid = audit_id("alert_ack", alert, rec["action"])
        if not self.view.audited(aid):
            p = self.view.patient(patient) or {}
            entry = audit_record(
                "alert_ack", who=rec["by"], at=_posix(rec["at"]), subject=f"alert:{alert}", patient=patient,
                details={"alert_id": alert, "action": rec["action"], "alert_type": self.view.alert_type(patient, alert),
                         "ward": p.get("ward")},
                audit_id=aid,
            )  # fmt: skip
            await self._publish("audit", f"alert:{alert}", entry)
            self.view.apply_audit(entry)
        return {"ack_id": ack_id(alert, rec["action"]), "alert_id": alert, "patient": rec["patient"],
                "action": rec["action"], "by": rec["by"], "at": rec["at"], "audit_id": aid}  # fmt: skip


def _posix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
