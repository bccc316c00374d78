"""``vigil demo`` / ``make demo``: the whole system end to end on the embedded broker, then a SUMMARY line.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` points at a cluster), creates the
topics, starts ``vigil worker`` process(es), replays the bundled PhysioNet sample as fast as possible
plus a handful of deliberately invalid events, prints alerts live as they arrive on the ``alerts``
topic, waits until every row has been scored, runs the resource-demand job over what crossed the broker
(every 15-minute round of ward forecasts; the busiest round is printed for the 12 h horizon), stops
everything it started and prints ``SUMMARY {json}`` as its last line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from vigil.config import REPO_ROOT, Settings
from vigil.errors import ConfigError

__all__ = ["run_demo", "SAMPLE", "BAD_EVENTS"]

SAMPLE = REPO_ROOT / "data" / "sample" / "physionet2019_sample.tar.gz"

# Deliberately invalid inputs: each must end up on the dead-letter topic with its reason.
BAD_EVENTS: list[tuple[str, bytes | None, bytes]] = [
    ("vitals", b"demo-bad", b"{not json"),
    ("vitals", b"demo-bad", b'{"v":1,"source":"demo","seq":1,"patient":"demo-bad","time":"2026-01-01T00:00:00+00:00",'
     b'"system":"LOINC","code":"0000-0","value":1,"unit":"/min"}'),
    ("vitals", b"demo-bad", b'{"v":1,"source":"demo","seq":2,"patient":"demo-bad","time":"2026-01-01T00:00:00",'
     b'"system":"LOINC","code":"8867-4","value":80,"unit":"/min"}'),
    ("vitals", b"demo-bad", b'{"v":1,"source":"demo","seq":3,"patient":"demo-bad","time":"2026-01-01T00:00:00+00:00",'
     b'"system":"LOINC","code":"8867-4","value":900,"unit":"/min"}'),
    ("labs", b"demo-bad", b'{"v":1,"source":"demo","seq":4,"time":"2026-01-01T00:00:00+00:00",'
     b'"system":"LOINC","code":"2524-7","value":2.0,"unit":"mmol/L"}'),
]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    i = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[i], 4)


def _metric_sum(text: str, name: str) -> int:
    """Sum of a counter's samples in a Prometheus exposition text (worker 0 only)."""
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + "{")))


_BAD_KEYS_B64 = frozenset(base64.b64encode(key).decode() for _, key, _ in BAD_EVENTS if key is not None)


def _bad_dead_letters(records: list[Any]) -> int:
    """How many dead letters are of :data:`BAD_EVENTS` (their Kafka key is kept as ``key_b64``)."""
    return sum(1 for r in records if orjson.loads(r.value).get("key_b64") in _BAD_KEYS_B64)


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def _print_alert(a: dict[str, Any]) -> None:
    risk = "-" if a.get("score") is None else f"{a['score']:.2f}"
    news2 = "-" if not a.get("news2") else f"{a['news2']['total']:>2}"
    print(
        f"ALERT {a.get('event', 'raised'):<9} {a['severity']:<9} {a['type']:<16} ward={a.get('ward') or '-':<9} "
        f"bed={a.get('bed') or '-':<4} row={a['row']:>3}h risk={risk} NEWS2={news2}  {a['message']}",
        flush=True,
    )


def _verified(metrics: Any, resource: str = "critical_care_review", horizon_h: str = "12") -> dict[str, Any]:
    """The live check of ``resource`` forecasts (:mod:`vigil.demand.verify`), summed over wards."""
    sums: dict[str, float] = {}
    for fam in metrics.registry.collect():
        for x in fam.samples:
            if x.labels.get("resource") == resource and x.labels.get("horizon_h") == horizon_h \
                    and x.name.startswith("vigil_demand_verified") and x.labels.get("level") in (None, "0.9"):
                sums[x.name] = sums.get(x.name, 0.0) + x.value
    n = sums.get("vigil_demand_verified_forecasts_total", 0.0)
    exp = sums.get("vigil_demand_verified_expected_total", 0.0)
    if not n:
        return {"forecasts": 0}
    return {"forecasts": int(n), "inside_90": round(sums.get("vigil_demand_verified_inside_total", 0.0) / n, 3),
            "mass_90": round(sums.get("vigil_demand_verified_mass_total", 0.0) / n, 3),
            "observed_over_expected": round(sums.get("vigil_demand_verified_observed_total", 0.0) / exp, 3)
            if exp else None}  # fmt: skip


