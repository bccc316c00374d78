"""``vigil api``: an HTTP API (aiohttp) for clinical surfaces and integrations, over the same topics the
workers write. Every request needs ``Authorization: Bearer <api.token>`` (compared in constant time; no token
configured = the API refuses to start). Patients are the pseudonyms of the topics, never MRNs.

- ``GET /v1/patients/{patient}``: the patient's latest risk per model, the alert level in force, NEWS2, open alerts
- ``GET /v1/wards/{ward}``: the ward's patients, highest risk first
- ``GET /v1/alerts?ward=W``: open alert episodes (raised or escalated, not resolved/dismissed/treated)
- ``POST /v1/alerts/{alert_id}/ack`` ``{"by": "rn-7", "action": "acknowledged"}``: publishes to ``alert-acks``
  (key: the patient), idempotent (the same alert, person and action publish once and answer the same ``ack_id``),
  and appends to the audit trail
- ``GET /openapi.json``: the OpenAPI 3.1 document; ``GET /healthz``: liveness (no token)

Each response carries ``X-Request-Id`` (the caller's, when it is a plain token); log records carry it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from vigil.api.view import View
from vigil.config import Settings
from vigil.errors import ConfigError
from vigil.logs import request_id, trace

__all__ = ["ApiServer", "openapi", "ACTIONS"]

log = logging.getLogger(__name__)
ACTIONS = ("acknowledged", "escalated", "dismissed", "treated")
_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BY_OK = re.compile(r"[A-Za-z0-9._@ -]{1,64}")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status)


class ApiServer:
    """The API over a :class:`View` fed by a background consumer of ``scores`` and ``alerts``."""

    def __init__(self, settings: Settings, view: View | None = None) -> None:
        if settings.api.token is None or not settings.api.token.get_secret_value():
            msg = "vigil api needs a bearer token: set VIGIL_API__TOKEN (api.token)"
            raise ConfigError(msg)
        self.settings = settings
        self.cfg = settings.api
        self.view = view or View(settings.api.max_patients)
        self._token = settings.api.token.get_secret_value().encode()
        self._acked: dict[str, str] = {}  # idempotency key -> ack id (published)
        self._lock = asyncio.Lock()
        self.producer: Any = None
        self._consumer_task: asyncio.Task[None] | None = None
        self.app = web.Application(middlewares=[self._request_id, self._auth], client_max_size=16_384)
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/v1/patients/{patient}", self.get_patient)
        r.add_get("/v1/wards/{ward}", self.get_ward)
        r.add_get("/v1/alerts", self.get_alerts)
        r.add_post("/v1/alerts/{alert_id}/ack", self.post_ack)
        self.runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self, consume: bool = True) -> ApiServer:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(acks="all", **self.settings.kafka.client_kwargs())
        await self.producer.start()
        if consume:
            self._consumer_task = asyncio.create_task(self._consume())
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        log.info("vigil api on http://%s:%d (OpenAPI: /openapi.json)", self.cfg.host, self.port)
        return self

    async def stop(self) -> None:
        if self._consumer_task is not None:
            self._consumer_task.cancel()
            await asyncio.gather(self._consumer_task, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.producer is not None:
            await self.producer.stop()

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        topics = {s.topic("scores"): self.view.on_score, s.topic("alerts"): self.view.on_alert}
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                    **s.kafka.client_kwargs())  # fmt: skip
        await consumer.start()
        try:
            tps = []
            for topic in topics:
                parts = consumer.partitions_for_topic(topic)
                while not parts:
                    await consumer._client.force_metadata_update()  # noqa: SLF001
                    await asyncio.sleep(0.2)
                    parts = consumer.partitions_for_topic(topic)
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, recs in batch.items():
                    for rec in recs:
                        try:
                            value = orjson.loads(rec.value)
                        except (orjson.JSONDecodeError, TypeError):
                            continue  # the worker validates its own output; nothing to show
                        if isinstance(value, dict):
                            topics[tp.topic](value)
        finally:
            await consumer.stop()

    # ------------------------------------------------------------------------------------------ middleware
    @web.middleware
    async def _request_id(self, request: web.Request, handler: Any) -> web.StreamResponse:
        rid = request_id(request.headers.get("X-Request-Id"))
        with trace(rid):
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = _error(exc.status, exc.reason)
            resp.headers["X-Request-Id"] = rid
            return resp

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in ("/healthz", "/openapi.json"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
        if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(self._token).digest()):
            resp = _error(401, "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="vigil"'
            return resp
        return await handler(request)

    # ------------------------------------------------------------------------------------------ handlers
    async def healthz(self, request: web.Request) -> web.Response:
        """503 when the topic reader stopped (the answers would go stale)."""
        task = self._consumer_task
        if task is not None and task.done():
            exc = None if task.cancelled() else task.exception()
            return _json({"ok": False, "error": f"topic reader stopped: {type(exc).__name__ if exc else 'cancelled'}"},
                         503)  # fmt: skip
        return _json({"ok": True, "patients": len(self.view.scores), "open_alerts": len(self.view.open)})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi())

    async def get_patient(self, request: web.Request) -> web.Response:
        patient = request.match_info["patient"]
        if not _ID_OK.fullmatch(patient):
            return _error(400, "patient must be a pseudonym of 1-128 [A-Za-z0-9._:-]")
        found = self.view.patient(patient)
        return _json(found) if found is not None else _error(404, "no scores for this patient")

    async def get_ward(self, request: web.Request) -> web.Response:
        ward = request.match_info["ward"]
        if not _ID_OK.fullmatch(ward):
            return _error(400, "ward must be 1-128 [A-Za-z0-9._:-]")
        return _json(self.view.ward(ward))

    async def get_alerts(self, request: web.Request) -> web.Response:
        ward = request.query.get("ward")
        if ward is not None and not _ID_OK.fullmatch(ward):
            return _error(400, "ward must be 1-128 [A-Za-z0-9._:-]")
        return _json({"alerts": self.view.open_alerts(ward)})

    async def post_ack(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        if not _ID_OK.fullmatch(alert_id):
            return _error(400, "alert_id must be 1-128 [A-Za-z0-9._:-]")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "the body must be a JSON object {\"by\": ..., \"action\": ...}")
        if not isinstance(body, dict) or set(body) - {"by", "action"}:
            return _error(400, "the body must be a JSON object with only 'by' and 'action'")
        by, action = body.get("by"), body.get("action", "acknowledged")
        if not isinstance(by, str) or not _BY_OK.fullmatch(by):
            return _error(400, "'by' must be a staff identifier of 1-64 [A-Za-z0-9._@ -]")
        if action not in ACTIONS:
            return _error(400, f"'action' must be one of {', '.join(ACTIONS)}")
        alert = self.view.alerts.get(alert_id)
        if alert is None:
            return _error(404, "no raised alert with this id")
        key = f"{alert_id}|{by}|{action}"
        ack_id = hashlib.sha256(key.encode()).hexdigest()[:32]
        async with self._lock:
            if key in self._acked:
                return _json({"ack_id": ack_id, "published": False, "alert_id": alert_id, "action": action})
            at = datetime.now(UTC).isoformat(timespec="seconds")
            ack = {"v": 1, "alert_id": alert_id, "patient": alert["patient"], "by": by, "at": at, "action": action}
            topic = self.settings.topic("alert-acks")
            await asyncio.wait_for(
                await self.producer.send(topic, orjson.dumps(ack), key=str(alert["patient"]).encode()), 30
            )
            self._acked[key] = ack_id
        from vigil import audit

        details = {"ack_id": ack_id, "type": alert.get("type"), "ward": alert.get("ward")}
        await asyncio.to_thread(audit.record, self.settings.models_dir, "alert-" + action, alert_id, actor=by,
                                details=details)  # fmt: skip
        log.info("alert %s %s by %s (ack %s)", alert_id, action, by, ack_id)
        return _json({"ack_id": ack_id, "published": True, "alert_id": alert_id, "action": action}, 201)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": ref(name)}}

    err = {"description": "error", "content": body("Error")}
    ident = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}

    def ok(ref_name: str, code: str = "200") -> dict[str, Any]:
        return {code: {"description": "ok", "content": body(ref_name)}, "400": err, "401": err}

    score = {"type": "object", "properties": {
        "model": {"type": "string"}, "version": {"type": ["string", "null"]}, "time": {"type": ["string", "null"]},
        "row": {"type": ["integer", "null"]}, "partial": {"type": "boolean"},
        "risk": {"type": ["number", "null"]}, "alert_level": {"type": ["number", "null"]},
        "above_alert_level": {"type": ["boolean", "null"]}, "news2": {"type": ["integer", "null"]},
        "news2_parts": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}}}}  # fmt: skip
    patient = {"type": "object", "required": ["patient", "scores", "open_alerts"], "properties": {
        "patient": {"type": "string"}, "ward": {"type": ["string", "null"]}, "bed": {"type": ["string", "null"]},
        "unit": {"type": ["string", "null"]}, "scores": {"type": "array", "items": ref("Score")},
        "open_alerts": {"type": "array", "items": {"type": "object"}}}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "vigil API", "version": "1", "description": "Current risk, NEWS2 and open alerts per "
                 "pseudonymised patient and per ward; acknowledge alerts (published to alert-acks, audited)."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/patients/{patient}": {"get": {"summary": "a patient's current risk and NEWS2", "parameters": [
                {"name": "patient", "in": "path", "required": True, "schema": ident}],
                "responses": {**ok("Patient"), "404": err}}},
            "/v1/wards/{ward}": {"get": {"summary": "a ward's patients, highest risk first", "parameters": [
                {"name": "ward", "in": "path", "required": True, "schema": ident}], "responses": ok("Ward")}},
            "/v1/alerts": {"get": {"summary": "open alert episodes", "parameters": [
                {"name": "ward", "in": "query", "required": False, "schema": ident}], "responses": ok("Alerts")}},
            "/v1/alerts/{alert_id}/ack": {"post": {"summary": "acknowledge an alert (idempotent)", "parameters": [
                {"name": "alert_id", "in": "path", "required": True, "schema": ident}],
                "requestBody": {"required": True, "content": body("AckRequest")},
                "responses": {**ok("Ack", "201"), "200": {"description": "already acknowledged (same ack_id)",
                                                          "content": body("Ack")}, "404": err}}},
            "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Score": score, "Patient": patient,
                "Ward": {"type": "object", "required": ["ward", "patients", "open_alerts"], "properties": {
                    "ward": {"type": "string"}, "patients": {"type": "array", "items": ref("Patient")},
                    "open_alerts": {"type": "integer"}}},
                "Alerts": {"type": "object", "required": ["alerts"],
                           "properties": {"alerts": {"type": "array", "items": {"type": "object"}}}},
                "AckRequest": {"type": "object", "required": ["by"], "additionalProperties": False, "properties": {
                    "by": {"type": "string", "pattern": "^[A-Za-z0-9._@ -]{1,64}$"},
                    "action": {"type": "string", "enum": list(ACTIONS)}}},
                "Ack": {"type": "object", "required": ["ack_id", "published", "alert_id", "action"], "properties": {
                    "ack_id": {"type": "string"}, "published": {"type": "boolean"}, "alert_id": {"type": "string"},
                    "action": {"type": "string"}}},
            },
        },
    }  # fmt: skip


async def serve_api(settings: Settings, stop: asyncio.Event) -> None:
    server = await ApiServer(settings).start()
    print(f"{settings.api.host}:{server.port}", flush=True)  # noqa: T201 - the address, for scripts
    try:
        await stop.wait()
    finally:
        await server.stop()

