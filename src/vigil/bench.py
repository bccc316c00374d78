"""``make bench``: pipeline throughput against two baselines measured in the same run, and latency.

Not a test: numbers depend on the machine. All three consumers read the same pre-loaded topics on the
same embedded broker:

* **raw aiokafka ceiling**: a consumer group doing ``getmany`` + ``json.loads`` and nothing else;
* **naive per-event Faust agent**: a Faust agent that handles one event at a time with the same
  decoding, state and model code (featurize + one ONNX call per closed row, one send per output);
* **vigil pipeline**: the batch engine (decode, state, vectorised featurize, one ONNX call per batch,
  outputs + changelog acknowledged before the offset commit).

Then end-to-end latency (broker timestamp of the triggering event -> score acknowledged) while stays
are replayed at a steady pace into a running engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from vigil.config import REPO_ROOT, Settings, load_settings

__all__ = ["main"]

SHARED = REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "setA.parquet"


async def _raw_ceiling(settings: Settings, total: int) -> float:
    topics = [settings.topic(t) for t in ("vitals", "labs", "adt")]
    c = AIOKafkaConsumer(*topics, group_id=f"raw-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                         enable_auto_commit=False, **settings.kafka.client_kwargs())  # fmt: skip
    await c.start()
    n, t0 = 0, None
    try:
        while n < total:
            batch = await c.getmany(timeout_ms=200, max_records=10_000)
            for recs in batch.values():
                if t0 is None:
                    t0 = time.perf_counter()
                for r in recs:
                    orjson.loads(r.value)
                    n += 1
        return n / (time.perf_counter() - (t0 or time.perf_counter()))
    finally:
        await c.stop()


async def _pipeline(settings: Settings, total: int) -> tuple[float, dict[str, Any]]:
    from vigil.worker.engine import Engine

    s = settings.model_copy(update={"group_id": f"pipe-{uuid.uuid4().hex[:6]}"})
    eng = Engine(s)
    await eng.start()
    t0 = None
    try:
        while eng.events_done < total:
            if t0 is None and eng.events_seen > 0:
                t0 = time.perf_counter()
            await asyncio.sleep(0.01)
        dt = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        await eng.stop()
    h = eng.metrics.batch_size
    mean_batch = _hist_mean(h)
    return total / dt, {"batches": eng.batches, "mean_batch": mean_batch}


def _hist_mean(h: Any) -> float | None:
    samples = {s.name: s.value for m in h.collect() for s in m.samples}
    count = samples.get(h._name + "_count")  # noqa: SLF001
    return round(samples[h._name + "_sum"] / count, 1) if count else None  # noqa: SLF001


def _naive_faust(settings: Settings, total: int, logdir: Path) -> float:
    """Run the naive per-event Faust agent in a child process (Faust owns its event loop)."""
    out = logdir / "naive.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
           "VIGIL_TOPIC_PREFIX": settings.topic_prefix, "BENCH_TOTAL": str(total), "BENCH_OUT": str(out)}  # fmt: skip
    with open(logdir / "naive.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "vigil.bench_naive"], env=env, stdout=log,
                       stderr=subprocess.STDOUT, timeout=900, check=False)  # fmt: skip
    return float(orjson.loads(out.read_bytes())["events_per_s"])


async def _latency(settings: Settings, data: Path, stays: int, speed: float, logdir: Path) -> dict[str, Any]:
    """A `vigil worker` process under a paced replay: latency from the scores it emits."""
    from vigil.catalog import create_topics, load_catalog
    from vigil.kafka_io import TopicTail
    from vigil.procs import WorkerProcess
    from vigil.replay import replay

    s = settings.model_copy(update={"group_id": f"lat-{uuid.uuid4().hex[:6]}", "topic_prefix": settings.topic_prefix + "lat-"})
    await create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix)
    worker = WorkerProcess(s, log_path=logdir / "latency-worker.log").start()
    tail = None
    try:
        await asyncio.to_thread(worker.wait_ready, 90.0)
        tail = await TopicTail(s, s.topic("scores")).start()
        stats = await replay(s, data, speed=speed, limit=stays)
        await tail.wait_for(lambda r: len(r) > 0, 30)
        quiet = time.monotonic()
        while time.monotonic() - quiet < 3.0:
            if await tail.poll():
                quiet = time.monotonic()
    finally:
        if tail is not None:
            await tail.stop()
        await asyncio.to_thread(worker.stop)
    lat = sorted(
        datetime.fromisoformat(v["emitted_at"]).timestamp() - datetime.fromisoformat(v["trigger_time"]).timestamp()
        for v in (orjson.loads(r.value) for r in tail.records)
    )
    q = lambda p: round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))], 4)  # noqa: E731
    return {"events": stats.events, "stays": stays, "scores": len(lat), "speed": speed, "p50_s": q(0.5),
            "p99_s": q(0.99), "mean_s": round(statistics.fmean(lat), 4),
            "reorder_hold_s": s.state.reorder_min_hold_s}  # fmt: skip


async def _preload(settings: Settings, data: Path, stays: int) -> int:
    from vigil.catalog import create_topics, load_catalog
    from vigil.replay import replay

    await create_topics(settings.kafka.client_kwargs(), load_catalog(settings.streams_dir), settings.topic_prefix)
    stats = await replay(settings, data, speed=None, limit=stays)
    return int(stats.events)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else REPO_ROOT / "data/sample/physionet2019_sample.tar.gz")
    ap.add_argument("--stays", type=int, default=1000)
    ap.add_argument("--latency-stays", type=int, default=300)
    ap.add_argument("--latency-speed", type=float, default=3600.0, help="event-time s per wall s during the latency run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from vigil.broker import EmbeddedBroker

    logdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    results: dict[str, Any] = {}
    with EmbeddedBroker(log_path=logdir / "broker.log") as b:
        s = load_settings(None, kafka={"bootstrap_servers": b.bootstrap}, topic_prefix=f"b{uuid.uuid4().hex[:6]}-",
                          dev_mode=True, time_window={"mode": "replay"})  # replayed history: vigil.timewindow
        t = time.perf_counter()
        total = asyncio.run(_preload(s, args.data, args.stays))
        results["preload"] = {"events": total, "stays": args.stays, "seconds": round(time.perf_counter() - t, 2)}
        print(f"preloaded {total} events from {args.stays} stays", flush=True)
        results["raw_aiokafka_events_per_s"] = round(asyncio.run(_raw_ceiling(s, total)), 1)
        print("raw aiokafka ceiling:", results["raw_aiokafka_events_per_s"], flush=True)
        results["naive_faust_events_per_s"] = round(_naive_faust(s, total, logdir), 1)
        print("naive per-event Faust agent:", results["naive_faust_events_per_s"], flush=True)
        rate, info = asyncio.run(_pipeline(s, total))
        results["pipeline_events_per_s"] = round(rate, 1)
        results["pipeline"] = info
        print("vigil pipeline:", results["pipeline_events_per_s"], info, flush=True)
        no_hold = s.model_copy(update={"state": s.state.model_copy(update={"reorder_min_hold_s": 0.0})})
        rate0, info0 = asyncio.run(_pipeline(no_hold, total))
        results["pipeline_no_hold_events_per_s"] = round(rate0, 1)
        print("vigil pipeline, reorder hold 0:", results["pipeline_no_hold_events_per_s"], info0, flush=True)
        results["latency"] = asyncio.run(_latency(s, args.data, args.latency_stays, args.latency_speed, logdir))
        print("latency:", results["latency"], flush=True)
    results["ratio_pipeline_vs_naive_faust"] = round(results["pipeline_events_per_s"] / results["naive_faust_events_per_s"], 2)
    results["ratio_pipeline_vs_raw_ceiling"] = round(results["pipeline_events_per_s"] / results["raw_aiokafka_events_per_s"], 3)
    from vigil.registry import Registry

    results["models"] = [f"{k}:{v}" for k, v in Registry(load_settings(None).models_dir).serving().items()]
    results["machine"] = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "processor": _cpu_model(), "date": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    print("BENCH " + orjson.dumps(results).decode(), flush=True)
    if args.out:
        _write_markdown(args.out, results, args.data)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write_markdown(path: Path, r: dict[str, Any], data: Path) -> None:
    lat = r["latency"]
    text = f"""# Benchmarks

