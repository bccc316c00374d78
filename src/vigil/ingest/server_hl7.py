"""``vigil ingest hl7``: an asyncio MLLP listener for ORU^R01 and ADT, answering each message with an HL7 ACK.

ADT messages (:mod:`vigil.ingest.hl7_adt`) become ``adt`` events; the listener's bed census
(:mod:`vigil.ingest.census`: its own ADT plus the ``adt`` topic) attributes an ORU without PID-3 to the
occupant of its PV1-3 bed (``ingest.bed_association``). Without ``ingest.site_timezone`` the listener says
so at start-up, and every AE caused by a time without an offset says so too.

Per connection: reads are de-framed incrementally (:class:`vigil.ingest.mllp.Framer`: partial frames across
reads, several frames per read, garbage between frames, a size limit); messages of one connection are handled
in order, connections concurrently. For each message the events and dead letters are produced and the ACK is
written only after the broker acknowledged all of them (acks=all):

* ``AA`` — every usable OBX published (unused ones ignored, see :mod:`vigil.ingest.hl7_oru`);
* ``AE`` — the valid OBX published, the invalid ones dead-lettered; one ERR per invalid OBX;
* ``AR`` — nothing published, the (redacted) message dead-lettered: unparseable, not ORU^R01, no control id,
  no PID-3, too many OBX, larger than ``ingest.max_message_bytes`` — or the broker did not acknowledge in
  time (ERR 207: resend later; nothing was dead-lettered then).

Connection handling (docs/ingest.md, "Security"): TLS when ``ingest.tls.certfile`` is set (mutual TLS with
``ingest.tls.client_cafile``; a plain-text sender fails the handshake and nothing is read); at most
``ingest.max_connections`` open connections (more are closed at once); a started message must complete within
``ingest.message_deadline_s`` (a slow sender is cut off, whatever its byte rate); partial frames held over all
connections are bounded by ``ingest.max_buffered_bytes`` (a connection that would exceed it is cut off).
An idle connection is closed after ``ingest.read_timeout_s``; a sender that disconnects mid-message loses only
that unacknowledged message (it was never ACKed, so it resends). Logs carry control ids and counts, never
patient identifiers; the Prometheus metrics (:class:`vigil.metrics.IngestMetrics`, ``protocol="hl7"``) carry
ACK codes and dead-letter reasons only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from typing import Any

import orjson

from vigil import records
from vigil.config import Settings
from vigil.ingest.ack import build_ack, reason_code
from vigil.ingest.census import AdtTopicFeed, BedCensus
from vigil.ingest.hl7_adt import ParsedAdt, message_type, parse_adt
from vigil.ingest.hl7_deadletter import project_segment, scrub
from vigil.ingest.hl7_oru import ParsedOru, decode_text, parse_oru, redact
from vigil.ingest.mllp import Frame, Framer, Garbage, Oversize, frame
from vigil.ingest.publish import EdgeListener, Publisher, dead_letter, serve_until_signalled
from vigil.ingest.security import BufferBudget, server_ssl_context
from vigil.metrics import IngestMetrics

__all__ = ["Hl7Listener", "serve_hl7", "SOURCE", "PROTOCOL"]

log = logging.getLogger(__name__)
SOURCE = "hl7-mllp"  # source_topic of this path's dead letters
PROTOCOL = "hl7"  # the metrics' protocol label
_READ = 65536
_CONTROL_ID = re.compile(r"^MSH(.)(?:[^\r]*?\1){8}([^\r]*?)(?:\1|\r|$)")


class Hl7Listener(EdgeListener):
    """The MLLP server. ``await Hl7Listener(settings).start()``, then ``.port``; ``await .stop()``."""

    protocol = PROTOCOL

    def __init__(self, settings: Settings, publisher: Publisher | None = None,
                 metrics: IngestMetrics | None = None) -> None:  # fmt: skip
        super().__init__(settings, publisher, metrics)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.ssl = server_ssl_context(self.cfg.tls)
        self.budget = BufferBudget(self.cfg.max_buffered_bytes)  # partial frames over all connections
        self.census = BedCensus(self.cfg.census_lookback_s)
        self._census_feed: AdtTopicFeed | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    async def _start_feeds(self) -> None:
        """The start-up notices and the bed census (message dispatch; see the module docstring)."""
        if self.zone is None:
            log.warning("ingest.site_timezone is not set: HL7 times without a UTC offset are refused (AE, "
                        "naive_timestamp); set it (e.g. VIGIL_INGEST__SITE_TIMEZONE=Europe/Berlin) if senders "
                        "send local times")  # fmt: skip
        if self.cfg.bed_association:
            self._census_feed = await AdtTopicFeed(self.settings, self.census).start()
        else:
            log.info("bed association is off (ingest.bed_association): an ORU without PID-3 is rejected")

    async def start(self, port: int | None = None) -> Hl7Listener:
        await self._open()
        await self._start_feeds()
        self._server = await asyncio.start_server(
            self._handle, self.cfg.host, self.cfg.hl7_port if port is None else port, limit=_READ, ssl=self.ssl,
            ssl_handshake_timeout=self.cfg.message_deadline_s if self.ssl else None,
        )  # fmt: skip
        self._serving(True)
        mode = ("TLS + client certificates" if self.cfg.tls.client_cafile else "TLS") if self.ssl else "plain TCP"
        log.info("MLLP listener on %s:%d (%s, at most %d connections)", self.cfg.host, self.port, mode,
                 self.cfg.max_connections)  # fmt: skip
        return self

    async def stop(self) -> None:
        self._serving(False)
        if self._census_feed is not None:
            await self._census_feed.stop()
            self._census_feed = None
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        await self._close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.cfg.max_connections:  # over the limit: closed before anything is read
            self.stats.add("connections_refused")
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        self.stats.add("connections")
        open_conns = self.metrics.connections.labels(PROTOCOL)
        open_conns.inc()
        # asyncio's socket transport reads up to 256 KiB per recv on top of the reader's 2 x _READ: bound it, so
        # a connection holds at most ~3 x _READ in asyncio buffers (the rest of the memory bound is self.budget)
        if hasattr(writer.transport, "max_size"):
            writer.transport.max_size = _READ  # type: ignore[attr-defined]
        framer = Framer(self.cfg.max_message_bytes)
        held = 0  # bytes of this connection reserved in self.budget
        started: float | None = None  # monotonic time the unfinished message began (None: between messages)
        deadline = self.cfg.message_deadline_s
        try:
            while True:
                wait = self.cfg.read_timeout_s if started is None else deadline - (time.monotonic() - started)
                try:
                    if wait <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(reader.read(_READ), wait)
                except TimeoutError:
                    if started is None:
                        self.stats.add("idle_timeouts")
                    else:  # a slow sender: the message did not complete within the deadline
                        self.stats.add("deadline_exceeded")
                        log.info("MLLP message not complete within %.0f s (%d bytes held): connection cut",
                                 deadline, framer.held)  # fmt: skip
                    break
                if not data:
                    if framer.in_frame:
                        self.stats.add("disconnects_mid_message")
                        log.info("sender disconnected mid-message (%d bytes discarded)", framer.pending)
                    break
                received = time.perf_counter()  # every message completed by this read was received now
                items = framer.feed(data)
                now_held = framer.held
                if now_held > held and not self.budget.take(now_held - held):
                    self.stats.add("buffer_budget_exceeded")
                    log.warning("partial MLLP frames over ingest.max_buffered_bytes=%d: connection cut",
                                self.budget.limit)  # fmt: skip
                    break
                if now_held < held:
                    self.budget.give(held - now_held)
                held = now_held
                if not (framer.in_frame or held):
                    started = None
                elif started is None or any(not isinstance(it, Garbage) for it in items):
                    started = time.monotonic()  # a new message began (the previous one completed in this read)
                for item in items:
                    reply = await self.process(item)
                    if reply is not None:
                        writer.write(frame(reply))
                        await writer.drain()
                        self.metrics.message_seconds.labels(PROTOCOL).observe(time.perf_counter() - received)
        except (ConnectionError, OSError):
            self.stats.add("connection_errors")
        except asyncio.CancelledError:  # stop(): the connection is closed below; the task ends normally
            self.stats.add("closed_at_stop")
        finally:
            self.budget.give(held)
            open_conns.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)

    async def process(self, item: Frame | Garbage | Oversize) -> bytes | None:
        """The ACK for one de-framed item (``None`` for garbage: there is no message to answer)."""
        if isinstance(item, Frame):
            return await self.handle_message(item.data)
        if isinstance(item, Garbage):
            self.stats.add("garbage_chunks")
            inv = records.Invalid("bad_type", "MLLPFramingError", f"{len(item.data)} bytes outside an MLLP frame")
            await self._dead_letter_only(inv, redact(item.data))
            return None
        control_id = _control_id(item.head)
        detail = f"message of at least {item.size} bytes exceeds ingest.max_message_bytes={self.cfg.max_message_bytes}"
        inv = records.Invalid("bad_type", "MessageTooLarge", detail, None)
        self.stats.add("oversize")
        await self._dead_letter_only(inv, redact(item.head))
        self.metrics.messages.labels(PROTOCOL, "AR").inc()
        return self._ack(None, "AR", control_id, [("", "104", detail)])

    async def _dead_letter_only(self, inv: records.Invalid, raw: bytes | None) -> None:
        try:
            await self.publisher.send([dead_letter(self.settings, inv, raw=raw, key=None, source=SOURCE)])
            self.stats.add("dead_letters")
            self.metrics.dead_lettered(PROTOCOL, [inv.reason])
        except Exception as exc:  # noqa: BLE001 - never let the broker take the listener down
            log.warning("dead letter not acknowledged by the broker: %s", type(exc).__name__)

    def _locate(self, ward: str, room: str, bed: str, t: float) -> str | None:
        return self.census.occupant(ward, room, bed, t)

    def _safe(self, inv: records.Invalid, data: bytes) -> records.Invalid:
        """``inv`` with every value of the message that a dead letter may not keep removed from its detail."""
        detail = scrub(inv.detail, data)
        if inv.reason == "naive_timestamp" and self.zone is None and "site_timezone" not in detail:
            detail += " (ingest.site_timezone is not set on this listener)"
        return records.Invalid(inv.reason, inv.error_type, detail, inv.field)

    async def handle_message(self, data: bytes) -> bytes:
        """Parse, publish (events + dead letters, acks=all), then build the ACK. ADT goes to :meth:`handle_adt`."""
        secret = self.settings.pseudonym_key.get_secret_value()
        if message_type(decode_text(data[:4096]))[0] == "ADT":
            return await self.handle_adt(data, secret)
        parsed = parse_oru(data, secret=secret, zone=self.zone, max_obx=self.cfg.max_obx, codes=self.codes,
                           window=self.settings.time_window,
                           locate=self._locate if self.cfg.bed_association else None)  # fmt: skip
        key = parsed.patient.encode() if parsed.patient else None
        recs = []
        if parsed.reject is not None:
            parsed.reject = self._safe(parsed.reject, data)
            recs.append(dead_letter(self.settings, parsed.reject, raw=redact(data), key=key, source=SOURCE))
        else:
            parsed.errors = [dataclasses.replace(e, invalid=self._safe(e.invalid, data)) for e in parsed.errors]
            recs += [(self.publisher.topic(ev.stream), ev.key, ev.value) for ev in parsed.events]
            recs += [dead_letter(self.settings, e.invalid, raw=project_segment(e.segment, data), key=key, source=SOURCE)
                     for e in parsed.errors]  # fmt: skip
        refused = await self._publish(parsed, recs, data, "message")
        if refused is not None:
            return refused
        self.stats.add(f"ack_{parsed.ack_code}")
        self.stats.add("events", len(parsed.events))
        self.stats.add("dead_letters", len(recs) - len(parsed.events))
        for why, n in parsed.ignored.items():
            self.stats.add(f"ignored_{why}", n)
        if parsed.censored:
            self.stats.add("censored", parsed.censored)
        self._count(parsed)
        return self._ack(parsed, parsed.ack_code, parsed.control_id or _control_id(data), _errors(parsed),
                         summary=_summary(parsed))  # fmt: skip

    async def _publish(self, parsed: Any, recs: list[Any], data: bytes, what: str) -> bytes | None:
        """Send ``recs`` and wait for the broker's acknowledgement: None when it came, else the AR ACK to answer
        (counted, logged without patient data): the sender must resend, never hear AA for a lost event."""
        try:
            await self.publisher.send(recs)
        except Exception as exc:  # noqa: BLE001 - the sender must hear AR and resend; never AA
            self.stats.add("broker_failures")
            self.metrics.messages.labels(PROTOCOL, "AR").inc()
            log.warning("%s %s not acknowledged by the broker (%s): answered AR", what, _log_id(data),
                        type(exc).__name__)  # fmt: skip
            detail = "the broker did not acknowledge the events in time; nothing was accepted, resend later"
            return self._ack(parsed, "AR", parsed.control_id or _control_id(data), [("", "207", detail)])
        return None

    async def handle_adt(self, data: bytes, secret: str) -> bytes:
        """One ADT message: the ``adt`` event (or its dead letter) acknowledged by the broker, then the census
        updated and the ACK built."""
        parsed = parse_adt(decode_text(data), secret=secret, zone=self.zone, window=self.settings.time_window,
                           ward_units=self.cfg.ward_units)  # fmt: skip
        key = parsed.patient.encode() if parsed.patient else None
        recs = []
        if parsed.reject is not None:
            parsed.reject = self._safe(parsed.reject, data)
            recs.append(dead_letter(self.settings, parsed.reject, raw=redact(data), key=key, source=SOURCE))
        elif parsed.event is not None:
            recs.append((self.publisher.topic("adt"), parsed.event.key, parsed.event.value))
        refused = await self._publish(parsed, recs, data, "ADT message")
        if refused is not None:
            return refused
        code = parsed.ack_code
        self.stats.add(f"ack_{code}")
        self.metrics.messages.labels(PROTOCOL, code).inc()
        if parsed.adt is not None:
            self.census.apply(parsed.adt, parsed.room)
            self.stats.add("adt_events")
            summary = f"ADT^{parsed.trigger} accepted ({parsed.adt.kind})"
        elif parsed.ignored is not None:
            self.stats.add(f"ignored_{parsed.ignored}")
            summary = f"ADT^{parsed.trigger[:8]} is not used by vigil (ignored)"
        else:
            summary = None
        errors: list[tuple[str, str, str]] = []
        if parsed.reject is not None:
            self.stats.add("dead_letters")
            self.metrics.dead_lettered(PROTOCOL, [parsed.reject.reason])
            fld = parsed.reject.field or ""
            errors = [(fld.replace("-", "^1^") if "-" in fld else fld, parsed.reject_code, parsed.reject.detail)]
        return self._ack(parsed, code, parsed.control_id or _control_id(data), errors, summary=summary)

    def _count(self, parsed: ParsedOru) -> None:
        """Metrics of a message whose records the broker acknowledged (labels: ACK code, reasons; no content)."""
        m = self.metrics
        m.messages.labels(PROTOCOL, parsed.ack_code).inc()
        if parsed.reject is not None:
            m.dead_lettered(PROTOCOL, [parsed.reject.reason])
            return
        m.observations.labels(PROTOCOL, "published").inc(len(parsed.events))
        m.observations.labels(PROTOCOL, "rejected").inc(len(parsed.errors))
        m.observations.labels(PROTOCOL, "ignored").inc(sum(parsed.ignored.values()))
        m.dead_lettered(PROTOCOL, [e.invalid.reason for e in parsed.errors])

    def _ack(self, parsed: ParsedOru | ParsedAdt | None, code: str, control_id: str, errors: list[tuple[str, str, str]],
             summary: str | None = None) -> bytes:  # fmt: skip
        message = parsed.message if parsed is not None else None
        return build_ack(message, code, control_id, errors, app=self.cfg.sending_application,
                         facility=self.cfg.sending_facility, summary=summary)  # fmt: skip


def _errors(parsed: ParsedOru) -> list[tuple[str, str, str]]:
    if parsed.reject is not None:
        fld = parsed.reject.field or ""
        location = fld.replace("-", "^1^") if fld and "-" in fld else fld
        return [(location, parsed.reject_code, parsed.reject.detail)]
    return [(f"OBX^{e.position}^{e.field.split('-')[-1]}", reason_code(e.invalid.reason), e.invalid.detail)
            for e in parsed.errors]  # fmt: skip


def _summary(parsed: ParsedOru) -> str | None:
    if parsed.reject is not None:
        return None
    ignored = sum(parsed.ignored.values())
    text = f"{len(parsed.events)} observations accepted, {ignored} ignored"
    if parsed.errors:
        text += f", {len(parsed.errors)} rejected (dead-lettered; resending is safe)"
    return text


def _log_id(raw: bytes) -> str:
    """The control id as a log line may show it: as the dead-letter projection keeps it (``<n chars>`` when
    it does not match the id pattern or also occurs in an identifying field, e.g. an MRN used as MSH-10)."""
    msh = orjson.loads(redact(raw[:65536])).get("msh", {})
    return str(msh.get("control_id", "?"))[:40]


def _control_id(raw: bytes) -> str:
    """MSH-10 read from the start of a message that could not be parsed whole ('' if not found)."""
    m = _CONTROL_ID.match(decode_text(raw[:4096]))
    return m.group(2)[:199] if m else ""


async def serve_hl7(settings: Settings, port: int | None = None, metrics: IngestMetrics | None = None) -> None:
    """Run the listener until SIGINT / SIGTERM, counting into ``metrics``; prints ``host:port``."""
    await serve_until_signalled(Hl7Listener(settings, metrics=metrics), port)
