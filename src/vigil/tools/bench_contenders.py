"""The contenders of ``make bench`` (:mod:`vigil.tools.bench`): the workload, publishing it, the raw client,
the naive Faust agent and the pipeline, each checked for doing the whole job, and the throughput step."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import TopicPartition

from vigil import kafka_io
from vigil.config import Settings
from vigil.tools import bench_cpu

__all__ = ["BenchFailure", "Result", "Workload", "check", "contender_settings", "expected_rows", "n_scorers",
           "run_contender", "throughput", "workload"]  # fmt: skip

STREAMS = ("vitals", "labs", "adt")
NAIVE_TOPIC = "bench-naive-in"  # the naive agent's input: every event, merged in event-time order
CONTENDERS = ("raw", "naive", "pipeline")


class BenchFailure(RuntimeError):
    """A contender did not do the whole job: its speed means nothing."""


@dataclass
class Workload:
    """Events in publish order ``(stream, key, value)`` and what a correct consumer must produce."""

    events: list[tuple[str, bytes, bytes]]
    stays: int
    rows: int  # closed hourly rows, each scored once per serving model
    invalid: int = 0  # events the edge validation rejects (implausible values in the data): dead letters
    times: list[float] = field(default_factory=list)  # event time of each event (non-decreasing: merged order)


@dataclass
class Result:
    contender: str
    events: int
    seconds: float
    scores: int = 0  # distinct score ids found on the contender's own scores topic
    expected_scores: int = 0
    late: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] | None = None  # CPU seconds in the timed span (vigil.tools.bench_cpu.spent); None: not read

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def expected_rows(iculos: np.ndarray, max_gap: int) -> int:
    """Rows a stay's replay closes: ICULOS first..last (the discharge closes the last), except that a silence
    longer than ``max_gap`` hours skips its empty hours (only the row before it is closed)."""
    rows = 1  # the last row, closed by the discharge
    for a, b in zip(iculos[:-1].tolist(), iculos[1:].tolist(), strict=True):
        rows += b - a if b - a <= max_gap else 1
    return rows


def workload(data: Path, stays: int, settings: Settings) -> Workload:
    """The replay's events of the first ``stays`` stays (in memory, published identically to every contender)."""
    from vigil.physionet import iter_stays
    from vigil.replay import merged_events

    loaded = [s for s in iter_stays(data, limit=stays) if s.n_rows]
    rows = sum(expected_rows(s.iculos, settings.scoring.max_gap_rows) for s in loaded)
    from vigil.records import Invalid, decode

    merged = list(merged_events(loaded, settings.pseudonym_key.get_secret_value()))
    events = [(stream, key, value) for stream, _, key, value in merged]
    invalid = sum(1 for stream, key, value in events if type(decode(value, stream, key)) is Invalid)
    return Workload(events, len(loaded), rows, invalid, [t for _, t, _, _ in merged])


# ----------------------------------------------------------------------------------------------- Kafka helpers
async def _publish(s: Settings, wl: Workload, naive: bool) -> None:
    """Create the prefix's topics and publish the workload as fast as possible (acks=all), per-key order kept:
    to vitals/labs/adt, or (``naive``) all to one topic with the stream in a header."""
    from aiokafka.admin import NewTopic

    from vigil.catalog import create_topics, load_catalog
    from vigil.replay import _Batcher

    await create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix)
    producer = kafka_io.producer(s, linger_ms=5, max_batch_size=1 << 18)
    await producer.start()
    try:
        if naive:
            n_parts = len(await producer.partitions_for(s.topic("vitals")))
            admin = kafka_io.admin(s)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(s.topic(NAIVE_TOPIC), n_parts, 1)])
            finally:
                await admin.close()
            for _ in range(50):  # metadata catches up
                if await producer.partitions_for(s.topic(NAIVE_TOPIC)):
                    break
                await asyncio.sleep(0.1)
        topics = [s.topic(NAIVE_TOPIC)] if naive else [s.topic(t) for t in STREAMS]
        batcher = await _Batcher.create(producer, topics)
        for i, (stream, key, value) in enumerate(wl.events, 1):
            if naive:
                await _add_with_header(batcher, s.topic(NAIVE_TOPIC), key, value, stream)
            else:
                await batcher.add(s.topic(stream), key, value, None)
            if i % 2000 == 0:
                await batcher.send_open()
        await batcher.send_open()
        await asyncio.gather(*batcher.futures)
        await producer.flush()
    finally:
        await producer.stop()


async def _add_with_header(batcher: Any, topic: str, key: bytes, value: bytes, stream: str) -> None:
    parts = batcher._partitions[topic]  # noqa: SLF001 - same module family (vigil.replay)
    tp = (topic, batcher._partitioner(key, parts, parts))  # noqa: SLF001
    batch = batcher._open.get(tp)  # noqa: SLF001
    headers = [("stream", stream.encode())]
    if batch is None:
        batch = batcher._open[tp] = batcher._producer.create_batch()  # noqa: SLF001
    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
        await batcher._send(tp, batch)  # noqa: SLF001
        batch = batcher._open[tp] = batcher._producer.create_batch()  # noqa: SLF001
        batch.append(key=key, value=value, timestamp=None, headers=headers)


