"""One shared producer for an ingest listener: a message's events are acknowledged (acks=all) together.

:meth:`Publisher.send` returns only when the broker acknowledged every record it was given, or raises — the
listeners answer ``AA`` / 201 only after it returned. Dead-letter records are produced in the same call, so a
rejection is durable before the sender hears about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

from aiokafka import AIOKafkaProducer

from vigil import kafka_io, records
from vigil.config import Settings
from vigil.metrics import IngestMetrics

__all__ = ["Publisher", "dead_letter", "IngestStats", "stop_on_signals", "EdgeListener", "serve_until_signalled"]

Record = tuple[str, bytes | None, bytes]  # (broker topic, key, value)


class IngestStats:
    """Counters of one listener (by ACK code / HTTP status, events, dead letters, ignored OBX by reason).
    Never labelled by patient."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def dead_letter(settings: Settings, inv: records.Invalid, *, raw: bytes | None, key: bytes | None,
                source: str) -> Record:  # fmt: skip
    """A dead-letter record for an input rejected at the edge: ``source_topic`` names the ingest path
    (``hl7-mllp`` | ``fhir-http``), partition and offset are 0 (it never was on a topic). ``raw`` must already
    be free of patient identifiers (:func:`vigil.ingest.hl7_oru.redact`): a bounded prefix of it is kept
    (``keep_raw``), with its size and hash, beside the allow-listed projection (:mod:`vigil.deadletters`)."""
    value = records.dead_letter_record(inv, topic=source, partition=0, offset=0, raw=raw, key=key,
                                       received_at=time.time(), keep_raw=True)  # fmt: skip
    return settings.topic("dead-letter"), key, value


class Publisher:
    """A started ``AIOKafkaProducer(acks="all")`` shared by every connection of a listener."""

    def __init__(self, settings: Settings, *, timeout_s: float | None = None) -> None:
        self.settings = settings
        self.timeout_s = timeout_s if timeout_s is not None else settings.ingest.publish_timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> Publisher:
        self._producer = kafka_io.producer(self.settings, linger_ms=2,
                                           request_timeout_ms=int(self.timeout_s * 1000))
        await self._producer.start()
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, recs: Iterable[Record]) -> int:
        """Produce ``recs`` and wait until the broker acknowledged all of them (bounded by ``timeout_s``)."""
        if self._producer is None:
            msg = "Publisher.send before start()"
            raise RuntimeError(msg)
        futs = [await self._producer.send(topic, value, key=key) for topic, key, value in recs]
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs), self.timeout_s)
        return len(futs)

    def topic(self, stream: str) -> str:
        return self.settings.topic(stream)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT / SIGTERM (so the listeners stop gracefully: in-flight messages finish)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not the main thread
            loop.add_signal_handler(sig, stop.set)
    return stop


class EdgeListener:
    """What the HL7 and FHIR listeners share: settings, the site's time zone, one publisher (owned, i.e. started
    and stopped here, unless one is given), counters and Prometheus metrics labelled with :attr:`protocol`."""

    protocol: ClassVar[str]

    def __init__(self, settings: Settings, publisher: Publisher | None = None,
                 metrics: IngestMetrics | None = None) -> None:  # fmt: skip
        from vigil.codes import site_normaliser
        from vigil.ingest.events import site_zone

        self.settings = settings
        self.cfg = settings.ingest
        self.zone = site_zone(self.cfg.site_timezone)
        self.codes = site_normaliser(self.cfg.code_map)  # validated here, at start-up (ConfigError names the line)
        self.publisher = publisher or Publisher(settings)
        self._own_publisher = publisher is None
        self.stats = IngestStats()
        self.metrics = metrics or IngestMetrics()

    async def _open(self) -> None:
        from vigil.units import ucum_registry

        await asyncio.to_thread(ucum_registry)  # the UCUM parser (~2 s once per process), before serving
        if self._own_publisher:
            await self.publisher.start()

    def _serving(self, up: bool) -> None:
        self.metrics.up.labels(self.protocol).set(1 if up else 0)
        if up and self.cfg.host not in ("127.0.0.1", "::1", "localhost") and not self.cfg.tls.enabled:
            logging.getLogger(type(self).__module__).warning(
                "%s listener on %s without TLS (ingest.tls): any host that reaches it can send observations for "
                "any patient; see docs/ingest.md, Security", self.protocol, self.cfg.host)  # fmt: skip

    async def _close(self) -> None:
        if self._own_publisher:
            await self.publisher.stop()

    async def start(self, port: int | None = None) -> EdgeListener:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def address(self) -> str:
        """Where it listens, as senders address it (printed on start, for scripts)."""
        raise NotImplementedError


async def serve_until_signalled(listener: EdgeListener, port: int | None = None) -> None:
    """Start ``listener``, print its address on stdout, run until SIGINT / SIGTERM, stop it."""
    await listener.start(port)
    print(listener.address(), flush=True)  # noqa: T201 - the address, for scripts
    try:
        await stop_on_signals().wait()
    finally:
        await listener.stop()
        logging.getLogger(type(listener).__module__).info("%s listener stopped: %s", listener.protocol,
                                                          listener.stats.as_dict())  # fmt: skip
