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
import json
import os
import platform
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from vigil.config import REPO_ROOT, load_settings
from vigil.tools.bench_contenders import (
    CONTENDERS,
    BenchFailure,
    Result,
    Workload,
    contender_settings,
    expected_rows,
    n_scorers,
    run_contender,
    throughput,
    workload,
)
from vigil.tools.bench_steps import latency_step, memory_child, memory_step

__all__ = ["BenchFailure", "Result", "Workload", "contender_settings", "expected_rows", "latency_step", "main",
           "memory_child", "n_scorers", "run_contender", "workload"]  # fmt: skip

SHARED = REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "setA.parquet"
SAMPLE = REPO_ROOT / "data" / "sample" / "physionet2019_sample.tar.gz"


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
    ap.add_argument("--latency-without-watermarks", default="5000",
                    help="offered events/s measured again without producer watermarks (comparison); empty: none")
    ap.add_argument("--fresh-broker", action=argparse.BooleanOptionalAction, default=True,
                    help="each contender run and each latency run on its own new embedded broker")
    ap.add_argument("--watermark-interval-ms", type=float, default=50.0,
                    help="the latency step's producer writes its watermark this often (vigil replay: 50)")
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
            results["fresh_broker"] = args.fresh_broker
            base = load_settings(None, kafka={"bootstrap_servers": b.bootstrap},
                                 topic_prefix=f"b{uuid.uuid4().hex[:6]}-", **nested)  # fmt: skip
            wl = workload(args.data, args.stays, base)
            print(f"workload: {len(wl.events):,} events, {wl.stays} stays, {wl.rows:,} rows to score", flush=True)
            # each contender run and each latency run on a new broker: the memory-only broker keeps every record
            fresh = (lambda: EmbeddedBroker(log_path=logdir / "broker.log")) if args.fresh_broker else None
            results["throughput"] = throughput(base, wl, args.reps, contenders, logdir, fresh=fresh)
            rates = [float(x) for x in args.latency_rates.split(",") if x]
            if rates:
                lwl = workload(args.data, args.latency_stays, base)
                without = [float(x) for x in args.latency_without_watermarks.split(",") if x]
                results["latency"] = latency_step(base, lwl, rates, logdir, without=without,
                                                  watermark_interval_s=args.watermark_interval_ms / 1000,
                                                  fresh=fresh)  # fmt: skip
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
    from vigil.tools.bench_report import render

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(r))


if __name__ == "__main__":
    sys.exit(main())