async def _read_all(s: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its current end offsets."""
    c = kafka_io.consumer(s)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c.topics()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await c.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for recs in batch.values():
                out.extend(recs)
            for tp in list(remaining):
                if await c.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await c.stop()


async def _score_ids(s: Settings) -> tuple[int, int]:
    """(distinct score ids, records) on the prefix's scores topic."""
    recs = await _read_all(s, s.topic("scores"))
    return len({orjson.loads(r.value)["score_id"] for r in recs}), len(recs)


def _counter(registry_metric: Any) -> int:
    return int(sum(smp.value for m in registry_metric.collect() for smp in m.samples if smp.name.endswith("_total")))


# ------------------------------------------------------------------------------------------------- contenders
async def _raw(s: Settings, wl: Workload, broker_pid: int | None = None) -> Result:
    topics = [s.topic(t) for t in STREAMS]
    c = kafka_io.consumer(s, *topics, group_id=s.group_id, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    total = len(wl.events)
    n, t0, cpu0 = 0, None, None
    try:
        deadline = time.monotonic() + 600
        while n < total and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200, max_records=10_000)
            for recs in batch.values():
                if t0 is None:
                    t0, cpu0 = time.perf_counter(), bench_cpu.snapshot(broker_pid)
                for r in recs:
                    orjson.loads(r.value)
                    n += 1
        dt = time.perf_counter() - (t0 or time.perf_counter())
        cpu = bench_cpu.spent(cpu0, bench_cpu.snapshot(broker_pid))
    finally:
        await c.stop()
    return Result("raw", n, dt, extra={"read": n}, cpu=cpu)


async def _pipeline(s: Settings, wl: Workload, expected: int, broker_pid: int | None = None) -> Result:
    from vigil.worker.engine import Engine

    eng = Engine(s)
    cpu0: list[dict[str, Any] | None] = []
    eng.on_first_fetch = lambda: cpu0.append(bench_cpu.snapshot(broker_pid))  # the span's start, as t0
    await eng.start()
    total = len(wl.events)
    t0 = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            if eng.fatal is not None:
                raise BenchFailure(f"pipeline engine failed: {eng.fatal!r}")
            if t0 is None and eng.first_fetch_at is not None:
                # the moment the first non-empty getmany returned (as for raw), not when this loop noticed it
                # after the first batch had been decoded (which left that batch's decoding out of the time)
                t0 = eng.first_fetch_at
            if eng.events_done >= total and _counter(eng.metrics.scores) >= expected:
                break
            if eng.events_done >= total and eng.events_seen >= total and time.monotonic() - _idle_since(eng) > 5:
                break  # everything applied, nothing more will come: let the checks report the shortfall
            await asyncio.sleep(0.005)
        dt = time.perf_counter() - (t0 or time.perf_counter())
        cpu = bench_cpu.spent(cpu0[0] if cpu0 else None, bench_cpu.snapshot(broker_pid))
    finally:
        await eng.stop()
    m = eng.metrics
    return Result("pipeline", total, dt, late=_counter(m.late), duplicates=_counter(m.duplicates),
                  dead_letters=_counter(m.dead_letters),
                  extra={"batches": eng.batches, "done": eng.events_done}, cpu=cpu)  # fmt: skip


def _idle_since(eng: Any) -> float:
    now = time.monotonic()
    key = id(eng)
    last = _IDLE.get(key)
    if last is None or last[0] != eng.events_done:
        _IDLE[key] = (eng.events_done, now)
        return now
    return last[1]


_IDLE: dict[int, tuple[int, float]] = {}


def _naive(s: Settings, wl: Workload, logdir: Path) -> Result:
    """The naive per-event Faust agent, in a child process (Faust owns its event loop)."""
    out = logdir / f"naive-{s.group_id}.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers or "",
           "VIGIL_TOPIC_PREFIX": s.topic_prefix, "VIGIL_TIME_WINDOW__MODE": s.time_window.mode,
           "BENCH_TOTAL": str(len(wl.events)), "BENCH_OUT": str(out), "BENCH_GROUP": s.group_id,
           "BENCH_TOPIC": s.topic(NAIVE_TOPIC)}  # fmt: skip
    with open(logdir / f"naive-{s.group_id}.log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", "vigil.tools.bench_naive"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=1800, check=False)  # fmt: skip
    if not out.exists():
        raise BenchFailure(f"naive agent exited with {proc.returncode} without a result (log in {logdir})")
    r = orjson.loads(out.read_bytes())
    return Result("naive", r["events"], r["seconds"], late=r["late"], duplicates=r["duplicates"],
                  dead_letters=r["dead_letters"])  # fmt: skip


async def _check_topic(s: Settings, res: Result, expected: int) -> Result:
    res.expected_scores = expected
    if res.contender != "raw":
        res.scores, res.extra["score_records"] = await _score_ids(s)
    return res


