"""``vigil ingest fhir``: an aiohttp server for FHIR R4 Observations.

* ``POST /fhir/Observation`` — one Observation. 201 + ``Location: Observation/<id>`` when its events were
  acknowledged by the broker (acks=all); 4xx + OperationOutcome otherwise (dead-lettered).
* ``POST /fhir`` — a Bundle (``transaction``, ``batch`` or ``collection``) of Observations.
  ``transaction`` is all-or-nothing: one bad entry -> 422, nothing published, every bad entry dead-lettered.
  ``batch`` / ``collection``: the valid entries are published; the response is a ``batch-response`` Bundle
  with one entry per input entry (``201 Created`` + location, or ``422`` + OperationOutcome): HTTP 201 when
  every entry was created, 200 when some were, 422 when none were.

Every answer is JSON (``application/fhir+json``). 400: not JSON / not the expected resource type; 413: body
over ``ingest.max_message_bytes``; 503: the broker did not acknowledge (nothing accepted; retrying is safe,
ids are deterministic).

Prometheus metrics (:class:`vigil.metrics.IngestMetrics`, ``protocol="fhir"``): requests by outcome (from the
HTTP status: :data:`OUTCOMES`), Observations published / rejected / rolled back, dead letters by reason, time
per request — never anything read from a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from vigil import records
from vigil.config import Settings
from vigil.ingest.fhir import ObservationResult, map_observation, redact_observation
from vigil.ingest.publish import EdgeListener, Publisher, dead_letter, serve_until_signalled
from vigil.logs import request_id, trace
from vigil.metrics import IngestMetrics

__all__ = ["FhirServer", "serve_fhir", "operation_outcome", "SOURCE", "PROTOCOL", "OUTCOMES"]

log = logging.getLogger(__name__)
SOURCE = "fhir-http"
PROTOCOL = "fhir"  # the metrics' protocol label
# HTTP status -> the outcome label of vigil_ingest_messages_total (anything else: "other", e.g. 404 / 405 / 500)
OUTCOMES = {201: "created", 200: "partial", 400: "rejected", 413: "too_large", 422: "unprocessable",
            503: "unavailable"}  # fmt: skip
CT = "application/fhir+json"
BUNDLE_TYPES = ("transaction", "batch", "collection")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operation_outcome(diagnostics: str, *, code: str = "invalid", severity: str = "error",
                      expression: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A one-issue OperationOutcome."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=CT, headers=headers)


class FhirServer(EdgeListener):
    """The HTTP server. ``await FhirServer(settings).start()``, then ``.port``; ``await .stop()``."""

    protocol = PROTOCOL

    def __init__(self, settings: Settings, publisher: Publisher | None = None,
                 metrics: IngestMetrics | None = None) -> None:  # fmt: skip
        super().__init__(settings, publisher, metrics)
        self.app = web.Application(client_max_size=self.cfg.max_message_bytes, middlewares=[self._measure])
        self.app.router.add_post("/fhir/Observation", self.post_observation)
        self.app.router.add_post("/fhir", self.post_bundle)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        assert self._site is not None and self._site._server is not None  # noqa: SLF001
        return int(self._site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]  # noqa: SLF001

    def address(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/fhir"

    async def start(self, port: int | None = None) -> FhirServer:
        await self._open()
        self._runner = web.AppRunner(self.app, access_log=None)  # access logs would carry client addresses only
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.cfg.host, self.cfg.fhir_port if port is None else port)
        await self._site.start()
        self._serving(True)
        log.info("FHIR server on http://%s:%d/fhir", self.cfg.host, self.port)
        return self

    async def stop(self) -> None:
        self._serving(False)
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

    async def _body(self, request: web.Request) -> tuple[Any, web.Response | None]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            inv = records.Invalid("bad_type", "RequestTooLarge", f"body over {self.cfg.max_message_bytes} bytes")
            await self._publish([self._dl(inv, None, None)])
            self.stats.add("http_413")
            return None, _json(413, operation_outcome(inv.detail, code="too-costly"))
        try:
            return orjson.loads(raw), None
        except orjson.JSONDecodeError as exc:
            inv = records.Invalid("malformed_json", "JSONDecodeError", f"the body is not JSON: {str(exc)[:120]}")
            await self._publish([self._dl(inv, None, None)])  # raw not kept: it may hold identifiers
            self.stats.add("http_400")
            return None, _json(400, operation_outcome(inv.detail, code="structure"))

    def _dl(self, inv: records.Invalid, raw: bytes | None, patient: str | None) -> tuple[str, bytes | None, bytes]:
        return dead_letter(self.settings, inv, raw=raw, key=patient.encode() if patient else None, source=SOURCE)

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
        return map_observation(d, secret=self.settings.pseudonym_key.get_secret_value(), zone=self.zone)

    def _records(self, d: Any, res: ObservationResult) -> list[tuple[str, bytes | None, bytes]]:
        if res.invalid is not None:
            return [self._dl(res.invalid, redact_observation(d, res.patient), res.patient)]
        return [(self.publisher.topic(ev.stream), ev.key, ev.value) for ev in res.events]

    @staticmethod
    def _unavailable() -> web.Response:
        text = "the broker did not acknowledge the events; nothing was accepted, retry (ids are deterministic)"
        return _json(503, operation_outcome(text, code="transient"))

    # ----------------------------------------------------------------------------------------- handlers
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
        loc = f"Observation/{res.id}"
        body = _bundle_response("batch-response", [(res, None)])
        return _json(201, body, {"Location": loc})

    async def post_bundle(self, request: web.Request) -> web.Response:
        d, error = await self._body(request)
        if error is not None:
            return error
        if not isinstance(d, dict) or d.get("resourceType") != "Bundle" or d.get("type") not in BUNDLE_TYPES:
            inv = records.Invalid("bad_type", "InvalidEvent", f"expected a Bundle of type {', '.join(BUNDLE_TYPES)}")
            await self._publish([self._dl(inv, None, None)])
            return _json(400, operation_outcome(inv.detail, code="structure", expression="Bundle.type"))
        entries = d.get("entry") or []
        if not isinstance(entries, list) or not entries:
            inv = records.Invalid("missing_field", "InvalidEvent", "the Bundle has no entries", "Bundle.entry")
            await self._publish([self._dl(inv, None, None)])
            return _json(400, operation_outcome(inv.detail, code="required", expression="Bundle.entry"))
        resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
        results = [self._map(r) for r in resources]
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
        status = 201 if not bad else 422 if len(bad) == len(results) else 200
        kind = "transaction-response" if transaction else "batch-response"
        return _json(status, _bundle_response(kind, [(r, i) for i, r in enumerate(results)]))


def _bundle_response(kind: str, results: list[tuple[ObservationResult, int | None]]) -> dict[str, Any]:
    entries = []
    for res, i in results:
        if res.invalid is None:
            entries.append({"response": {"status": "201 Created", "location": f"Observation/{res.id}"}})
        else:
            where = f"Bundle.entry[{i}].resource" if i is not None else None
            outcome = operation_outcome(res.invalid.detail, code="processing", expression=where)
            entries.append({"response": {"status": "422 Unprocessable Entity", "outcome": outcome}})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


async def serve_fhir(settings: Settings, port: int | None = None, metrics: IngestMetrics | None = None) -> None:
    """Run the server until SIGINT / SIGTERM, counting into ``metrics``; prints its base URL."""
    await serve_until_signalled(FhirServer(settings, metrics=metrics), port)
