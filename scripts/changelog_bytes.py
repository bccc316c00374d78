"""Changelog bytes per input byte, and Processor CPU per event, vs ``state.changelog_interval_s`` (issue 15; not
part of `make test`).

In-process, the batch :class:`~vigil.worker.batch.Processor` only (no Kafka): the replay's events of the first
``--stays`` stays of a PhysioNet file (the bench workload, decoded as the worker decodes them), the first
``--events`` of them, all in one partition, cut into batches of ``--batch`` events. Wall time is simulated:
each batch advances the changelog writer's clock by ``batch / rate`` seconds (the offered rate, ``--rate``),
so an interval means what it means in a worker consuming that rate. At the end every unwritten state is
written (what a stop does), and counted. Input bytes: key + value of each record as published.

    PYTHONPATH=src python scripts/changelog_bytes.py data/sample/physionet2019_sample.tar.gz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vigil.config import load_settings
from vigil.records import Invalid, decode
from vigil.tools.bench_contenders import workload
from vigil.worker.batch import InEvent, Processor
from vigil.worker.changelog import ChangelogWriter
from vigil.worker.engine import load_scorers


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def measure(events: list[tuple[str, bytes, bytes]], batch: int, interval: float, rate: float) -> dict[str, float]:
    s = load_settings(None)
    proc = Processor(s, load_scorers(s))
    clock = _Clock()
    proc.changelog = ChangelogWriter(interval, clock)  # as the engine sets it (state.changelog_interval_s)
    offsets: dict[str, int] = {}
    decoded: list[InEvent] = []
    in_bytes = 0
    for stream, key, value in events:
        ev = decode(value, stream, key)
        in_bytes += len(key) + len(value)
        if type(ev) is Invalid:
            continue
        off = offsets.get(stream, 0)
        offsets[stream] = off + 1
        decoded.append(InEvent(ev, stream, 0, time.time(), off))  # type: ignore[arg-type]
    cl_bytes = records = scores = 0
    cpu = 0.0
    for i in range(0, len(decoded), batch):
        t0 = time.process_time()
        out = proc.process(decoded[i : i + batch])
        cpu += time.process_time() - t0
        cl_bytes += sum(len(v) for _, _, v in out.changelog if v is not None)
        records += len(out.changelog)
        scores += len(out.scores)
        clock.t += batch / rate
    final = proc.changelog.flush(proc.states, everything=True)  # a stop writes every unwritten state
    cl_bytes += sum(len(v) for _, _, v in final if v is not None)
    records += len(final)
    return {"batch": batch, "interval_s": interval, "rate": rate, "events": len(decoded), "scores": scores,
            "changelog_records": records, "changelog_bytes": cl_bytes, "input_bytes": in_bytes,
            "ratio": round(cl_bytes / in_bytes, 3), "cpu_us_per_event": round(cpu / len(decoded) * 1e6, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--stays", type=int, default=300)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--interval", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    ap.add_argument("--rate", type=float, nargs="+", default=[5000.0, 30000.0])
    args = ap.parse_args()
    wl = workload(args.data, args.stays, load_settings(None))
    events = wl.events[: args.events]
    for rate in args.rate:
        for batch in args.batch:
            for interval in args.interval:
                print(json.dumps(measure(events, batch, interval, rate)), flush=True)


if __name__ == "__main__":
    main()