async def _demand_round(settings: Settings, timeout_s: float = 60.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``vigil demand run``'s job on what crossed the broker: it catches up on ``adt``, ``scores``,
    ``alerts`` and ``alert-acks`` and writes the latest round of ward forecasts to ``resource-demand``."""
    from vigil.demand.job import DemandJob, load_job_calibration
    from vigil.kafka_io import TopicTail

    job = DemandJob(settings, load_job_calibration(settings), emit_history=True)
    stop = asyncio.Event()
    tail = await TopicTail(settings, settings.topic("resource-demand")).start()
    task = asyncio.create_task(job.run(stop))
    try:
        recs = await tail.wait_for(lambda rs: task.done() or (job.caught_up and len(rs) >= job.emitted), timeout_s)
        if task.done():
            task.result()  # raises what stopped the job
    finally:
        stop.set()
        await tail.stop()
        await asyncio.wait_for(task, 10)
    return [orjson.loads(r.value) for r in recs], _verified(job.metrics)


def _print_demand(forecasts: list[dict[str, Any]], horizon_h: int = 12) -> None:
    """The round with the most patients present (the demo's wards fill and empty again)."""
    rounds: dict[str, int] = {}
    for f in forecasts:
        if f["kind"] == "forecast":
            rounds[f["time"]] = rounds.get(f["time"], 0) + f["occupied"]
    busiest = max(rounds, key=lambda t: (rounds[t], t), default=None)
    for f in forecasts:
        if f["kind"] == "forecast" and f["horizon_h"] == horizon_h and f["time"] == busiest:
            lo, hi = f["intervals"].get("0.9", [None, None])
            print(f"demo: demand {f['time']} {f['ward']:<9} {f['resource']:<21} next {horizon_h} h: expected "
                  f"{f['expected']:.2f}, 90% [{lo}, {hi}] ({f['patients']} patients)", flush=True)  # fmt: skip


async def _demo(settings: Settings, data: Path, limit: int | None, workers: int, logdir: Path) -> dict[str, Any]:
    from vigil.catalog import create_topics, load_catalog
    from vigil.kafka_io import TopicTail, produce_many
    from vigil.physionet import iter_stays
    from vigil.replay import replay
    from vigil.tools.procs import WorkerProcess

    await create_topics(settings.kafka.client_kwargs(), load_catalog(settings.streams_dir), settings.topic_prefix)
    expected_rows = sum(len(s.values) for s in iter_stays(data, limit=limit))
    procs = [WorkerProcess(settings, log_path=logdir / f"worker-{i}.log").start() for i in range(workers)]
    tails: dict[str, TopicTail] = {}
    try:
        for p in procs:
            await asyncio.to_thread(p.wait_ready, 90.0)
        print(f"demo: {workers} worker(s) ready; replaying {data.name} ({expected_rows} hourly rows)", flush=True)
        for name in ("scores", "alerts", "dead-letter"):
            tails[name] = await TopicTail(settings, settings.topic(name)).start()
        t0 = time.time()
        stats = await replay(settings, data, speed=None, limit=limit)
        bad = 0
        for stream, key, value in BAD_EVENTS:
            bad += await produce_many(settings, settings.topic(stream), [(key, value)])
        t_replayed = time.time()
        n_alerts_seen = 0
        last_progress, last_count = time.monotonic(), -1
        while True:
            for tail in tails.values():
                await tail.poll(timeout_ms=100)
            for rec in tails["alerts"].records[n_alerts_seen:]:
                _print_alert(orjson.loads(rec.value))
            n_alerts_seen = len(tails["alerts"].records)
            n_scores = len(tails["scores"].records)
            count = n_scores + len(tails["dead-letter"].records)
            if count != last_count:
                last_count, last_progress = count, time.monotonic()
            # wait for the dead letters of BAD_EVENTS themselves (the sample's own rejects count too, and the
            # labs record is read from another topic, so a count of all dead letters can be reached before it)
            if n_scores >= expected_rows and _bad_dead_letters(tails["dead-letter"].records) >= bad:
                break
            if time.monotonic() - last_progress > 30:
                print(f"demo: no progress for 30 s ({n_scores}/{expected_rows} rows scored); stopping", flush=True)
                break
        scores = [orjson.loads(r.value) for r in tails["scores"].records]
        t_done = max((r.timestamp / 1000 for r in tails["scores"].records), default=time.time())
        # the alerts of the last batches may still be on their way: read until the tail has what the workers
        # counted (the alerts and the scores of a batch are written together, the tails read them separately)
        emitted = sum(_metric_sum(p.metrics_text(), "vigil_alerts_total") for p in procs)
        deadline = time.monotonic() + 15
        while len(tails["alerts"].records) < emitted and time.monotonic() < deadline:
            await tails["alerts"].poll(timeout_ms=100)
        for rec in tails["alerts"].records[n_alerts_seen:]:
            _print_alert(orjson.loads(rec.value))
        metrics_text = procs[0].metrics_text()
        demand, verified = await _demand_round(settings)
        _print_demand(demand)
        from vigil.tools.demo_hl7 import bed_association_demo

        hl7_beds = await bed_association_demo(settings)  # ADT^A01 + ORU without PID-3 over MLLP
        print(f"demo: HL7 over MLLP: ADT^A01 to bed DEMO-ICU^1^4, then ORU without PID-3 for that bed and one for "
              f"an empty bed: ACKs {hl7_beds['acks']}, {hl7_beds['events']} observations attributed to "
              f"{hl7_beds['patient']}", flush=True)  # fmt: skip
    finally:
        for tail in tails.values():
            await tail.stop()
        for p in procs:
            await asyncio.to_thread(p.stop)
    latencies = [_ts(s["emitted_at"]) - _ts(s["trigger_time"]) for s in scores]
    alerts = [orjson.loads(r.value) for r in tails["alerts"].records]
    events = stats.events + bad
    return {
        "events": events,
        "stays": stats.stays,
        "scores": len(scores),
        "rows_expected": expected_rows,
        "alerts": len(alerts),
        "alerts_by_type": {k: sum(1 for a in alerts if a["type"] == k) for k in sorted({a["type"] for a in alerts})},
        "alerts_by_event": {k: sum(1 for a in alerts if a.get("event") == k)
                            for k in sorted({str(a.get("event")) for a in alerts})},  # fmt: skip
        "dead_letters": len(tails["dead-letter"].records),
        "dead_letter_reasons": sorted({orjson.loads(r.value)["reason"] for r in tails["dead-letter"].records}),
        "events_per_s": round(events / max(1e-9, t_done - t0), 1),
        "replay_events_per_s": round(stats.events / max(1e-9, t_replayed - t0), 1),
        "latency_p50_s": _pct(latencies, 0.5),
        "latency_p99_s": _pct(latencies, 0.99),
        "latency_mean_s": round(statistics.fmean(latencies), 4) if latencies else None,
        "workers": workers,
        "provider": next((s["model"]["provider"] for s in scores), None),
        "model": next((f"{s['model']['name']}:{s['model']['version']}" for s in scores), None),
        "late_events": _metric_sum(metrics_text, "vigil_late_events_total"),
        "duplicates": _metric_sum(metrics_text, "vigil_duplicate_events_total"),
        "metrics_endpoint_ok": "vigil_events_total" in metrics_text,
        "demand_forecasts": sum(1 for f in demand if f["kind"] == "forecast"),
        "demand_rounds": len({f["time"] for f in demand if f["kind"] == "forecast"}),
        "demand_wards": sorted({f["ward"] for f in demand}),
        "capacity_alerts": sum(1 for f in demand if f["kind"] == "capacity_alert" and f["event"] == "raised"),
        "demand_verified_review_12h": verified,
        "hl7_bed_association": hl7_beds["acks"],
        "wall_s": round(time.time() - t0, 2),
    }


def run_demo(settings: Settings, data: Path | None = None, limit: int | None = None, workers: int = 1) -> int:
    from vigil.broker import EmbeddedBroker

    data = data or SAMPLE
    if not data.exists():  # the bundled sample is part of a source checkout, not of the package
        msg = f"demo data {data} not found (the bundled sample is in a vigil checkout): pass --data PATH"
        raise ConfigError(msg)
    settings.dev_mode = True  # the demo may run with the public development pseudonym key
    logdir = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    with contextlib.ExitStack() as stack:
        if not settings.kafka.bootstrap_servers:
            b = stack.enter_context(EmbeddedBroker(log_path=logdir / "broker.log"))
            settings.kafka.bootstrap_servers = b.bootstrap
            print(f"demo: embedded broker on {b.bootstrap}", flush=True)
        else:  # a real cluster: keep the demo's topics apart
            settings.topic_prefix = settings.topic_prefix or f"vigil-demo-{uuid.uuid4().hex[:8]}-"
            print(f"demo: using Kafka at {settings.kafka.bootstrap_servers} with prefix {settings.topic_prefix}")
        settings.group_id = f"vigil-demo-{uuid.uuid4().hex[:8]}"
        settings.time_window.mode = "replay"  # replayed history (2026-01-01 on): no past bound; the future one holds
        summary = asyncio.run(_demo(settings, data, limit, workers, logdir))
    print(f"demo: logs in {logdir}", flush=True)
    ok = summary["scores"] >= summary["rows_expected"] and summary["dead_letters"] >= len(BAD_EVENTS)
    print("SUMMARY " + orjson.dumps(summary).decode(), flush=True)
    sys.stdout.flush()
    return 0 if ok else 1
