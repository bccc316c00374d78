"""``make bench``: a benchmark that checks its contenders' output before it reports their speed.

Not a test (numbers depend on the machine), but every figure it prints comes from a contender that did the
whole job: each contender runs on its **own topic prefix** (own input topics, own outputs, own changelog and
consumer group; nothing one contender writes can be read by another) and must produce **exactly the expected
number of scores** (one per closed hourly row and serving model, counted from the data, independently of the
worker code) **with 0 late, 0 duplicate and 0 dead-lettered events**. A contender that falls short fails the
benchmark: non-zero exit, no speed figure. Contenders, each measured ``--reps`` times, interleaved:

* **raw**: a raw aiokafka consumer group doing ``getmany`` + ``orjson.loads`` and nothing else: the Python
  client's ceiling, measured in the same run (must read every record);
* **naive**: a Faust agent that handles one event at a time with the same decode/state/model code (its input
  is the same events merged in event-time order on one topic, which spares it the cross-topic reordering);
* **pipeline**: the vigil batch engine (decode, dedupe, reorder, state, featurize, ONNX, NEWS2, outputs and
  changelog acknowledged, then the offset commit).

Timed span, the same for raw and pipeline: from the moment the contender's first non-empty ``getmany``
returns (consumer start, group join, model loading and the first fetch's wait are outside it, for both) to
the moment its last record is decoded (raw) or its last output is acknowledged and counted (pipeline: every
expected score produced, all events applied, offsets committed; polled every 5 ms).

Then a **latency step** (a ``vigil worker`` process fed at fixed offered rates; latency = the score record's
broker timestamp minus the broker timestamp of the event that closed the row; 0 late required) and a
**memory step** (heap and RSS per open patient, for 10k and 50k patients, in a fresh process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import TopicPartition

from vigil import kafka_io
from vigil.config import REPO_ROOT, Settings, load_settings

__all__ = ["BenchFailure", "Result", "Workload", "expected_rows", "main", "run_contender", "workload"]

SHARED = REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "setA.parquet"
SAMPLE = REPO_ROOT / "data" / "sample" / "physionet2019_sample.tar.gz"
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

    events = [(stream, key, value) for stream, _, key, value in
              merged_events(loaded, settings.pseudonym_key.get_secret_value())]  # fmt: skip
    invalid = sum(1 for stream, key, value in events if type(decode(value, stream, key)) is Invalid)
    return Workload(events, len(loaded), rows, invalid)


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
async def _raw(s: Settings, wl: Workload) -> Result:
    topics = [s.topic(t) for t in STREAMS]
    c = kafka_io.consumer(s, *topics, group_id=s.group_id, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    total = len(wl.events)
    n, t0 = 0, None
    try:
        deadline = time.monotonic() + 600
        while n < total and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200, max_records=10_000)
            for recs in batch.values():
                if t0 is None:
                    t0 = time.perf_counter()
                for r in recs:
                    orjson.loads(r.value)
                    n += 1
        dt = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        await c.stop()
    return Result("raw", n, dt, extra={"read": n})


async def _pipeline(s: Settings, wl: Workload, expected: int) -> Result:
    from vigil.worker.engine import Engine

    eng = Engine(s)
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
    finally:
        await eng.stop()
    m = eng.metrics
    return Result("pipeline", total, dt, late=_counter(m.late), duplicates=_counter(m.duplicates),
                  dead_letters=_counter(m.dead_letters),
                  extra={"batches": eng.batches, "done": eng.events_done})  # fmt: skip


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
        proc = subprocess.run([sys.executable, "-m", "vigil.bench_naive"], env=env, stdout=log,
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


def contender_settings(base: Settings, name: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(update={"topic_prefix": f"{base.topic_prefix}{name}-{tag}-", "group_id": f"bench-{name}-{tag}"})


def run_contender(name: str, s: Settings, wl: Workload, expected: int, logdir: Path, *, publish: bool = True) -> Result:
    """Publish the workload to ``s``'s prefix (unless ``publish`` is false), run one contender, check it."""
    if publish:
        asyncio.run(_publish(s, wl, naive=name == "naive"))
    if name == "raw":
        res = asyncio.run(_raw(s, wl))
    elif name == "pipeline":
        res = asyncio.run(_pipeline(s, wl, expected))
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
               log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    k, models = n_scorers(base)
    expected = wl.rows * k
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for rep in range(reps):
        for name in contenders:
            res = run_contender(name, contender_settings(base, name), wl, expected, logdir)
            runs[name].append({**asdict(res), "rate": round(res.rate, 1)})
            done = f"{res.events:,} records read" if name == "raw" else f"{res.scores}/{expected} scores, {res.late} late"
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