def check(res: Result, wl: Workload) -> None:
    """Raise :class:`BenchFailure` unless the contender did exactly the whole job."""
    problems = []
    if res.contender == "raw":
        if res.events != len(wl.events):
            problems.append(f"read {res.events} of {len(wl.events)} records")
    else:
        if res.scores != res.expected_scores:
            problems.append(f"{res.scores} distinct scores, expected {res.expected_scores}")
        if res.late:
            problems.append(f"{res.late} late events")
        if res.duplicates:
            problems.append(f"{res.duplicates} events dropped as duplicates")
        if res.dead_letters != wl.invalid:
            problems.append(f"{res.dead_letters} dead letters, expected {wl.invalid} (the invalid events)")
    if problems:
        raise BenchFailure(f"{res.contender} failed: " + "; ".join(problems))


def contender_settings(base: Settings, name: str, bootstrap: str | None = None) -> Settings:
    """``base`` on the contender's own topic prefix and group (and broker, when ``bootstrap`` is given)."""
    tag = uuid.uuid4().hex[:8]
    update: dict[str, Any] = {"topic_prefix": f"{base.topic_prefix}{name}-{tag}-", "group_id": f"bench-{name}-{tag}"}
    if bootstrap is not None:
        update["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    return base.model_copy(update=update)


def on_broker(fresh: Callable[[], Any] | None) -> Any:
    """A fresh embedded broker for one run (``fresh()``: an unstarted :class:`vigil.broker.EmbeddedBroker`), or
    none: the memory-only broker keeps every record of every earlier run, and after the naive agent's per-event
    changelog it slowed the next runs (measured: docs/benchmarks.md)."""
    import contextlib

    return fresh() if fresh is not None else contextlib.nullcontext(None)


def run_contender(name: str, s: Settings, wl: Workload, expected: int, logdir: Path, *, publish: bool = True,
                  broker_pid: int | None = None) -> Result:  # fmt: skip
    """Publish the workload to ``s``'s prefix (unless ``publish`` is false), run one contender, check it;
    ``broker_pid``: the broker whose CPU time the raw and pipeline contenders report with their own."""
    if publish:
        asyncio.run(_publish(s, wl, naive=name == "naive"))
    if name == "raw":
        res = asyncio.run(_raw(s, wl, broker_pid))
    elif name == "pipeline":
        res = asyncio.run(_pipeline(s, wl, expected, broker_pid))
    elif name == "naive":
        res = _naive(s, wl, logdir)
    else:
        raise ValueError(f"unknown contender {name!r}")
    res = asyncio.run(_check_topic(s, res, expected))
    check(res, wl)
    return res


def n_scorers(s: Settings) -> tuple[int, list[str]]:
    from vigil.registry import Registry

    refs = Registry(s.models_dir).serving_refs(s.scoring.models or None)
    return len(refs), [f"{r.name}:{r.version}" for r in refs]


def throughput(base: Settings, wl: Workload, reps: int, contenders: Sequence[str], logdir: Path,
               log: Callable[[str], None] = print, fresh: Callable[[], Any] | None = None
               ) -> dict[str, Any]:  # fmt: skip
    """Every contender ``reps`` times, in turn; ``fresh``: each run on its own new broker (:func:`on_broker`)."""
    k, models = n_scorers(base)
    expected = wl.rows * k
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for rep in range(reps):
        for name in contenders:
            with on_broker(fresh) as b:
                s = contender_settings(base, name, b.bootstrap if b is not None else None)
                res = run_contender(name, s, wl, expected, logdir, broker_pid=b.pid if b is not None else None)
            runs[name].append({**asdict(res), "rate": round(res.rate, 1)})
            done = (f"{res.events:,} records read" if name == "raw"
                    else f"{res.scores}/{expected} scores, {res.late} late")  # fmt: skip
            log(f"rep {rep + 1}/{reps} {name}: {res.rate:,.0f} events/s, {done}")
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        rates = [r["rate"] for r in rs]
        summary[name] = {"min": min(rates), "median": statistics.median(rates), "max": max(rates), "runs": rs}
    if "raw" in summary:
        # ratio per rep (same rep: closest in time), then the median of the ratios
        for name in contenders:
            if name != "raw":
                ratios = [a["rate"] / b["rate"] for a, b in zip(runs[name], runs["raw"], strict=True)]
                summary[name]["vs_raw"] = {"min": round(min(ratios), 3), "median": round(statistics.median(ratios), 3),
                                           "max": round(max(ratios), 3)}  # fmt: skip
    if "naive" in summary and "pipeline" in summary:
        ratios = [a["rate"] / b["rate"] for a, b in zip(runs["pipeline"], runs["naive"], strict=True)]
        summary["pipeline"]["vs_naive"] = round(statistics.median(ratios), 1)
    return {"expected_scores": expected, "rows": wl.rows, "models": models, "events": len(wl.events),
            "stays": wl.stays, "reps": reps, "contenders": summary}  # fmt: skip