Generated by `make bench` (`python -m vigil.bench`); every number below was measured in one run, on the
machine described at the end. Ratios compare measurements of the same run; absolute numbers vary by machine.

Input: {r['preload']['stays']} PhysioNet stays from `{data.name}` replayed into the embedded broker
(Tansu, memory storage) as {r['preload']['events']:,} individual vital-sign / lab / ADT events
(preload took {r['preload']['seconds']} s), then consumed by each contender from the start.
Models served: {', '.join(r.get('models', [])) or 'the registry serving set'} (CPU).

| contender | events/s | vs naive Faust |
|---|---:|---:|
| raw aiokafka ceiling (`getmany` + `json.loads`, no work) | {r['raw_aiokafka_events_per_s']:,.0f} | {r['raw_aiokafka_events_per_s'] / r['naive_faust_events_per_s']:.1f}x |
| naive per-event Faust agent (same decode/state/model code, one event at a time) | {r['naive_faust_events_per_s']:,.0f} | 1.0x |
| **vigil pipeline** (batch engine: decode, dedupe, state, featurize, ONNX, NEWS2, outputs + changelog acked, then commit; default 0.5 s minimum reorder hold) | **{r['pipeline_events_per_s']:,.0f}** | **{r['ratio_pipeline_vs_naive_faust']:.1f}x** |
| vigil pipeline with no minimum reorder hold (`VIGIL_STATE__REORDER_MIN_HOLD_S=0`; the watermark still orders events) | {r['pipeline_no_hold_events_per_s']:,.0f} | {r['pipeline_no_hold_events_per_s'] / r['naive_faust_events_per_s']:.1f}x |

The pipeline runs at {100 * r['ratio_pipeline_vs_raw_ceiling']:.0f}% of the raw client's ceiling
({r['pipeline']['batches']} batches, mean {r['pipeline']['mean_batch']} events per batch).

## End-to-end latency

{lat['events']:,} events of {lat['stays']} stays replayed at {lat['speed']:,.0f}x real time (one hour of
event time per {3600 / lat['speed']:g} s) into a running `vigil worker` process; latency = the score's
`emitted_at` minus the broker timestamp of the event that closed the scored row (the first event of
the next hour, or the discharge). It includes the {lat['reorder_hold_s']:g} s minimum reorder hold, which exists so that a row is
scored only once its labs and vitals from all topics have arrived.

| scores | p50 | p99 | mean |
|---:|---:|---:|---:|
| {lat['scores']:,} | {lat['p50_s'] * 1000:.1f} ms | {lat['p99_s'] * 1000:.1f} ms | {lat['mean_s'] * 1000:.1f} ms |

## Machine

{r['machine']['processor']}, {r['machine']['cpu_count']} cores, Python {r['machine']['python']},
{r['machine']['platform']}, {r['machine']['date']}. CPU only (ONNX Runtime CPUExecutionProvider).

Raw result: `BENCH {orjson.dumps(r).decode()}`
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
