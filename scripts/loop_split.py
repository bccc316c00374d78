"""Where the pipeline contender's event loop spends its timed span (issue 15; not part of `make test`).

Runs `make bench`'s pipeline contender (same workload, own broker, own prefix, checked for every expected score
with 0 late) with the engine's stages wrapped in wall-clock timers: ``getmany`` (fetch), ``Engine._handle`` (one
fetched batch) and inside it ``Intake.take`` (decode and screen), ``Processor.process`` (dedupe, state, features,
inference, records; it waits for the inference thread's chunks) and ``Engine._emit`` (produce and await the acks,
of which ``BatchSender.send`` is the producing). CPU seconds of the event loop's thread, the other threads and the
broker come from :mod:`vigil.tools.bench_cpu` over the same span. The timers add a few microseconds per call (a
few hundred calls per run).

    .venv/bin/python scripts/loop_split.py --stays 1000 --reps 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiokafka

from vigil.broker import EmbeddedBroker
from vigil.config import REPO_ROOT, load_settings
from vigil.tools import bench_contenders as bc
from vigil.worker import batch, engine, intake, produce

WALL: dict[str, float] = {}


def _timed(owner: Any, name: str, key: str) -> None:
    f = getattr(owner, name)
    if asyncio.iscoroutinefunction(f):

        @functools.wraps(f)
        async def aw(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await f(*a, **k)
            finally:
                WALL[key] = WALL.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, aw)
    else:

        @functools.wraps(f)
        def w(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                WALL[key] = WALL.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/physionet2019/setA.parquet")
    ap.add_argument("--stays", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    for owner, name, key in [(aiokafka.AIOKafkaConsumer, "getmany", "fetch"), (engine.Engine, "_handle", "handle"),
                             (intake.Intake, "take", "take"), (batch.Processor, "process", "process"),
                             (engine.Engine, "_emit", "emit"), (produce.BatchSender, "send", "send")]:  # fmt: skip
        _timed(owner, name, key)
    logdir = Path(tempfile.mkdtemp(prefix="loop-split-"))
    with EmbeddedBroker(log_path=logdir / "broker.log") as b0:
        base = load_settings(None, kafka={"bootstrap_servers": b0.bootstrap}, topic_prefix="split-",
                             time_window={"mode": "replay"}, dev_mode=True)  # fmt: skip
        wl = bc.workload(args.data, args.stays, base)
        expected = wl.rows * bc.n_scorers(base)[0]
        for rep in range(args.reps):
            with EmbeddedBroker(log_path=logdir / "broker.log") as b:
                s = bc.contender_settings(base, "pipeline", b.bootstrap)
                asyncio.run(bc._publish(s, wl, naive=False))
                WALL.clear()
                res = bc.run_contender("pipeline", s, wl, expected, logdir, publish=False, broker_pid=b.pid)
            # fetch: only the part inside the span counts (the first getmany waits for the group join)
            inside = {k: round(v, 3) for k, v in WALL.items() if k != "fetch"}
            print(json.dumps({"rep": rep + 1, "events_per_s": round(res.rate), "span_s": round(res.seconds, 3),
                              "scores": res.scores, "late": res.late, "cpu": res.cpu, "wall_s": inside}))  # fmt: skip


if __name__ == "__main__":
    main()
