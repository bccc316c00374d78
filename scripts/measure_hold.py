"""Minimum reorder hold vs latency and late events (issue 14/15; not part of `make test`).

For each ``--holds`` value: a private embedded broker, fresh topics, one `vigil worker` with
``VIGIL_STATE__REORDER_MIN_HOLD_S`` set, and ``--stays`` replayed stays offered at ``--rate`` events/s
(one producer, events in event-time order across the three topics). ``--labs-delay-ms`` D sends every
labs record D x rate records after its turn (D ms when the producer keeps the rate): an independent lab
feed lagging the monitors by D, which is what the minimum hold is for. Prints, per hold: scores, rows
expected, late events, latency p50/p99 (broker timestamp of the triggering event -> score emitted).

    PYTHONPATH=src python scripts/measure_hold.py --holds 0,0.1,0.25,0.5 --rate 5000 [--labs-delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from vigil.broker import EmbeddedBroker
from vigil.catalog import create_topics, load_catalog
from vigil.config import REPO_ROOT, Settings, load_settings
from vigil.kafka_io import TopicTail
from vigil.physionet import iter_stays
from vigil.replay import merged_events
from vigil.tools.procs import WorkerProcess


def _sum(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith((name + "{", name + " ")))


async def _offer(s: Settings, events: list[tuple[str, float, bytes, bytes]], rate: float, labs_delay: float) -> None:
    # every labs record goes out ``labs_delay * rate`` records after its turn (a deterministic lag that does
    # not depend on how busy the machine is), the others at their turn; record i is due at i / rate
    shift = round(labs_delay * rate)
    order = sorted(range(len(events)), key=lambda i: i + shift + 0.5 if events[i][0] == "labs" else i)
    p = AIOKafkaProducer(acks="all", linger_ms=2, **s.kafka.client_kwargs())
    await p.start()
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future] = []  # type: ignore[type-arg]
    try:
        t0 = loop.time()
        for n, i in enumerate(order):
            stream, _t, key, value = events[i]
            if (d := t0 + n / rate - loop.time()) > 0:
                await asyncio.sleep(d)
            pending.append(await p.send(s.topic(stream), value, key=key))
        await asyncio.gather(*pending)
    finally:
        await p.stop()


async def _one(bootstrap: str, hold: float, events: list, rows: int, rate: float, labs_delay: float,  # type: ignore[type-arg]
               logdir: Path, src: tuple[str, str] | None) -> dict[str, object]:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    s = load_settings(None, kafka={"bootstrap_servers": bootstrap}, topic_prefix=f"h{tag}-", group_id=f"h{tag}",
                      web_port=0)  # fmt: skip
    await create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix)
    w = WorkerProcess(s, log_path=logdir / f"worker-{hold}.log",
                      extra_env={"VIGIL_STATE__REORDER_MIN_HOLD_S": str(hold),
                                 **({"PYTHONPATH": src[1]} if src else {})}).start()  # fmt: skip
    tail = None
    try:
        await asyncio.to_thread(w.wait_ready, 90.0)
        tail = await TopicTail(s, s.topic("scores")).start()
        t0 = time.monotonic()
        await _offer(s, events, rate, labs_delay)
        offered = len(events) / (time.monotonic() - t0)
        quiet = time.monotonic()
        while time.monotonic() - quiet < 3.0:
            if await tail.poll():
                quiet = time.monotonic()
        metrics = w.metrics_text()
    finally:
        if tail is not None:
            await tail.stop()
        await asyncio.to_thread(w.stop)
    recs = [orjson.loads(r.value) for r in tail.records]
    ts = datetime.fromisoformat
    lat = sorted(ts(d["emitted_at"]).timestamp() - ts(d["trigger_time"]).timestamp() for d in recs)
    q = lambda p: round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))], 3) if lat else None  # noqa: E731
    return {"src": src[0] if src else "", "pauses": int(_sum(metrics, "vigil_reorder_pauses_total")),
            "min_hold_s": hold, "labs_delay_ms": labs_delay * 1000, "offered_ev_s": round(offered),
            "events": len(events), "rows_expected": rows, "scores": len({d["score_id"] for d in recs}),
            "late": int(_sum(metrics, "vigil_late_events_total")), "p50_s": q(0.5), "p99_s": q(0.99)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO_ROOT / "data" / "sample" / "physionet2019_sample.tar.gz"))
    ap.add_argument("--stays", type=int, default=150)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--holds", default="0,0.1,0.25,0.5")
    ap.add_argument("--labs-delay-ms", type=float, default=0.0)
    ap.add_argument("--log", default="build/measure-hold")
    ap.add_argument("--src", action="append", default=[],
                    help="NAME=PATH: run each hold with the worker's PYTHONPATH=PATH (alternating; compare code)")
    a = ap.parse_args()
    logdir = Path(a.log)
    logdir.mkdir(parents=True, exist_ok=True)
    key = load_settings(None).pseudonym_key.get_secret_value()
    events = list(merged_events(iter_stays(a.data, limit=a.stays), key))
    rows = sum(len(st.iculos) for st in iter_stays(a.data, limit=a.stays))
    with EmbeddedBroker(log_path=logdir / "broker.log") as b:
        for hold in (float(h) for h in a.holds.split(",")):
            for src in [tuple(x.split("=", 1)) for x in a.src] or [None]:
                r = asyncio.run(_one(b.bootstrap, hold, events, rows, a.rate, a.labs_delay_ms / 1000, logdir, src))
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
