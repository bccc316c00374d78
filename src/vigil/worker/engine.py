"""The data plane: a raw aiokafka consumer group, batch processing, changelogged state, at-least-once.

Delivery guarantee (per batch):

1. ``getmany`` fetches up to ``max_batch`` records from the assigned partitions of vitals/labs/adt.
2. Records are screened (:mod:`vigil.worker.intake`): oversize, invalid or implausibly timed ones become
   bounded dead-letter records, ones on a partition their key does not hash to are re-routed (never
   dropped, never an exception).
3. :class:`~vigil.worker.batch.Processor` updates patient state and scores closed rows.
4. Scores, alerts, dead letters and the new state of the touched patients (changelog, compacted,
   same partition number as the input; with ``state.changelog_interval_s`` > 0 a partition's changed
   states at most once per interval, :mod:`vigil.worker.changelog`) are produced with ``acks=all`` and
   **all acknowledgements are awaited**.
5. Only then are the input offsets committed — never past an event applied to a state not yet written.

A crash between 4 and 5 replays the batch: state restored from the changelog already contains the
events, which the per-patient (source, seq) de-duplication drops, so nothing is applied twice; a crash
before 4 completes re-emits the same outputs with the same deterministic ``score_id``/``alert_id``,
which subscribers de-duplicate. That is at-least-once delivery with idempotent outputs. Kafka
transactions (exactly-once) are not used: the embedded broker does not support them.

Partitions and state move together: the three input topics are co-partitioned by patient and
assigned with the range assignor, so a worker owns partition ``p`` of all three and restores
changelog partition ``p`` when it is assigned.

The engine is the consume/process loop; it composes two parts with public interfaces of their own:

* :class:`vigil.worker.checkpoint.Checkpoint` — the input offsets, and the commit (after the outputs are
  acknowledged) whose offset never passes an event held in the reorder buffer;
* :class:`vigil.worker.restore.ChangelogRestore` — the state of newly assigned partitions, read back from
  the changelog.

Its public surface for a host (:mod:`vigil.worker.app`): :meth:`Engine.start`, :meth:`Engine.stop`,
:meth:`Engine.wait`, :attr:`Engine.ready`, :meth:`Engine.swap_models`, the counters ``batches`` /
``events_seen`` / ``events_done`` / ``first_fetch_at`` (and the ``on_first_fetch`` hook), ``fatal`` and
``on_fatal``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from vigil import kafka_io
from vigil.config import Settings
from vigil.metrics import WorkerMetrics, observe_many
from vigil.registry import Registry
from vigil.scoring import Scorer
from vigil.worker import gctune
from vigil.worker.batch import InEvent, Outputs, Processor
from vigil.worker.changelog import ChangelogWriter, write_and_commit
from vigil.worker.checkpoint import Checkpoint
from vigil.worker.intake import Intake, Side
from vigil.worker.produce import BatchSender, output_records
from vigil.worker.punctuation import EdgeMarks
from vigil.worker.reorder import Input, Progress, ReorderBuffer, plan
from vigil.worker.restore import CHANGELOG, ChangelogRestore
from vigil.worker.tally import count_outputs

__all__ = ["CHANGELOG", "Engine", "INPUT_TOPICS", "load_scorers", "load_shadows"]

log = logging.getLogger(__name__)

INPUT_TOPICS = ("vitals", "labs", "adt", "alert-acks")


def load_scorers(settings: Settings) -> list[Scorer]:
    reg = Registry(settings.models_dir)
    return [
        Scorer(ref, settings.scoring.providers, settings.scoring.intra_op_threads)
        for ref in reg.serving_refs(settings.scoring.models or None)
    ]


def load_shadows(settings: Settings) -> list[Scorer]:
    """The candidates configured to score in shadow mode (``scoring.shadow``), each canary-checked."""
    reg = Registry(settings.models_dir)
    out = []
    for spec in settings.scoring.shadow:
        sc = Scorer(reg.get(spec), settings.scoring.providers, settings.scoring.intra_op_threads)
        sc.check_canary()
        out.append(sc)
    return out


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.engine._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.engine._on_assigned(assigned)


class Engine:
    """Consumes the input topics in batches and keeps per-patient state; see the module docstring."""

    def __init__(
        self, settings: Settings, metrics: WorkerMetrics | None = None, scorers: list[Scorer] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.scorers = scorers if scorers is not None else load_scorers(settings)
        self.shadows: list[Scorer] = load_shadows(settings)
        self.processor = Processor(settings, self.scorers, self.shadows)
        self.processor.changelog = ChangelogWriter(settings.state.changelog_interval_s)  # bounded by our commit
        if self.processor.budget is not None:
            self.processor.budget.metrics = self.metrics
        self._high_risk_wards: set[str] = set()
        self._topic_names = {settings.topic(t): t for t in INPUT_TOPICS}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._owned: set[int] = set()
        self.intake = Intake(settings, self.metrics, self._partitions_of)  # errors are values: worker/intake.py
        self.reorder = ReorderBuffer(settings.state.reorder_min_hold_s)
        self._progress = Progress(settings.state.reorder_stall_s)  # stalled inputs (the only wall-clock escape)
        self._tp_time: dict[TopicPartition, float] = {}  # newest event time fetched per input partition
        self._tp_quiet: dict[TopicPartition, float] = {}  # per input: wall time of its last record (reorder.Input)
        self._wake = math.inf  # wall time the reorder buffer may release by the clock (idle input, min hold)
        self._idle_wake = math.inf  # wall time the next active caught-up input turns idle
        self.edges = EdgeMarks(settings.state.edge_watermark_timeout_s, enabled=settings.state.edge_watermarks)
        self._unheld: set[int] = set()  # partitions ordered by producer watermarks: no minimum hold
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.checkpoint = Checkpoint(self.reorder, self._topic_names, self.processor.changelog)  # worker/checkpoint.py
        self.restorer = ChangelogRestore(settings, self.metrics)  # state of assigned partitions: worker/restore.py
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sender: BatchSender | None = None  # batch production (worker/produce.py)
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.events_seen = 0  # records fetched
        self.events_done = 0  # records applied to state or dead-lettered, outputs acknowledged
        self.first_fetch_at: float | None = None  # perf_counter when the first non-empty fetch returned
        self.on_first_fetch: Callable[[], None] | None = None  # called then, before it is handled (make bench)
        for t in INPUT_TOPICS:  # present from the start (0), so rates and alert rules see them
            self.metrics.watermarks.labels(t), self.metrics.watermark_violations.labels(t)
        for sc in self.scorers:
            self.metrics.model_info.labels(sc.name, sc.version, sc.provider).set(1)
        for sc in self.shadows:
            self.metrics.shadow_model_info.labels(sc.name, sc.version, sc.provider).set(1)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        gctune.tune()  # once per process: fewer, cheaper garbage collections on the hot path (worker/gctune.py)
        self._producer = kafka_io.producer(s, linger_ms=5, max_batch_size=1 << 18)
        await self._producer.start()
        await self._audit_alert_settings()
        self._consumer = kafka_io.consumer(
            s,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=1 << 20,
            session_timeout_ms=10_000,
            # the broker's long-poll: bounds how stale "caught up" is, and on the embedded broker (Tansu,
            # which does not answer a waiting fetch as soon as data arrives) the delivery delay too
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            heartbeat_interval_ms=1_000,
        )
        await self._consumer.start()
        self._consumer.subscribe(list(self._topic_names), listener=_Rebalance(self))
        self._task = asyncio.create_task(self._run(), name="vigil-engine")
        self._task.add_done_callback(self._on_done)
        self.metrics.up.set(1)
        log.info("engine started: group=%s topics=%s", s.group_id, sorted(self._topic_names))

    async def _audit_alert_settings(self) -> None:
        """Record the alert settings in force on the ``audit`` topic (one ``config_override`` entry; the same
        settings repeat one audit_id). Best effort: an audit failure is logged, never fatal."""
        from vigil.audit import alert_config_entry

        assert self._producer is not None
        key, value = alert_config_entry(self.settings, at=time.time())
        try:
            await asyncio.wait_for(await self._producer.send(self.settings.topic("audit"), value, key=key), 30)
        except Exception as exc:  # noqa: BLE001 - the audit must not stop patient monitoring
            log.warning("alert settings not recorded on the audit topic: %s", type(exc).__name__)

    async def stop(self) -> None:
        """Finish the batch in flight, commit, leave the group cleanly, flush the producer."""
        self._stopping.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self.metrics.up.set(0)
        log.info("engine stopped after %d batches, %d records", self.batches, self.events_seen)

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    @property
    def ready(self) -> bool:
        """Whether the engine holds input partitions with their state restored (consumer started, assigned, and
        the assignment's restore finished: before that the first batch would wait on the restore)."""
        tps = self._consumer.assignment() if self._consumer is not None else set()
        return bool(tps) and {tp.partition for tp in tps if tp.topic in self._topic_names} == self._owned

    async def swap_models(self, action: str, name: str, new: Scorer | None, replaces: str | None = None) -> None:
        """Switch models between batches (under the engine's lock: atomic for the pipeline).

        ``shadow`` / ``unshadow``: the shadow scorer of model ``name`` becomes ``new`` (``None``: none).
        ``promote`` / ``rollback``: ``new`` serves in the place of the model it ``replaces`` (default: its own
        name; a new model line takes over another), and leaves the shadow set if it was there. ``new`` must
        already be loaded and canary-checked (the worker's ``model-updates`` agent does that)."""
        m = self.metrics
        async with self._lock:
            if action in ("shadow", "unshadow"):
                for old in [sh for sh in self.shadows if sh.name == name]:
                    m.shadow_model_info.labels(old.name, old.version, old.provider).set(0)
                    self.shadows.remove(old)
                if new is not None:
                    self.shadows.append(new)
                    m.shadow_model_info.labels(new.name, new.version, new.provider).set(1)
                self.processor.shadows = self.shadows
                log.info("shadow models now: %s", [f"{sh.name}:{sh.version}" for sh in self.shadows] or "none")
                return
            if new is None:
                msg = f"{action} needs a model"
                raise ValueError(msg)
            retired = {new.name, replaces or new.name}
            scorers: list[Scorer] = []
            for old in self.scorers:
                if old.name in retired:
                    m.model_info.labels(old.name, old.version, old.provider).set(0)
                    if new not in scorers:
                        scorers.append(new)  # in the place of the model it replaces
                else:
                    scorers.append(old)
            if new not in scorers:
                scorers.append(new)
            self.scorers[:] = scorers
            self.processor.scorers = self.scorers
            m.model_info.labels(new.name, new.version, new.provider).set(1)
            for sh in [sh for sh in self.shadows if (sh.name, sh.version) == (new.name, new.version)]:
                self.shadows.remove(sh)  # a promoted candidate leaves the shadow set
                m.shadow_model_info.labels(sh.name, sh.version, sh.provider).set(0)
        log.info("now serving %s:%s on %s (%s)", new.name, new.version, new.provider, action)

    # -- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._consumer is not None
        last_housekeeping = 0.0
        while not self._stopping.is_set():
            try:
                # wake up when the reorder buffer can release by the clock (an input turning idle, a min hold
                # ending), not only when records arrive: nothing waits a whole fetch_timeout_ms for nothing
                timeout = self.settings.fetch_timeout_ms
                if self._wake < math.inf:
                    timeout = max(1, min(timeout, math.ceil((self._wake - time.time()) * 1000)))
                batch = await self._consumer.getmany(timeout_ms=timeout, max_records=self.settings.max_batch)
                async with self._lock:
                    await self._handle(batch)
                if time.monotonic() - last_housekeeping > 0.5:
                    last_housekeeping = time.monotonic()
                    async with self._lock:
                        await self._housekeeping()
            except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
                # a rebalance raced the batch: its offsets stay uncommitted and it is consumed again
                # (state already holds it: de-duplicated; outputs carry deterministic ids)
                log.warning("batch not committed (%s: %s); it will be re-delivered", type(exc).__name__, exc)
                self.metrics.commit_failures.inc()
        async with self._lock:  # stopping: apply what is held, then commit everything
            await self._handle({}, flush=True)
            await write_and_commit(self, everything=True)  # coalesced changelog (worker/changelog.py): every state

    def _on_done(self, task: asyncio.Task[None]) -> None:
        """The consume loop must never die silently: a fatal error ends the process (crash-only design:
        uncommitted input is re-delivered to the next owner, so this is safe)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.critical("engine failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        self.metrics.up.set(0)
        self.fatal = exc
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def _handle(self, batch: dict[TopicPartition, list], flush: bool = False) -> None:  # type: ignore[type-arg]
        """Decode a fetched batch into the reorder buffer, apply what is due, emit, then commit."""
        assert self._consumer is not None and self._producer is not None
        t0 = time.perf_counter()
        if batch and self.first_fetch_at is None and self.on_first_fetch is not None:
            self.on_first_fetch()
        m = self.metrics
        events: list[InEvent] = []
        side = Side()  # dead letters and re-routes (worker/intake.py)
        kinds: dict[tuple[str, str], int] = {}
        edged: dict[tuple[str, int], int] = {}  # input -> offset after which its events are edge-ordered
        now, n = time.time(), 0
        for tp, records in batch.items():
            name = self._topic_names[tp.topic]
            self.checkpoint.fetched(tp, records[-1].offset + 1)
            n += len(records)
            newest, by_kind = self.intake.take(records, tp, name, now, side, events, self.edges, edged,
                                               self._tp_time.get(tp, -math.inf), InEvent, self.metrics)  # fmt: skip
            for kd, c in by_kind.items():
                kinds[(name, kd)] = kinds.get((name, kd), 0) + c
            self._tp_time[tp] = newest
        self.reorder.add(events, now, edged)
        self._quiet(batch, now)
        self.events_seen += n
        if n and self.first_fetch_at is None:
            self.first_fetch_at = t0
        if n:  # consumed (held or applied): counted once, at fetch
            self.batches += 1
            m.batch_size.observe(n)
            for (topic, kind), c in kinds.items():
                if kind == "watermark":
                    m.watermarks.labels(topic).inc(c)
                else:
                    m.events.labels(topic, kind).inc(c)
        due = self.reorder.release(math.inf if flush else now, await self._watermarks(), self._unheld)
        self._wake = min(self._idle_wake, self.reorder.wake(now, self._unheld)) if self.reorder.held else math.inf
        wms = sum(c for (_, kd), c in kinds.items() if kd == "watermark")  # consumed: done with the batch
        if not due and not side and not self.checkpoint.pending():
            return
        out = self.processor.process(due)
        side.dead += out.dead  # quarantined events (processing_error, time_out_of_range)
        await self._emit(out, side)  # every output acknowledged ...
        await self.checkpoint.commit(self._consumer)  # ... then the input offsets committed
        # after the commit: what is durable
        self.events_done += len(due) + len(side.dead) - len(out.dead) + len(side.reroutes) + wms
        self.intake.count(side)
        self._count(out)
        m.batch_seconds.observe(time.perf_counter() - t0)

    def _quiet(self, batch: dict[TopicPartition, list], now: float) -> None:  # type: ignore[type-arg]
        """Per input topic-partition, since when it has been silent (reorder.Input.quiet_since): its last record,
        or for one silent since the assignment its partition's first (not idle before anything arrived)."""
        delivered = {tp for tp, records in batch.items() if records}
        if not delivered or self._consumer is None:
            return
        parts = {tp.partition for tp in delivered}
        for tp in self._consumer.assignment():
            if tp in delivered or (tp.partition in parts and tp not in self._tp_quiet):
                self._tp_quiet[tp] = now

    def _partitions_of(self, topic: str) -> int | None:
        """Partition count of ``topic`` from the consumer's metadata (None when not known yet)."""
        parts = self._consumer.partitions_for_topic(topic) if self._consumer is not None else None
        return len(parts) if parts else None

    async def _watermarks(self) -> dict[int, tuple[float, float]]:
        """Per input partition: (event-time watermark, fresh_since), and pace the consumer: pause the
        topic-partitions that run ahead of their partition's watermark, resume the others (see
        :func:`vigil.worker.reorder.plan`): the min over the input topics of the producers' watermark or the
        newest event time fetched (idle or stalled ones not counting); fresh_since: the oldest last poll of the
        idle ones (their "caught up" is only known as of that poll)."""
        assert self._consumer is not None
        c, st, now = self._consumer, self.settings.state, time.time()
        paused = c.paused()
        inputs: list[Input] = []
        # positions not known yet (after an assignment: one committed-offset lookup each), looked up together
        missing = [tp for tp in c.assignment() if self.checkpoint.position(tp) is None and c.highwater(tp) is not None]
        found = await asyncio.gather(*map(c.position, missing), return_exceptions=True)
        for tp, got in zip(missing, found, strict=True):
            if isinstance(got, BaseException) and not isinstance(got, IllegalStateError):  # revoked: None
                raise got
            if isinstance(got, int):
                self.checkpoint.fetched(tp, got)
        for tp in c.assignment():
            hw, pos = c.highwater(tp), self.checkpoint.position(tp)
            # a paused topic-partition is never "caught up": it is not fetched, so its high watermark is stale
            # and records beyond it (all later than its newest fetched event) may already be on the broker
            caught_up = tp not in paused and hw is not None and pos is not None and pos >= hw
            was_stalled = tp in self._progress.stalled
            if self._progress.update(tp, pos, not caught_up and tp not in paused, now):
                topic = self._topic_names.get(tp.topic, tp.topic)
                self.metrics.reorder_stalled.labels(topic).inc()
                log.warning("input %s partition %d made no fetch progress for %.0f s (position %s, high "
                            "watermark %s): no longer holding the other topics back; its events for rows "
                            "already closed will count as late", topic, tp.partition, st.reorder_stall_s,
                            pos, hw)  # fmt: skip
            elif was_stalled and tp not in self._progress.stalled:
                log.info("input %s partition %d progresses again", tp.topic, tp.partition)
            polled = c.last_poll_timestamp(tp)
            inputs.append(Input(tp, tp.partition, self._tp_time.get(tp, -math.inf), caught_up,
                                polled / 1000.0 if polled is not None else -math.inf, tp in self._progress.stalled,
                                self._tp_quiet.get(tp, -math.inf), self.edges.current(tp, now)))  # fmt: skip
        pl = plan(inputs, self.reorder.held_by_partition(), st.reorder_slack_s, st.reorder_max_held,
                  now=now, idle_s=st.reorder_idle_s)  # fmt: skip
        self._idle_wake, self._unheld = pl.wake, pl.unheld
        self.metrics.reorder_edge_inputs.set(sum(1 for i in inputs if i.edge is not None))
        if resume := paused - pl.pause:
            c.resume(*resume)
        if pause := pl.pause - paused:
            c.pause(*pause)
            for tp in pause:
                self.metrics.reorder_pauses.labels(self._topic_names.get(tp.topic, tp.topic)).inc()
        self.metrics.reorder_paused.set(len(pl.pause))
        self.metrics.reorder_held.set(self.reorder.held)
        return pl.watermarks

    def _count(self, out: Outputs) -> None:
        count_outputs(self.metrics, out, self.scorers, self.processor.drift, self.processor.patients())

    async def _emit(self, out: Outputs, side: Side | None = None) -> None:
        assert self._producer is not None
        if side:  # dead letters and re-routes first, each failure handled (worker/intake.py)
            await self.intake.produce(self._producer, side)
        if self._sender is None:
            self._sender = BatchSender(self._producer)
        # scores, drift, shadow scores, alerts and the changelog, batched per partition (worker/produce.py)
        futs = await self._sender.send(output_records(self.settings, out, [], CHANGELOG))
        n_scores = len(out.scores)
        if futs:
            await asyncio.gather(*futs)
        acked = time.time()
        m = self.metrics  # one pass per histogram (metrics.observe_many), not one observe per record
        if out.score_trigger_ts:
            observe_many(m.e2e_latency.labels("score"), np.maximum(0.0, acked - np.asarray(out.score_trigger_ts)))
        if out.alert_trigger_ts:
            observe_many(m.e2e_latency.labels("alert"), np.maximum(0.0, acked - np.asarray(out.alert_trigger_ts)))
        if n_scores and out.row_end_times:
            observe_many(m.event_time_lag, np.maximum(0.0, acked - np.asarray(out.row_end_times[:n_scores])))

    async def _housekeeping(self) -> None:
        assert self._producer is not None and self._consumer is not None
        out = self.processor.finalize_due()
        tombstones, reasons = self.processor.evict_idle()
        out.changelog += tombstones
        out.counts["evicted"] = reasons
        if out.changelog:
            await self._emit(out)
            self._count(out)
        await write_and_commit(self)  # coalesced changelog (worker/changelog.py): the partitions due, then commit
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await self._consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            self.metrics.consumer_lag.labels(self._topic_names.get(tp.topic, tp.topic), str(tp.partition)).set(
                max(0, hw - pos)
            )
        self.metrics.patients.set(self.processor.patients())
        high = self.processor.high_risk_by_ward()
        for ward in self._high_risk_wards - set(high):
            self.metrics.high_risk.labels(ward).set(0)
        for ward, n in high.items():
            self.metrics.high_risk.labels(ward).set(n)
        self._high_risk_wards = set(high) | self._high_risk_wards

    # -- rebalance: state moves with partitions ---------------------------------------------------
    async def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight: it commits before we let go
            log.info("partitions revoked: %s", sorted({tp.partition for tp in revoked}))
            await write_and_commit(self, everything=True, revoking=True)  # coalesced changelog: every state, commit

    async def _on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._lock:
            parts = {tp.partition for tp in assigned if tp.topic in self._topic_names}
            gone = self._owned - parts
            new = parts - self._owned
            self.processor.drop_partitions(gone)
            # aiokafka starts every assigned partition afresh (unpaused, at its committed offset, which is
            # at or before the lowest offset held): what the buffer holds is fetched again, so forget it
            self.reorder.drop_partitions(self._owned | parts)
            self._progress.clear()
            self.checkpoint.reset()
            self._tp_time.clear()
            self._tp_quiet.clear()
            self.edges.clear()
            if new:
                restored = await self.restorer.restore(sorted(new))
                for p in new:
                    self.processor.load_partition(p, restored.get(p, {}))
            self._owned = parts
            self.metrics.partitions.set(len(parts))
            log.info("partitions assigned: %s (restored %s)", sorted(parts), sorted(new))
