"""``vigil ingest fhir``: an aiohttp server for FHIR R4 Observations (FHIR REST, JSON).

* ``GET /fhir/metadata`` — the CapabilityStatement (:func:`vigil.ingest.fhir_rest.capability_statement`); it
  needs no token.
* ``POST /fhir/Observation`` — create one Observation: ``201 Created`` + ``Location:
  [base]/Observation/<id>/_history/1`` + ``ETag`` + the created resource (``Prefer: return=minimal`` -> no body,
  ``return=OperationOutcome`` -> an OperationOutcome) once its events were acknowledged by the broker
  (acks=all); ``422`` + OperationOutcome when it is invalid (dead-lettered), ``400`` when it is not JSON or not
  an Observation.
* ``POST /fhir`` — a Bundle (``transaction``, ``batch``; ``collection`` is accepted like ``batch``) of
  Observation creates, answered per entry. ``transaction`` is all-or-nothing: ``200`` + a
  ``transaction-response`` Bundle, or one bad entry -> ``422`` + OperationOutcome, nothing published, every bad
  entry dead-lettered. ``batch``: the valid entries are published; ``200`` + a ``batch-response`` Bundle with one
  entry per input entry (``201 Created`` + location, or ``4xx`` + OperationOutcome).

Content negotiation: JSON only (``415`` for XML or any other request media type; ``406`` when ``_format`` /
``Accept`` admit only XML); the response is ``application/fhir+json`` unless the client asked for
``application/json``. Security (``ingest.tls``, ``ingest.fhir_token_sha256``): HTTPS with optional client
certificates; bearer tokens stored hashed — a request without a valid token gets ``401`` +
``WWW-Authenticate: Bearer`` before its body is read, and nothing is published. At most
``ingest.max_connections`` connections (more get ``503`` and are closed), and a request must arrive whole
(headers and body) within ``ingest.message_deadline_s`` of its first byte (a slow sender is cut off).
Other answers: 413 body over ``ingest.max_message_bytes``; 503 the broker did not acknowledge (nothing
accepted; retrying is safe, ids are deterministic).

Dead letters keep only an allow-listed projection of the refused resource
(:func:`vigil.ingest.fhir_rest.dead_letter_projection`: resource type, Observation code / unit / value type,
where the error is) — never names, identifiers, telecom, birth dates, addresses or narrative.

Prometheus metrics (:class:`vigil.metrics.IngestMetrics`, ``protocol="fhir"``): requests by outcome (from the
HTTP status: :data:`OUTCOMES`), Observations published / rejected / rolled back, dead letters by reason, time
per request — never anything read from a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from vigil import records
from vigil.config import Settings
from vigil.ingest.fhir import ObservationResult, map_observation
from vigil.ingest.fhir_rest import (
    FHIR_JSON,
    capability_statement,
    created_resource,
    dead_letter_projection,
    request_media_ok,
    response_type,
)
from vigil.ingest.publish import EdgeListener, Publisher, dead_letter, serve_until_signalled
from vigil.ingest.security import BufferBudget, server_ssl_context, token_ok
from vigil.logs import request_id, trace
from vigil.metrics import IngestMetrics

__all__ = ["FhirServer", "serve_fhir", "operation_outcome", "SOURCE", "PROTOCOL", "OUTCOMES"]

log = logging.getLogger(__name__)
SOURCE = "fhir-http"
PROTOCOL = "fhir"  # the metrics' protocol label
# HTTP status -> the outcome label of vigil_ingest_messages_total (anything else: "other", e.g. 404 / 405 / 500)
OUTCOMES = {201: "created", 200: "ok", 400: "rejected", 401: "unauthorized", 406: "not_acceptable",
            413: "too_large", 415: "unsupported_media", 422: "unprocessable", 503: "unavailable"}  # fmt: skip
CT = FHIR_JSON
BUNDLE_TYPES = ("transaction", "batch", "collection")
METADATA = "/fhir/metadata"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n"


def operation_outcome(diagnostics: str, *, code: str = "invalid", severity: str = "error",
                      expression: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A one-issue OperationOutcome."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _json(status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> web.Response:
    data = orjson.dumps(body) if body is not None else None
    return web.Response(status=status, body=data, content_type=CT, headers=headers)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the listener's connection limit and per-request deadline: a
    connection over ``max_connections`` is answered 503 and closed before anything is read; a request that is
    not complete (headers and body) ``message_deadline_s`` after its first byte is aborted."""

    __slots__ = ("_edge", "_counted", "_timer")

    def __init__(self, edge: FhirServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = edge
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._edge.open_connections >= self._edge.cfg.max_connections:
            self._edge.stats.add("connections_refused")
            with contextlib.suppress(Exception):
                transport.write(_BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        self._counted = True
        self._edge.open_connections += 1
        self._edge.metrics.connections.labels(PROTOCOL).inc()
        self._edge.stats.add("connections")
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self.request_complete()
        self._edge.open_connections -= 1
        self._edge.metrics.connections.labels(PROTOCOL).dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        if self._timer is None:  # the first byte of a request: its deadline starts now
            self._timer = asyncio.get_running_loop().call_later(self._edge.cfg.message_deadline_s, self._expire)
        super().data_received(data)

    def request_complete(self) -> None:
        """The request's headers and body have arrived: its deadline no longer applies."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._edge.stats.add("deadline_exceeded")
        log.info("FHIR request not complete within %.0f s: connection cut", self._edge.cfg.message_deadline_s)
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


def _complete(request: web.Request) -> None:
    proto = request.protocol
    if isinstance(proto, _GuardedHandler):
        proto.request_complete()


class FhirServer(EdgeListener):
    """The HTTP(S) server. ``await FhirServer(settings).start()``, then ``.port``; ``await .stop()``."""

    protocol = PROTOCOL

    def __init__(self, settings: Settings, publisher: Publisher | None = None,
                 metrics: IngestMetrics | None = None) -> None:  # fmt: skip
        super().__init__(settings, publisher, metrics)
        self.ssl = server_ssl_context(self.cfg.tls)
        self.open_connections = 0
        self.budget = BufferBudget(self.cfg.max_buffered_bytes)  # request bodies being read, over all requests
        self.app = web.Application(client_max_size=self.cfg.max_message_bytes,
                                   middlewares=[self._measure, self._guard])  # fmt: skip
        self.app.router.add_get(METADATA, self.get_metadata)
        self.app.router.add_post("/fhir/Observation", self.post_observation)
        self.app.router.add_post("/fhir", self.post_bundle)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def address(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.cfg.host}:{self.port}/fhir"

    async def start(self, port: int | None = None) -> FhirServer:
        await self._open()
        self._runner = web.AppRunner(self.app, access_log=None)  # access logs would carry client addresses only
        await self._runner.setup()
        srv = self._runner.server
        assert srv is not None
        loop = asyncio.get_running_loop()
        kwargs = dict(getattr(srv, "_kwargs", {}))

        def factory() -> _GuardedHandler:
            return _GuardedHandler(self, srv, loop=loop, **kwargs)

        self._server = await loop.create_server(
            factory, self.cfg.host, self.cfg.fhir_port if port is None else port, ssl=self.ssl,
            ssl_handshake_timeout=self.cfg.message_deadline_s if self.ssl else None, reuse_address=True,
        )  # fmt: skip
        self._serving(True)
        auth = "bearer tokens" if self.cfg.fhir_token_sha256 else "NO authentication"
        log.info("FHIR server on %s (%s, %s)", self.address(), "TLS" + (" + client certificates" if
                 self.cfg.tls.client_cafile else "") if self.ssl else "plain HTTP", auth)  # fmt: skip
        return self

    async def stop(self) -> None:
        self._serving(False)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._close()

    # ------------------------------------------------------------------------------------------ helpers
    @web.middleware
    async def _measure(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Every request: its outcome (from the HTTP status) and the time from its arrival to the response."""
        start, status = time.perf_counter(), 500
        rid = request_id(request.headers.get("X-Request-Id"))  # the request's trace id in every log record
        try:
            with trace(rid):
                resp = await handler(request)
            resp.headers["X-Request-Id"] = rid
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.metrics.messages.labels(PROTOCOL, OUTCOMES.get(status, "other")).inc()
            self.metrics.message_seconds.labels(PROTOCOL).observe(time.perf_counter() - start)

    @web.middleware
    async def _guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Before any body is read: the bearer token (401), the response format (406), the request media type
        (415). Then the handler; its JSON answer gets the negotiated content type."""
        if request.method != "POST":
            _complete(request)
        if self.cfg.fhir_token_sha256 and request.path != METADATA:
            given = request.headers.get("Authorization")
            if not token_ok(given, self.cfg.fhir_token_sha256):
                _complete(request)
                self.stats.add("http_401")
                challenge = 'Bearer realm="vigil-fhir"' + (', error="invalid_token"' if given else "")
                text = "a valid bearer token is required (Authorization: Bearer <token>)"
                resp = _json(401, operation_outcome(text, code="login"), {"WWW-Authenticate": challenge})
                resp.force_close()  # the body is never read
                return resp
        ctype = response_type(request.query.get("_format"), request.headers.get("Accept"))
        if ctype is None:
            text = "only JSON is supported (_format=json, Accept: application/fhir+json)"
            return self._not_supported(request, 406, text)
        if request.method == "POST" and not request_media_ok(request.headers.get("Content-Type")):
            text = "unsupported media type: send application/fhir+json (XML is not supported)"
            return self._not_supported(request, 415, text)
        try:
            resp = await handler(request)
        finally:
            _complete(request)  # whatever the handler did (404, 405, ...), this request's deadline is over
        if isinstance(resp, web.Response) and resp.content_type == CT and ctype != CT:
            resp.content_type = ctype
        return resp

    def _not_supported(self, request: web.Request, status: int, text: str) -> web.Response:
        """406 / 415 with an OperationOutcome; counted; the connection closed (the body is never read)."""
        _complete(request)
        self.stats.add(f"http_{status}")
        resp = _json(status, operation_outcome(text, code="not-supported"))
        resp.force_close()
        return resp

    async def _body(self, request: web.Request) -> tuple[Any, web.Response | None]:
        # reserve the body's size (Content-Length, else the limit) in the listener's budget before reading it
        size = min(request.content_length or self.cfg.max_message_bytes, self.cfg.max_message_bytes)
        if not self.budget.take(size):
            _complete(request)
            self.stats.add("buffer_budget_exceeded")
            text = "the server holds too many request bodies now; retry later"
            resp = _json(503, operation_outcome(text, code="transient"), {"Retry-After": "5"})
            resp.force_close()
            return None, resp
        try:
            return await self._read_json(request)
        finally:
            self.budget.give(size)

    async def _read_json(self, request: web.Request) -> tuple[Any, web.Response | None]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            _complete(request)
            inv = records.Invalid("bad_type", "RequestTooLarge", f"body over {self.cfg.max_message_bytes} bytes")
            await self._publish([self._dl(inv, None, None)])
            self.stats.add("http_413")
            resp = _json(413, operation_outcome(inv.detail, code="too-costly"))
            resp.force_close()
            return None, resp
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:  # the sender went away / cut off
            self.stats.add("incomplete_requests")
            return None, _json(400, operation_outcome(f"incomplete request body ({type(exc).__name__})"))
        _complete(request)
        try:
            return orjson.loads(raw), None
        except orjson.JSONDecodeError as exc:
            inv = records.Invalid("malformed_json", "JSONDecodeError", f"the body is not JSON: {str(exc)[:120]}")
            await self._publish([self._dl(inv, None, None)])  # raw not kept: it may hold identifiers
            self.stats.add("http_400")
            return None, _json(400, operation_outcome(inv.detail, code="structure"))

    def _dl(self, inv: records.Invalid, raw: bytes | None, patient: str | None) -> tuple[str, bytes | None, bytes]:
        return dead_letter(self.settings, inv, raw=raw, key=patient.encode() if patient else None, source=SOURCE)

    def _dl_resource(self, d: Any, inv: records.Invalid, expression: str | None,
                     patient: str | None) -> tuple[str, bytes | None, bytes]:  # fmt: skip
        """A dead letter of a refused resource: only its allow-listed projection is kept."""
        return self._dl(inv, orjson.dumps(dead_letter_projection(d, expression)), patient)

    async def _publish(self, recs: list[tuple[str, bytes | None, bytes]]) -> bool:
        try:
            await self.publisher.send(recs)
            dead = self.settings.topic("dead-letter")
            reasons = [orjson.loads(value)["reason"] for topic, _, value in recs if topic == dead]
            self.stats.add("dead_letters", len(reasons))
            self.metrics.dead_lettered(PROTOCOL, reasons)
            return True
        except Exception as exc:  # noqa: BLE001 - answered 503, never 201
            self.stats.add("broker_failures")
            log.warning("FHIR request not acknowledged by the broker: %s", type(exc).__name__)
            return False

    def _map(self, d: Any) -> ObservationResult:
        return map_observation(d, secret=self.settings.pseudonym_key.get_secret_value(), zone=self.zone,
                               codes=self.codes, window=self.settings.time_window)  # fmt: skip

    def _records(self, d: Any, res: ObservationResult) -> list[tuple[str, bytes | None, bytes]]:
        if res.invalid is not None:
            return [self._dl_resource(d, res.invalid, res.expression, res.patient)]
        return [(self.publisher.topic(ev.stream), ev.key, ev.value) for ev in res.events]

    @staticmethod
    def _unavailable() -> web.Response:
        text = "the broker did not acknowledge the events; nothing was accepted, retry (ids are deterministic)"
        return _json(503, operation_outcome(text, code="transient"))

    # ----------------------------------------------------------------------------------------- handlers
    async def get_metadata(self, request: web.Request) -> web.Response:
        base = f"{request.url.origin()}/fhir"
        return _json(200, capability_statement(base, auth=bool(self.cfg.fhir_token_sha256), tls=self.ssl is not None))

    async def post_observation(self, request: web.Request) -> web.Response:
        d, error = await self._body(request)
        if error is not None:
            return error
        res = self._map(d)
        if not await self._publish(self._records(d, res)):
            return self._unavailable()
        if res.invalid is not None:
            self.stats.add("observations_rejected")
            self.metrics.observations.labels(PROTOCOL, "rejected").inc()
            code = 400 if res.expression == "resourceType" else 422
            return _json(code, operation_outcome(res.invalid.detail, code="processing", expression=res.expression))
        self.stats.add("observations_created")
        self.metrics.observations.labels(PROTOCOL, "published").inc()
        self.stats.add("events", len(res.events))
        now = datetime.now(UTC)
        headers = {"Location": f"{request.url.origin()}/fhir/Observation/{res.id}/_history/1", "ETag": 'W/"1"',
                   "Last-Modified": format_datetime(now, usegmt=True)}  # fmt: skip
        prefer = request.headers.get("Prefer", "").replace(" ", "").lower()
        if "return=minimal" in prefer:
            return _json(201, None, headers)
        if "return=operationoutcome" in prefer:
            text = f"created Observation/{res.id}: {len(res.events)} measurement(s) published"
            return _json(201, operation_outcome(text, code="informational", severity="information"), headers)
        return _json(201, created_resource(d, res.id, now), headers)

    async def post_bundle(self, request: web.Request) -> web.Response:
        d, error = await self._body(request)
        if error is not None:
            return error
        if not isinstance(d, dict) or d.get("resourceType") != "Bundle" or d.get("type") not in BUNDLE_TYPES:
            inv = records.Invalid("bad_type", "InvalidEvent", f"expected a Bundle of type {', '.join(BUNDLE_TYPES)}",
                                  "Bundle.type")  # fmt: skip
            await self._publish([self._dl_resource(d, inv, "Bundle.type", None)])
            return _json(400, operation_outcome(inv.detail, code="structure", expression="Bundle.type"))
        entries = d.get("entry") or []
        if not isinstance(entries, list) or not entries:
            inv = records.Invalid("missing_field", "InvalidEvent", "the Bundle has no entries", "Bundle.entry")
            await self._publish([self._dl_resource(d, inv, "Bundle.entry", None)])
            return _json(400, operation_outcome(inv.detail, code="required", expression="Bundle.entry"))
        resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
        pairs = enumerate(zip(entries, resources, strict=True))
        results = [_entry_request_error(e, i) or self._map(r) for i, (e, r) in pairs]
        bad = [i for i, r in enumerate(results) if r.invalid is not None]
        transaction = d["type"] == "transaction"
        recs = []
        for r, res in zip(resources, results, strict=True):
            if res.invalid is not None or not (transaction and bad):
                recs += self._records(r, res)
        if not await self._publish(recs):
            return self._unavailable()
        self.stats.add("observations_rejected", len(bad))
        self.metrics.observations.labels(PROTOCOL, "rejected").inc(len(bad))
        if transaction and bad:
            self.metrics.observations.labels(PROTOCOL, "rolled_back").inc(len(results) - len(bad))
            first = results[bad[0]]
            assert first.invalid is not None
            text = f"transaction rejected: {len(bad)} of {len(results)} entries invalid; entry[{bad[0]}]: " \
                   f"{first.invalid.detail}"  # fmt: skip
            return _json(422, operation_outcome(text, code="processing", expression=f"Bundle.entry[{bad[0]}]"))
        self.stats.add("observations_created", len(results) - len(bad))
        self.metrics.observations.labels(PROTOCOL, "published").inc(len(results) - len(bad))
        self.stats.add("events", sum(len(r.events) for r in results))
        kind = "transaction-response" if transaction else "batch-response"
        return _json(200, _bundle_response(kind, [(r, i) for i, r in enumerate(results)]))


def _entry_request_error(entry: Any, i: int) -> ObservationResult | None:
    """An entry whose ``request`` is not a create of an Observation (``POST Observation``): refused per entry."""
    req = entry.get("request") if isinstance(entry, dict) else None
    if req is None:
        return None
    if isinstance(req, dict) and req.get("method") == "POST" and str(req.get("url", "")).split("?")[0].strip("/") \
            == "Observation":  # fmt: skip
        return None
    where = f"Bundle.entry[{i}].request"
    inv = records.Invalid("bad_type", "InvalidEvent", "only creates of Observations (POST Observation) are "
                          "supported", where)  # fmt: skip
    return ObservationResult("obs-invalid", invalid=inv, expression=where)


def _bundle_response(kind: str, results: list[tuple[ObservationResult, int | None]]) -> dict[str, Any]:
    entries = []
    for res, i in results:
        if res.invalid is None:
            entries.append({"response": {"status": "201 Created", "location": f"Observation/{res.id}/_history/1",
                                         "etag": 'W/"1"'}})  # fmt: skip
        else:
            where = res.expression if res.expression and res.expression.startswith("Bundle.") else \
                f"Bundle.entry[{i}].resource" if i is not None else None  # fmt: skip
            status = "400 Bad Request" if res.expression and res.expression.endswith(".request") else \
                "422 Unprocessable Entity"  # fmt: skip
            outcome = operation_outcome(res.invalid.detail, code="processing", expression=where)
            entries.append({"response": {"status": status, "outcome": outcome}})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


async def serve_fhir(settings: Settings, port: int | None = None, metrics: IngestMetrics | None = None) -> None:
    """Run the server until SIGINT / SIGTERM, counting into ``metrics``; prints its base URL."""
    await serve_until_signalled(FhirServer(settings, metrics=metrics), port)