# ---------------------------------------------------------------------------------------------- latency step
async def _paced_publish(s: Settings, wl: Workload, rate: float) -> float:
    """Publish the workload at ``rate`` events/s (in publish order, one ``send`` each); returns the seconds."""
    producer = kafka_io.producer(s, linger_ms=1)
    await producer.start()
    futs = []
    try:
        t0 = time.perf_counter()
        n = 0
        total = len(wl.events)
        while n < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while n < due:
                stream, key, value = wl.events[n]
                futs.append(await producer.send(s.topic(stream), value, key=key))
                n += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*futs)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


def _metric_total(text: str, name: str) -> int:
    return int(sum(float(v) for v in re.findall(rf"^{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)))


def latency_step(base: Settings, wl: Workload, rates: Sequence[float], logdir: Path,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    """For each offered rate: a fresh `vigil worker` process on its own prefix, the workload published at that
    rate, every expected score awaited (0 late required); latency per score = its record's broker timestamp
    minus the broker timestamp of the event that closed the row."""
    from vigil.catalog import create_topics, load_catalog
    from vigil.procs import WorkerProcess

    k, _ = n_scorers(base)
    expected = wl.rows * k
    out = []
    for rate in rates:
        s = contender_settings(base, f"lat{int(rate)}")
        asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix))
        worker = WorkerProcess(s, log_path=logdir / f"latency-{int(rate)}.log",
                               extra_env={"VIGIL_TIME_WINDOW__MODE": s.time_window.mode}).start()  # fmt: skip
        try:
            worker.wait_ready(120.0)
            seconds = asyncio.run(_paced_publish(s, wl, rate))
            recs: list[Any] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                recs = asyncio.run(_read_all(s, s.topic("scores")))
                if len({orjson.loads(r.value)["score_id"] for r in recs}) >= expected:
                    break
                time.sleep(1.0)
            text = worker.metrics_text()
        finally:
            worker.stop()
        late, dups = _metric_total(text, "vigil_late_events"), _metric_total(text, "vigil_duplicate_events")
        dead = _metric_total(text, "vigil_dead_letters")
        first: dict[str, float] = {}
        for r in recs:
            v = orjson.loads(r.value)
            lat = r.timestamp / 1000.0 - datetime.fromisoformat(v["trigger_time"]).timestamp()
            first[v["score_id"]] = min(first.get(v["score_id"], lat), lat)
        res = Result(f"latency@{int(rate)}", len(wl.events), seconds, scores=len(first), expected_scores=expected,
                     late=late, duplicates=dups, dead_letters=dead)  # fmt: skip
        check(res, wl)
        lat_arr = np.sort(np.fromiter(first.values(), dtype=np.float64))
        row = {"offered_events_per_s": rate, "achieved_events_per_s": round(len(wl.events) / seconds, 1),
               "events": len(wl.events), "scores": len(first), "late": late,
               "p50_ms": round(float(np.percentile(lat_arr, 50)) * 1000, 1),
               "p99_ms": round(float(np.percentile(lat_arr, 99)) * 1000, 1),
               "max_ms": round(float(lat_arr[-1]) * 1000, 1),
               "reorder_min_hold_s": s.state.reorder_min_hold_s}  # fmt: skip
        log(f"latency at {rate:,.0f} events/s offered: {row}")
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- memory step
def memory_child(n: int, events_per_patient: int) -> dict[str, Any]:
    """In a fresh process: ``n`` open patients as a worker holds them. One patient is built through the worker's
    own :class:`Processor` (an admit, then ``events_per_patient`` observations over 4 hours: its de-duplication
    window full); its changelog record is restored ``n`` times (what a restarted worker holds), each with its own
    id and its own ``dedupe_window`` of distinct event ids. Heap (tracemalloc) and RSS growth per patient."""
    from vigil.config import load_settings as _ls
    from vigil.records import AdtEvent, Observation
    from vigil.state import PatientState, SeenIds
    from vigil.worker.batch import InEvent, Processor

    s = _ls(None)
    proc = Processor(s, [])
    t_admit = 1_767_225_600.0
    pt, src = "pt-" + "0" * 33, "physionet-replay/template"
    evs = [InEvent(AdtEvent(pt, src, 0, t_admit, "admit", "ICU-MED", "4", "MICU", t_admit, 70.0, "F", -3.0),
                   "adt", 0, 0.0)]  # fmt: skip
    for q in range(1, events_per_patient + 1):
        t = t_admit + (q * 4 * 3600.0) / events_per_patient
        evs.append(InEvent(Observation(pt, src, q, t, q % 34, 80.0 + q % 7, "vital"), "vitals", 0, 0.0))
    proc.process(evs)
    template = proc.states[0][pt].to_bytes()
    window = s.state.dedupe_window
    held = len(proc.states[0][pt].seen)
    del proc, evs
    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    states: dict[int, dict[str, PatientState]] = {p: {} for p in range(4)}
    for i in range(n):
        st = PatientState.from_bytes(template)
        st.patient = f"pt-{i:033d}"  # 36 characters, like a pseudonym
        st.seen = SeenIds(np.arange(i * window, i * window + held, dtype="<u8").tobytes())
        states[i % 4][st.patient] = st
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] - heap0
    tracemalloc.stop()
    rss = _rss() - rss0
    return {"patients": sum(len(v) for v in states.values()), "events_per_patient": events_per_patient,
            "dedupe_ids_per_patient": held, "heap_bytes_per_patient": round(heap / n),
            "rss_bytes_per_patient": round(rss / n), "changelog_bytes_per_patient": len(template)}  # fmt: skip


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_step(sizes: Sequence[int], events_per_patient: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        r = subprocess.run([sys.executable, "-m", "vigil.bench", "--memory-child", str(n),
                            "--memory-events", str(events_per_patient)],
                           capture_output=True, check=True, timeout=1800)  # fmt: skip
        row = json.loads(r.stdout.decode().strip().splitlines()[-1])
        log(f"memory, {n:,} open patients: {row}")
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu_model": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "commit": git("rev-parse", "--short=12", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": [round(x, 2) for x in load]}  # fmt: skip


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else SAMPLE)
    ap.add_argument("--stays", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--latency-stays", type=int, default=300)
    ap.add_argument("--latency-rates", default="2000,5000,10000", help="offered events/s; empty: no latency step")
    ap.add_argument("--memory-sizes", default="10000,50000", help="open patients; empty: no memory step")
    ap.add_argument("--memory-events", type=int, default=300, help="events per patient in the memory step")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting for every contender, e.g. state.reorder_min_hold_s=0 (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="write the raw result here")
    ap.add_argument("--conditions", default="", help="a sentence on the load conditions, for the report")
    args = ap.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.memory_events)), flush=True)
        return 0
    from vigil.broker import EmbeddedBroker

    logdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    results: dict[str, Any] = {"machine": machine(), "data": args.data.name}
    contenders = [c for c in args.contenders.split(",") if c]
    try:
        with EmbeddedBroker(log_path=logdir / "broker.log") as b:
            # replayed history (vigil.timewindow) and the development pseudonym key (vigil.ingest.security)
            nested: dict[str, Any] = {"time_window": {"mode": "replay"}, "dev_mode": True}
            for item in args.set:
                key, _, value = item.partition("=")
                section, _, leaf = key.partition(".")
                if leaf:
                    nested.setdefault(section, {})[leaf] = json.loads(value)
                else:
                    nested[section] = json.loads(value)
                os.environ["VIGIL_" + key.upper().replace(".", "__")] = value  # worker processes
            results["settings"] = args.set
            base = load_settings(None, kafka={"bootstrap_servers": b.bootstrap}, topic_prefix=f"b{uuid.uuid4().hex[:6]}-",
                                 **nested)  # fmt: skip
            wl = workload(args.data, args.stays, base)
            print(f"workload: {len(wl.events):,} events, {wl.stays} stays, {wl.rows:,} rows to score", flush=True)
            results["throughput"] = throughput(base, wl, args.reps, contenders, logdir)
            rates = [float(x) for x in args.latency_rates.split(",") if x]
            if rates:
                lwl = workload(args.data, args.latency_stays, base)
                results["latency"] = latency_step(base, lwl, rates, logdir)
        sizes = [int(x) for x in args.memory_sizes.split(",") if x]
        if sizes:
            results["memory"] = memory_step(sizes, args.memory_events)
    except BenchFailure as exc:
        print(f"BENCH FAILED: {exc} (logs: {logdir})", file=sys.stderr, flush=True)
        return 1
    print("BENCH " + orjson.dumps(results).decode(), flush=True)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if args.out:
        write_markdown(args.out, {**results, "conditions": args.conditions} if args.conditions else results)
    return 0


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    from vigil.bench_report import render

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(r))


if __name__ == "__main__":
    sys.exit(main())
