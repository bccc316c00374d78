"""Intake: every fetched record becomes an event, a dead letter or a re-route — a value, never an exception.

A record of any size and content must never stop the worker (one poison record would otherwise be
re-delivered to every restart: a crash loop that silences every patient of the partition). So, per
record, before anything else sees it:

1. **oversize** — a value over :data:`MAX_EVENT_BYTES` (a valid event is a few hundred bytes) is
   dead-lettered without being parsed;
2. **decode** — :func:`vigil.records.decode` returns an event or an :class:`~vigil.records.Invalid`;
3. **partition** — the record's key (else its patient) must hash to the partition it was read from with
   the Java-compatible murmur2 partitioner that vigil's producers use (``DefaultPartitioner`` of the Java
   client, of aiokafka and of Faust). A record written by a producer with another partitioner
   (librdkafka's default ``consistent_random`` is CRC32) would otherwise give one patient two owners
   and two conflicting score streams. It is **re-routed**: produced, unchanged, to the right partition
   of the same topic (counted in ``vigil_rerouted_events_total``), where its owner applies it; the
   copy here is committed once the re-routed copy is acknowledged. A re-route that the broker refuses
   for the record itself becomes a ``wrong_partition`` dead letter;
4. **time** — an event time outside the plausible window (:func:`vigil.timewindow.check_time`; the
   admission-relative bound is applied later, where the patient's state is known) is dead-lettered with
   ``time_out_of_range`` and never reaches the reorder buffer or the state.

Dead letters are bounded and allow-listed (:mod:`vigil.deadletters`). :meth:`Intake.produce` sends them
(and the re-routes) before the batch's outputs; a dead letter the broker refuses is replaced by its
minimal form; if even that is refused, the failure is counted (``vigil_dead_letter_failures_total``)
and logged with the original's coordinates (which stay on the input topic) and the batch goes on, so a
record can never cause a crash loop. Errors that are not about the record (a broker outage, a
timeout) propagate: the batch is not committed and is consumed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from aiokafka.partitioner import murmur2

from vigil import deadletters
from vigil.records import AckEvent, AdtEvent, Invalid, Observation, Watermark, dead_letter_record, decode
from vigil.timewindow import bounds, check_time

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer, TopicPartition

    from vigil.config import Settings
    from vigil.metrics import WorkerMetrics
    from vigil.worker.punctuation import EdgeMarks

__all__ = ["Intake", "InEvent", "Side", "DeadLetter", "Reroute", "MAX_EVENT_BYTES", "partition_for"]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024  # a valid input event is a few hundred bytes; anything this large is refused unparsed
_KEY_CACHE = 100_000


@dataclass(slots=True)
class InEvent:
    """A decoded event with its Kafka coordinates."""

    event: Observation | AdtEvent | AckEvent
    topic: str  # catalogue name: vitals | labs | adt | alert-acks
    partition: int
    broker_ts: float  # Kafka record timestamp, seconds
    offset: int = -1  # Kafka offset in (topic, partition)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's (and aiokafka's) default partitioner gives ``key``.

    >>> partition_for(b"pt-1", 8), partition_for(b"pt-1", 8) == partition_for(b"pt-1", 8)
    (0, True)
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    reason: str
    topic: str  # full input topic name (coordinates, for the fallback)
    partition: int
    offset: int
    size: int | None = None
    sha256: str | None = None
    stream: str = ""  # catalogue name (metric label)


@dataclass(slots=True)
class Reroute:
    topic: str  # full topic name
    partition: int  # the right partition
    key: bytes | None
    value: bytes | None
    origin: tuple[str, int, int]  # (topic, partition, offset) it was read from
    stream: str  # catalogue name


@dataclass(slots=True)
class Side:
    """What a batch sends besides its outputs: dead letters and re-routes (and their counts)."""

    dead: list[DeadLetter] = field(default_factory=list)
    reroutes: list[Reroute] = field(default_factory=list)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)  # (stream, reason) rejected at intake
    failures: int = 0  # dead letters that could not be produced even in minimal form
    fallbacks: int = 0

    def __bool__(self) -> bool:
        return bool(self.dead or self.reroutes)


def _outage(exc: BaseException) -> bool:
    """True for errors that are not about the record (retry the batch), False for a refused record."""
    return (
        isinstance(exc, KafkaTimeoutError | KafkaConnectionError | asyncio.CancelledError | TimeoutError | OSError)
        or bool(getattr(exc, "retriable", False))
    )  # fmt: skip


class Intake:
    def __init__(
        self, settings: Settings, metrics: WorkerMetrics, partitions_of: Callable[[str], int | None]
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.window = settings.time_window
        self._partitions_of = partitions_of
        self._parts: dict[str, tuple[float, int | None]] = {}  # topic -> (checked at, partition count)
        self._key_parts: dict[int, dict[bytes, int]] = {}  # partition count -> key -> partition (murmur2)
        self._key_part: dict[bytes, int] = {}
        self._key_n = 0
        self._logged: set[str] = set()  # key hashes already logged as re-routed
        self._bounds_at = -1.0
        self._bounds = (0.0, 0.0)

    def _n_partitions(self, topic: str, now: float) -> int | None:
        hit = self._parts.get(topic)
        if hit is None or now - hit[0] > 30.0 or now < hit[0]:
            n = self._partitions_of(topic)
            hit = self._parts[topic] = (now, n)
        return hit[1]

    def screen(
        self, r: Any, tp: TopicPartition, stream: str, now: float, side: Side, decoded: Any = None
    ) -> Observation | AdtEvent | AckEvent | Watermark | None:
        """The event of record ``r`` (read from ``tp``), or None when it went to ``side``. A producer's
        :class:`~vigil.records.Watermark` belongs to the partition it was written to (no key check), and its
        time must be plausible like an event's (a watermark far in the future would release everything).
        ``decoded``: ``decode`` of the record's value already (:meth:`take`'s fast path), else None."""
        raw: bytes | None = r.value
        if decoded is None and raw is not None and len(raw) > MAX_EVENT_BYTES:
            msg = f"a record of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte bound of an input event"
            inv = Invalid("oversize", "OversizeRecord", msg)
        else:
            ev = decode(raw, stream, r.key) if decoded is None else decoded
            if type(ev) is Invalid:
                inv = ev
            else:
                hit = self._parts.get(tp.topic)  # the partition count, re-read every 30 s
                n = hit[1] if hit is not None and 0.0 <= now - hit[0] <= 30.0 else self._n_partitions(tp.topic, now)
                if n and type(ev) is not Watermark:
                    key = r.key if r.key is not None else ev.patient.encode()  # type: ignore[union-attr]
                    if n != self._key_n:  # a topic with another partition count: a cache per count
                        self._key_part = self._key_parts.setdefault(n, {})
                        self._key_n = n
                    want = self._key_part.get(key)
                    if want is None:
                        if len(self._key_part) >= _KEY_CACHE:
                            self._key_part.clear()
                        want = self._key_part[key] = partition_for(key, n)
                    if want != tp.partition:
                        side.reroutes.append(Reroute(tp.topic, want, r.key, raw, (tp.topic, tp.partition, r.offset),
                                                     stream))  # fmt: skip
                        tag = deadletters.key_hash(key)
                        if tag not in self._logged and len(self._logged) < _KEY_CACHE:
                            self._logged.add(tag)
                            log.warning("key %s read from %s[%d] belongs to partition %d of %d (a producer with a "
                                        "non-murmur2 partitioner?): re-routed", tag, tp.topic, tp.partition, want, n)
                        return None
                if self._bounds_at != now:  # the window, once per batch (the hot path: two comparisons)
                    self._bounds_at, self._bounds = now, bounds(now, self.window)
                lo, hi = self._bounds
                t = ev.time  # type: ignore[union-attr]
                adm = ev.admit_time if type(ev) is AdtEvent else None
                if lo <= t <= hi and (adm is None or adm <= hi):
                    return ev
                fld = "at" if type(ev) is AckEvent else "watermark" if type(ev) is Watermark else "time"
                reason = check_time(t, now=now, window=self.window)
                if reason is None:
                    reason, fld = check_time(adm, now=now, window=self.window), "admit_time"  # type: ignore[arg-type]
                inv = Invalid("time_out_of_range", "TimeOutOfRange", reason or "event time out of range", fld)
        side.dead.append(self.dead_letter(inv, tp.topic, tp.partition, r.offset, raw, r.key, now, stream))
        k = (stream, inv.reason)
        side.invalid[k] = side.invalid.get(k, 0) + 1
        return None

    def take(self, records: list[Any], tp: TopicPartition, name: str, now: float, side: Side, events: list[Any],
             edges: EdgeMarks, edged: dict[tuple[str, int], int], newest: float, make: Callable[..., Any],
             metrics: WorkerMetrics | None = None) -> tuple[float, dict[str, int]]:  # fmt: skip
        """The per-record loop of one fetched topic-partition: each record screened; a producer's watermark
        recorded (:mod:`vigil.worker.punctuation`), never applied; every event appended to ``events`` as an
        :class:`InEvent` (``make``). A data record below the input's producer watermark is
        counted as a violation and kept. ``edged[(name, partition)]`` is set to the offset after which this
        input's events were edge-ordered (no minimum hold of their own), unless a violation came. Returns (newest
        event time, count per kind)."""
        screen, append, part = self.screen, events.append, tp.partition
        by_kind: dict[str, int] = {}
        edge = edges.current(tp, now)  # the producers' watermark, None: not edge-ordered
        since = -1 if edge is not None else None
        # the fast path of screen() for a well-formed observation on its own partition in the time window: the
        # partition count, the key -> partition cache and the window looked up once per fetch, not per record
        n = self._n_partitions(tp.topic, now)
        parts = self._key_parts.setdefault(n, {}) if n else {}  # the dict screen() fills (cleared in place when full)
        if self._bounds_at != now:
            self._bounds_at, self._bounds = now, bounds(now, self.window)
        lo, hi = self._bounds
        for r in records:
            raw = r.value
            if raw is None or len(raw) > MAX_EVENT_BYTES:
                ev = screen(r, tp, name, now, side)
            else:
                ev = decode(raw, name, r.key)
                if type(ev) is not Observation or not lo <= ev.time <= hi or (
                        n and parts.get(r.key if r.key is not None else ev.patient.encode()) != part):
                    ev = screen(r, tp, name, now, side, ev)  # every other case, word for word as before
            if ev is None:  # dead-lettered or re-routed
                continue
            t = ev.time
            if type(ev) is Watermark:  # consumed (committed with the batch), never applied
                edges.observe(tp, ev, now)
                was, edge = edge, edges.current(tp, now)
                if was is None and edge is not None and since is None:
                    since = r.offset  # what follows in this partition is covered
                by_kind["watermark"] = by_kind.get("watermark", 0) + 1
                continue
            if edge is not None and t < edge:  # a producer that does not punctuate, or out of order
                edges.violation(tp, name, edge - t, now, metrics)
                edge = None
            append(make(ev, name, part, r.timestamp / 1000.0, r.offset))
            if t > newest:
                newest = t
            kd = ev.kind
            by_kind[kd] = by_kind.get(kd, 0) + 1
        if edge is not None and since is not None:
            edged[(name, part)] = since
        return newest, by_kind

    @staticmethod
    def dead_letter(inv: Invalid, topic: str, partition: int, offset: int, raw: bytes | None, key: bytes | None,
                    now: float, stream: str = "") -> DeadLetter:  # fmt: skip
        value = dead_letter_record(inv, topic=topic, partition=partition, offset=offset, raw=raw, key=key,
                                   received_at=now)  # fmt: skip
        sha = hashlib.sha256(raw).hexdigest() if raw is not None else None
        return DeadLetter(key if key is None or len(key) <= deadletters.MAX_KEY else None, value, inv.reason, topic,
                          partition, offset, None if raw is None else len(raw), sha, stream)  # fmt: skip

    # -- producing -----------------------------------------------------------------------------
    @staticmethod
    async def _send_all(p: AIOKafkaProducer, items: list[tuple[str, bytes | None, bytes | None, int | None]]
                        ) -> list[BaseException | None]:  # fmt: skip
        """Send every (topic, value, key, partition) and wait for all: per item, None or the error."""
        results: list[BaseException | None] = [None] * len(items)
        pending: list[tuple[int, Any]] = []
        for i, (topic, value, key, part) in enumerate(items):
            try:
                pending.append((i, await p.send(topic, value, key=key, partition=part)))
            except Exception as exc:  # noqa: BLE001 - e.g. MessageSizeTooLargeError: a value, handled below
                results[i] = exc
        done = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (i, _), res in zip(pending, done, strict=True):
            if isinstance(res, BaseException):
                results[i] = res
        return results

    async def produce(self, p: AIOKafkaProducer, side: Side) -> None:
        """Re-routes, then dead letters (with the minimal fallback); raises only for an outage."""
        now = time.time()
        if side.reroutes:
            res = await self._send_all(p, [(rr.topic, rr.value, rr.key, rr.partition) for rr in side.reroutes])
            for rr, exc in zip(side.reroutes, res, strict=True):
                if exc is None:
                    continue
                if _outage(exc):
                    raise exc
                topic, part, off = rr.origin
                detail = f"re-routing to partition {rr.partition} failed: {type(exc).__name__}"
                side.dead.append(self.dead_letter(Invalid("wrong_partition", "WrongPartition", detail), topic, part,
                                                  off, rr.value, rr.key, now, rr.stream))  # fmt: skip
                side.invalid[(rr.stream, "wrong_partition")] = side.invalid.get((rr.stream, "wrong_partition"), 0) + 1
            side.reroutes = [rr for rr, exc in zip(side.reroutes, res, strict=True) if exc is None]
        if not side.dead:
            return
        dlq = self.settings.topic("dead-letter")
        res = await self._send_all(p, [(dlq, d.value, d.key, None) for d in side.dead])
        retry = [(d, exc) for d, exc in zip(side.dead, res, strict=True) if exc is not None]
        for _, exc in retry:
            if _outage(exc):
                raise exc
        if not retry:
            return
        side.fallbacks += len(retry)
        for d, exc in retry:
            log.error("dead letter for %s[%d]@%d refused (%s); sending its minimal form", d.topic, d.partition,
                      d.offset, type(exc).__name__)  # fmt: skip
        small = [deadletters.minimal(reason=d.reason, topic=d.topic, partition=d.partition, offset=d.offset,
                                     received_at=now, size=d.size, sha256=d.sha256, key=d.key)
                 for d, _ in retry]  # fmt: skip
        res2 = await self._send_all(p, [(dlq, v, d.key, None) for v, (d, _) in zip(small, retry, strict=True)])
        for (d, _), exc in zip(retry, res2, strict=True):
            if exc is None:
                continue
            if _outage(exc):
                raise exc
            side.failures += 1
            log.error("minimal dead letter for %s[%d]@%d refused too (%s): counted in "
                      "vigil_dead_letter_failures_total; the original stays on its topic at that offset",
                      d.topic, d.partition, d.offset, type(exc).__name__)  # fmt: skip

    def count(self, side: Side) -> None:
        """After the commit: what was dead-lettered or re-routed is durable."""
        m = self.metrics
        for (stream, reason), c in side.invalid.items():
            m.invalid.labels(stream, reason).inc(c)
        by_reason: dict[str, int] = {}
        for d in side.dead:
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        for reason, c in by_reason.items():
            m.dead_letters.labels(reason).inc(c)
        for d in side.dead:
            if d.reason == "processing_error":
                m.quarantined.labels(d.stream).inc()
        for rr in side.reroutes:
            m.rerouted.labels(rr.stream).inc()
        if side.fallbacks:
            m.dead_letter_fallbacks.inc(side.fallbacks)
        if side.failures:
            m.dead_letter_failures.inc(side.failures)
