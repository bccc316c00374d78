"""The latency and memory steps of ``make bench`` (:mod:`vigil.tools.bench`)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vigil import kafka_io
from vigil.config import Settings
from vigil.tools.bench_contenders import Result, Workload, _read_all, check, contender_settings, n_scorers, on_broker

__all__ = ["latency_step", "memory_child", "memory_step"]


# ---------------------------------------------------------------------------------------------- latency step
async def _paced_publish(s: Settings, wl: Workload, rate: float, watermarks: bool = True,
                         interval_s: float = 0.05) -> float:  # fmt: skip
    """Publish the workload at ``rate`` events/s (in publish order, one ``send`` each); returns the seconds.
    ``watermarks``: with the producer's event-time watermarks, as ``vigil replay`` writes them
    (:class:`vigil.punctuate.Punctuator`, every ``interval_s``)."""
    from vigil.punctuate import Punctuator

    producer = kafka_io.producer(s, linger_ms=1)
    await producer.start()
    futs = []
    try:
        punct = Punctuator(producer, [s.topic(t) for t in ("adt", "vitals", "labs")], source="bench-latency",
                           interval_s=interval_s)  # fmt: skip
        if watermarks:
            await punct.start()
            await punct.emit(wl.times[0])
        t0 = time.perf_counter()
        n = 0
        total = len(wl.events)
        while n < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while n < due:
                stream, key, value = wl.events[n]
                futs.append(await producer.send(s.topic(stream), value, key=key))
                n += 1
            if watermarks:
                await punct.maybe(wl.times[n - 1])  # merged order: nothing earlier follows
            await asyncio.sleep(0.002)
        if watermarks:
            await punct.emit(wl.times[-1], final=True)
        await asyncio.gather(*futs, *punct.futures)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


def _metric_total(text: str, name: str) -> int:
    return int(sum(float(v) for v in re.findall(rf"^{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)))


def latency_step(base: Settings, wl: Workload, rates: Sequence[float], logdir: Path,
                 log: Callable[[str], None] = print, without: Sequence[float] = (),
                 watermark_interval_s: float = 0.05, fresh: Callable[[], Any] | None = None
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """For each offered rate: a fresh `vigil worker` process on its own prefix, the workload published at that
    rate with the producer's watermarks (as `vigil replay` does), every expected score awaited (0 late
    required); latency per score = its record's broker timestamp minus the broker timestamp of the event that
    closed the row. Then each rate in ``without`` again without producer watermarks (the worker's inferred
    watermark and minimum hold), for comparison. ``fresh``: each run on its own new broker."""
    k, _ = n_scorers(base)
    expected = wl.rows * k
    out = []
    for rate, wms in [(r, True) for r in rates] + [(r, False) for r in without]:
        with on_broker(fresh) as b:  # each run on its own broker when ``fresh`` is given
            row = _latency_run(base, wl, rate, wms, logdir, log, watermark_interval_s, expected,
                               b.bootstrap if b is not None else None)  # fmt: skip
        out.append(row)
    return out


def _latency_run(base: Settings, wl: Workload, rate: float, wms: bool, logdir: Path, log: Callable[[str], None],
                 watermark_interval_s: float, expected: int, bootstrap: str | None) -> dict[str, Any]:  # fmt: skip
    from vigil.catalog import create_topics, load_catalog
    from vigil.tools.procs import WorkerProcess

    s = contender_settings(base, f"lat{int(rate)}{'' if wms else 'nw'}", bootstrap)
    asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix))
    worker = WorkerProcess(s, log_path=logdir / f"latency-{int(rate)}{'' if wms else '-nw'}.log",
                           extra_env={"VIGIL_TIME_WINDOW__MODE": s.time_window.mode}).start()  # fmt: skip
    try:
        worker.wait_ready(120.0)
        seconds = asyncio.run(_paced_publish(s, wl, rate, wms, watermark_interval_s))
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
    violations = _metric_total(text, "vigil_watermark_violations")
    first: dict[str, float] = {}
    for r in recs:
        v = orjson.loads(r.value)
        lat = r.timestamp / 1000.0 - datetime.fromisoformat(v["trigger_time"]).timestamp()
        first[v["score_id"]] = min(first.get(v["score_id"], lat), lat)
    res = Result(f"latency@{int(rate)}", len(wl.events), seconds, scores=len(first), expected_scores=expected,
                 late=late, duplicates=dups, dead_letters=dead)  # fmt: skip
    check(res, wl)
    (logdir / f"latency-{int(rate)}{'' if wms else '-nw'}.json").write_bytes(orjson.dumps(sorted(
        (r.timestamp, orjson.loads(r.value)["trigger_time"]) for r in recs)))  # for a closer look
    lat_arr = np.sort(np.fromiter(first.values(), dtype=np.float64))
    row = {"offered_events_per_s": rate, "achieved_events_per_s": round(len(wl.events) / seconds, 1),
           "events": len(wl.events), "scores": len(first), "late": late,
           "p50_ms": round(float(np.percentile(lat_arr, 50)) * 1000, 1),
           "p99_ms": round(float(np.percentile(lat_arr, 99)) * 1000, 1),
           "max_ms": round(float(lat_arr[-1]) * 1000, 1),
           "reorder_min_hold_s": s.state.reorder_min_hold_s, "producer_watermarks": wms,
           "watermarks": _metric_total(text, "vigil_watermarks"), "watermark_violations": violations,
           "watermark_interval_ms": round(watermark_interval_s * 1000) if wms else None,
           "fetch_max_wait_ms": s.fetch_max_wait_ms}  # fmt: skip
    log(f"latency at {rate:,.0f} events/s offered: {row}")
    return row


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


def memory_step(sizes: Sequence[int], events_per_patient: int,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for n in sizes:
        r = subprocess.run([sys.executable, "-m", "vigil.tools.bench", "--memory-child", str(n),
                            "--memory-events", str(events_per_patient)],
                           capture_output=True, check=True, timeout=1800)  # fmt: skip
        row = json.loads(r.stdout.decode().strip().splitlines()[-1])
        log(f"memory, {n:,} open patients: {row}")
        out.append(row)
    return out
