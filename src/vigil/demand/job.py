"""``vigil demand run``: the streaming demand job (a separate consumer, not part of the worker).

It reads ``adt`` (the census), ``scores`` (each patient's latest risk and NEWS2), ``alerts`` and
``alert-acks`` (sepsis alerts acknowledged as treated: those patients leave the sepsis risk set) and, every
``demand.interval_min`` minutes of *event time*, writes one forecast per ward x resource x horizon to
``resource-demand`` (key: the ward), sets the Prometheus gauges of :class:`vigil.metrics.DemandMetrics`, and
writes a capacity alert (``kind: capacity_alert`` on ``resource-demand``) when P(demand > capacity) reaches
``demand.capacity_alert_level``. Forecasts whose outcome the job can see (critical-care reviews) are checked
once their horizon has passed (:mod:`vigil.demand.verify`).

Event time: a score counts at the end of its hourly row. Events wait in a small buffer until the watermark
passes them: the newest event time seen, or, while some input partitions still have unread records, the
lowest of those partitions' newest event times (so a partition read ahead of the others cannot close a
boundary early). Events are applied in event-time order; when one passes the next boundary ``B`` (a multiple of
the interval) the forecast for ``B`` is computed first, so it reflects every event at or before ``B``. A quiet
period emits nothing; the next event emits the latest boundary it passed.

State is in memory and rebuilt on start: the job reads ``adt`` and ``scores`` from the beginning of their
retention without a consumer group. During that catch-up (up to the end offsets found at start) it computes
the rounds but emits only the latest one, at the end, then live ones (``--emit-history``: emit
every boundary of the history too; records carry a deterministic ``forecast_id``, so consumers can
de-duplicate a re-emission). Malformed inputs are counted and skipped; the worker dead-letters bad ADT
events already, so the job does not dead-letter them a second time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, Hashable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from vigil.config import Settings
from vigil.demand.aggregate import CapacityAlerts, forecast, forecast_record, level_key
from vigil.demand.calibration import CALIBRATION_FILE, Calibration
from vigil.demand.state import AlertEvent, DemandState, ScoreEvent, decode_alert, decode_score
from vigil.demand.verify import VERIFIABLE_NEEDS, Verifier
from vigil.errors import ConfigError, VigilError
from vigil.metrics import DemandMetrics
from vigil.records import AckEvent, AdtEvent, Invalid, Watermark, decode

__all__ = ["DemandJob", "load_job_calibration", "version_calibration", "iso", "INPUTS"]

INPUTS = ("adt", "scores", "alerts", "alert-acks")  # the job's input streams

log = logging.getLogger(__name__)

Output = tuple[bytes, dict[str, Any]]
Record = tuple[str, bytes | None, bytes | None] | tuple[str, bytes | None, bytes | None, Hashable]


def iso(t: float) -> str:
    """POSIX seconds as ISO 8601 UTC with ``Z``.

    >>> iso(0.0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def load_job_calibration(settings: Settings, model: str | None = None, path: Path | None = None) -> Calibration:
    """The calibration of the model whose scores the job uses (``model``, else ``demand.model``, else the first
    serving model): ``path``, else ``demand.calibration_file``, else the model folder's
    ``demand_calibration.json``. :class:`ConfigError` when it is missing or for another model version."""
    from vigil.registry import Registry

    reg = Registry(settings.models_dir)
    spec = model or settings.demand.model or next(iter(reg.serving()), "")
    ref = reg.get(spec)
    file = path or settings.demand.calibration_file or ref.path / CALIBRATION_FILE
    cal = Calibration.load(Path(file))
    if (cal.model, cal.version) != (ref.name, ref.version):
        msg = (f"{file} calibrates {cal.model}:{cal.version}, but the job scores with {ref.name}:{ref.version}: "
               f"refit with `vigil demand calibrate --model {ref.name}:{ref.version}`")  # fmt: skip
        raise ConfigError(msg)
    return cal


def version_calibration(settings: Settings, name: str, version: str) -> Calibration | None:
    """The registry's calibration of ``name:version`` (its folder's ``demand_calibration.json``), or None when
    the version or the file does not exist or the file calibrates another version (logged)."""
    from vigil.registry import Registry

    try:
        ref = Registry(settings.models_dir).get(f"{name}:{version}")
        cal = Calibration.load(ref.path / CALIBRATION_FILE)
    except VigilError as exc:  # no such version, no file, a bad file
        log.warning("no demand calibration for %s:%s (%s); its scores are not counted", name, version, exc)
        return None
    if (cal.model, cal.version) != (name, version):
        log.warning("%s calibrates %s:%s, not %s:%s; ignored", ref.path / CALIBRATION_FILE, cal.model, cal.version,
                    name, version)  # fmt: skip
        return None
    return cal


class DemandJob:
    """The job's logic (:meth:`process`, :meth:`forecasts_at`) and its Kafka loop (:meth:`run`)."""

    def __init__(
        self, settings: Settings, calibration: Calibration, *, metrics: DemandMetrics | None = None,
        emit_history: bool = False, discover: Callable[[str, str], Calibration | None] | None = None,
    ) -> None:  # fmt: skip
        """``calibration``: the serving version's. ``discover(name, version)``: the calibration of another
        version of the model whose scores appear (e.g. after a promotion; default: the registry's file), None
        when it has none (its scores are then counted as ``uncalibrated_version`` and left out)."""
        cfg = settings.demand
        calibration.check(cfg.horizons_h)
        self.settings, self.cfg, self.calibration = settings, cfg, calibration
        self.model = (calibration.model, calibration.version)
        self.by_version: dict[str, Calibration] = {calibration.version: calibration}
        self._discover = discover if discover is not None else partial(version_calibration, settings)
        self._looked_up: set[str] = {calibration.version}
        self.state = DemandState(self.model, beds=cfg.beds, ttl_s=cfg.ttl_h * 3600.0,
                                 closed_keep_s=cfg.closed_keep_h * 3600.0,
                                 history_window_h=calibration.history_window_h,
                                 news2_features=bool(calibration.news2_model))  # fmt: skip
        self.alerts = CapacityAlerts(cfg.capacity_alert_level, cfg.capacity_clear_ratio)
        self.metrics = metrics or DemandMetrics()
        self.verifier = Verifier(self.metrics, cfg.levels)
        self.interval_s = cfg.interval_min * 60.0
        self.next_due: float | None = None
        self.pending: list[Output] = []  # the latest round computed while catching up (not yet emitted)
        self.silent = not emit_history
        self.emitted = 0
        self.caught_up = False  # run(): every record that existed at start is processed and its output sent
        self._gauges: set[tuple[str, str, str]] = set()
        self._units: set[str] = set()
        self._buffer: list[tuple[float, int, str, AdtEvent | ScoreEvent | AlertEvent | AckEvent]] = []  # by time
        self._order = itertools.count()
        self._latest: dict[Hashable, float] = {}  # newest event time per input partition
        self._scores_clock = -math.inf  # newest score event time read
        self._max_seen = -math.inf
        self._late = 0  # events older than the latest round computed (counted, logged once per round)
        self._started = time.monotonic()
        self._read = 0

    # ------------------------------------------------------------------------------------------ logic
    def process(self, records: Iterable[Record], behind: Collection[Hashable] = ()) -> list[Output]:
        """Take ``(stream, key, value[, partition])`` records (a stream of :data:`INPUTS`), then apply the
        buffered events the watermark has passed, in event-time order; returns the forecast and alert records of
        the boundaries passed. ``behind``: partitions that still have unread records (they hold the watermark)."""
        for rec in records:
            stream, key, raw = rec[0], rec[1], rec[2]
            part = rec[3] if len(rec) > 3 else None
            ev = _decode(stream, key, raw)
            if isinstance(ev, AdtEvent | ScoreEvent | AlertEvent | AckEvent):
                t = ev.event_time if isinstance(ev, ScoreEvent) else ev.time
                heapq.heappush(self._buffer, (t, next(self._order), stream, ev))
                self._latest[part] = max(self._latest.get(part, -math.inf), t)
                if stream == "scores":
                    self._scores_clock = max(self._scores_clock, t)
                self._max_seen = max(self._max_seen, t)
            elif isinstance(ev, Watermark):  # a producer's event-time progress on adt (vigil.punctuate): not an event
                continue
            else:
                log.debug("skipped a %s record: %s", stream, ev)
                self.metrics.events.labels(stream, "invalid").inc()
        watermark = min((self._latest.get(p, -math.inf) for p in behind), default=self._max_seen)
        out: list[Output] = []
        while self._buffer and self._buffer[0][0] <= watermark:
            t, _, stream, ev = heapq.heappop(self._buffer)
            if self.next_due is not None and t < self.next_due - self.interval_s:  # older than the job's clock
                self.metrics.late.labels(stream).inc()
                self._late += 1
            out += self._advance(t)
            self.metrics.events.labels(stream, self._apply(ev)).inc()
        if math.isfinite(watermark):
            out += self._advance(watermark)
        return out

    def _apply(self, ev: AdtEvent | ScoreEvent | AlertEvent | AckEvent) -> str:
        if isinstance(ev, AdtEvent):
            return self.state.on_adt(ev)
        if isinstance(ev, AlertEvent):
            return self.state.on_alert(ev)
        if isinstance(ev, AckEvent):
            return self.state.on_ack(ev)
        if not ev.partial and ev.model == self.model[0] and ev.news2_total >= 0:
            self.verifier.on_news2(ev.patient, ev.time, ev.news2_total)
        outcome = self.state.on_score(ev)
        if outcome == "uncalibrated_version" and ev.version not in self._looked_up:
            self._looked_up.add(ev.version)  # looked up once per version
            cal = self._discover(ev.model, ev.version)
            try:
                if cal is not None:
                    cal.check(self.cfg.horizons_h)
            except ConfigError as exc:  # fitted for other horizons: the job keeps running without it
                log.warning("demand job: %s; scores of %s:%s are not counted", exc, ev.model, ev.version)
                cal = None
            if cal is not None:
                self.by_version[ev.version] = cal
                self.state.versions.add(ev.version)
                log.info("demand job: scores of %s:%s now count, through their own calibration", ev.model, ev.version)
                outcome = self.state.on_score(ev)
        return outcome

    def _advance(self, t: float) -> list[Output]:
        step = self.interval_s
        if self.next_due is None:
            self.next_due = math.ceil(t / step) * step
            return []
        if t <= self.next_due:
            return []
        boundary = (math.ceil(t / step) - 1) * step  # the latest boundary before t
        self.next_due = boundary + step
        if self.silent:  # computed (state, gauges, alert states stay current) but held back
            self.pending = self.forecasts_at(boundary)
            return []
        return self.forecasts_at(boundary)

    def _report_late(self) -> None:
        if self._late:
            log.warning("demand job: %d events older than the forecast round already computed (applied to the "
                        "state; earlier rounds were computed without them; vigil_demand_late_events_total)", self._late)
            self._late = 0

    def finish_catch_up(self) -> list[Output]:
        """End the silent catch-up: the round of the latest boundary passed (if any). Capacity alerts raised in
        earlier rounds of the history are not announced again (the gauge shows them)."""
        self.silent = False
        out, self.pending = self.pending, []
        return out

    def forecasts_at(self, t: float) -> list[Output]:
        """One forecast round at event time ``t``: records for every ward x resource x horizon, gauges, alerts."""
        started = time.perf_counter()
        m = self.metrics
        for reason, n in self.state.evict(t).items():
            m.evictions.labels(reason).inc(n)
        # settle a forecast only once scores past its horizon have been read: scores may trail adt in event
        # time (a fast replay); the newest score time, not the lowest partition's (idle partitions would stall it)
        self.verifier.settle(min(t, self._scores_clock))
        time_iso, emitted_at = iso(t), iso(time.time())
        self._set_census_gauges()
        out: list[Output] = []
        seen: set[tuple[str, str, str]] = set()
        for snap in self.state.snapshots():
            key = snap.ward.encode()
            m.patients.labels(snap.ward).set(snap.occupied)
            if snap.free_beds is not None:
                m.free_beds.labels(snap.ward).set(snap.free_beds)
            for res in self.cfg.resources:
                for h in self.cfg.horizons_h:
                    f = forecast(snap, res, h, self.calibration, levels=self.cfg.levels, exact_max=self.cfg.exact_max,
                                 by_version=self.by_version)  # fmt: skip
                    rec = forecast_record(f, snap, time_iso=time_iso, model=self.model, emitted_at=emitted_at)
                    if res.need in VERIFIABLE_NEEDS and snap.patients is not None:
                        self.verifier.track((snap.ward, res.name, h), t, h, snap.patients, f.dist, f.intervals)
                    out.append((key, rec))
                    labels = (snap.ward, res.name, str(h))
                    seen.add(labels)
                    self._set_gauges(labels, rec)
                    event = self.alerts.update((snap.ward, res.name, h), f.p_exceed)
                    if event is not None:
                        out.append((key, self.alerts.record(event, f, rec)))
                        if event == "raised":
                            m.alerts.labels(*labels).inc()
                        log.info("capacity alert %s: %s %s %dh P(exceed)=%s", event, snap.ward, res.name, h,
                                 rec["p_exceed_capacity"])  # fmt: skip
                    m.alert_active.labels(*labels).set(1 if (snap.ward, res.name, h) in self.alerts.active else 0)
        for labels in sorted(self._gauges - seen):  # a ward that emptied and has no beds configured
            self._drop_gauges(labels)
            closed = self.alerts.close((labels[0], labels[1], int(labels[2])), time_iso=time_iso, model=self.model,
                                       emitted_at=emitted_at)  # fmt: skip
            if closed is not None:
                out.append((labels[0].encode(), closed))
                log.info("capacity alert resolved: %s %s %sh (the ward emptied)", *labels)
        for ward in {lb[0] for lb in self._gauges} - {lb[0] for lb in seen}:
            _remove(m.patients, (ward,))
            _remove(m.free_beds, (ward,))
        self._gauges = seen
        m.forecasts.inc(sum(1 for _, r in out if r["kind"] == "forecast"))
        m.forecast_time.set(t)
        m.compute_seconds.observe(time.perf_counter() - started)
        return out

    def _set_census_gauges(self) -> None:
        """Patients per care unit and those of unknown ward (in no ward's forecast)."""
        m, units = self.metrics, self.state.census.by_unit()
        for unit in self._units - set(units):
            _remove(m.unit_patients, (unit,))
        for unit, n in units.items():
            m.unit_patients.labels(unit).set(n)
        self._units = set(units)
        m.unassigned.set(self.state.census.unassigned())

    def _set_gauges(self, labels: tuple[str, str, str], rec: dict[str, Any]) -> None:
        m = self.metrics
        m.expected.labels(*labels).set(rec["expected"])
        for lv in self.cfg.levels:
            lo, hi = rec["intervals"][level_key(lv)]
            m.interval_lower.labels(*labels, level_key(lv)).set(lo)
            m.interval_upper.labels(*labels, level_key(lv)).set(hi)
        if rec["p_exceed_capacity"] is None:
            _remove(m.p_exceed, labels)
        else:
            m.p_exceed.labels(*labels).set(rec["p_exceed_capacity"])

    def _drop_gauges(self, labels: tuple[str, str, str]) -> None:
        m = self.metrics
        for g in (m.expected, m.p_exceed, m.alert_active):
            _remove(g, labels)
        for lv in self.cfg.levels:
            _remove(m.interval_lower, (*labels, level_key(lv)))
            _remove(m.interval_upper, (*labels, level_key(lv)))

    # ------------------------------------------------------------------------------------------ Kafka
    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Consume until ``stop`` is set; returns the number of records written to ``resource-demand``."""
        from vigil import kafka_io

        stop = stop or asyncio.Event()
        if not self.settings.kafka.bootstrap_servers:
            msg = "no Kafka bootstrap servers configured (--bootstrap or KAFKA_BOOTSTRAP_SERVERS)"
            raise ConfigError(msg)
        streams = {self.settings.topic(name): name for name in INPUTS}
        out_topic = self.settings.topic("resource-demand")
        consumer = kafka_io.consumer(self.settings)
        producer = kafka_io.producer(self.settings, linger_ms=5)
        await consumer.start()
        try:
            await producer.start()
            tps = await _assign(consumer, list(streams))
            end_at_start = await consumer.end_offsets(tps)
            todo = {tp: off for tp, off in end_at_start.items() if off > 0}
            if not todo:
                self.silent = False
            log.info("demand job: %s -> %s, catching up on %d records' partitions", ", ".join(streams), out_topic,
                     len(todo))  # fmt: skip
            self.metrics.up.set(1)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.settings.fetch_timeout_ms,
                                               max_records=self.settings.max_batch)  # fmt: skip
                recs: list[Record] = []
                for tp, rs in batch.items():
                    recs += [(streams[tp.topic], r.key, r.value, tp) for r in rs]
                    if rs and tp in todo and rs[-1].offset + 1 >= todo[tp]:
                        del todo[tp]
                out = self.process(recs, await _behind(consumer, tps, end_at_start))
                self._read += len(recs)
                if self.silent and not todo:
                    out += self.finish_catch_up()
                if out:
                    await self._send(producer, out_topic, out)
                    self._report_late()
                if not todo and not self.caught_up:
                    log.info("demand job: caught up: %d records read in %.1f s, %d forecast records written; now live",
                             self._read, time.monotonic() - self._started, self.emitted)  # fmt: skip
                    self.metrics.caught_up.set(1)
                self.caught_up = not todo
            return self.emitted
        finally:
            self.metrics.up.set(0)
            await consumer.stop()
            await producer.stop()

    async def _send(self, producer: Any, topic: str, out: list[Output]) -> None:
        futs = [await producer.send(topic, orjson.dumps(value), key=key) for key, value in out]
        await asyncio.gather(*futs)
        self.emitted += len(futs)


def _decode(stream: str, key: bytes | None, raw: bytes | None
            ) -> AdtEvent | ScoreEvent | AlertEvent | AckEvent | Watermark | str:  # fmt: skip
    """The event of one input record, or why it could not be read."""
    if stream == "scores":
        return decode_score(raw)
    if stream == "alerts":
        return decode_alert(raw)
    ev = decode(raw, stream, key)  # adt, alert-acks: the worker's validation
    return ev.reason if isinstance(ev, Invalid) else ev  # type: ignore[return-value]


async def _assign(consumer: Any, topics: list[str], timeout_s: float = 10.0) -> list[Any]:
    """Assign every partition of ``topics`` from the beginning; :class:`ConfigError` for a missing topic."""
    from aiokafka import TopicPartition

    from vigil import kafka_io

    tps = []
    for topic in topics:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                msg = f"topic {topic} does not exist: create the topics first (`vigil topics create`)"
                raise ConfigError(msg)
            await kafka_io.refresh_metadata(consumer)
            await asyncio.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def _behind(consumer: Any, tps: list[Any], end_at_start: dict[Any, int]) -> set[Any]:
    """Partitions with records not read yet (their high watermark, else the end offset found at start)."""
    out = set()
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None:
            high = end_at_start.get(tp, 0)
        if await consumer.position(tp) < high:
            out.add(tp)
    return out


def _remove(gauge: Any, labels: tuple[str, ...]) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
