"""Backlog catch-up measurement (issue 14; not part of `make test`).

Starts a private embedded broker, creates the catalogue topics, publishes ``--limit`` stays of a PhysioNet
file with `vigil replay` (as fast as possible, default stagger), then starts ONE `vigil worker` from the
start of the backlog and follows it until every expected row is scored (or nothing progresses for
``--idle`` s). Prints rows scored vs expected, late events, pauses, stalled-input escapes, wall time and the
worker's peak RSS as JSON. Extra worker settings: ``--env KEY=VALUE`` (repeatable).

    PYTHONPATH=src python scripts/measure_backlog.py ../shared/data/physionet2019/setA.parquet --limit 4000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vigil.broker import EmbeddedBroker
from vigil.config import load_settings
from vigil.physionet import iter_stays
from vigil.tools.procs import WorkerProcess


def _sum(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith((name + "{", name + " ")))


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--limit", type=int, default=4000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--log", default="build/measure-backlog")
    a = ap.parse_args()
    logdir = Path(a.log)
    logdir.mkdir(parents=True, exist_ok=True)
    expected = sum(len(st.iculos) for st in iter_stays(a.path, limit=a.limit))
    extra = dict(kv.split("=", 1) for kv in a.env)
    with EmbeddedBroker(log_path=logdir / "broker.log") as b:
        s = load_settings(None, kafka={"bootstrap_servers": b.bootstrap}, group_id="backlog", web_port=0)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": b.bootstrap}
        vigil = [sys.executable, "-m", "vigil"]
        subprocess.run([*vigil, "topics", "create"], env=env, check=True, stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        out = subprocess.run([*vigil, "replay", a.path, "--limit", str(a.limit)], env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        replayed = json.loads(out.strip().splitlines()[-1])
        print(f"replayed {replayed['events']} events in {time.monotonic() - t0:.1f} s", flush=True)
        w = WorkerProcess(s, log_path=logdir / "worker.log", extra_env=extra).start()
        try:
            w.wait_ready(120)
            t1, last, last_change, peak = time.monotonic(), -1.0, time.monotonic(), 0
            text = ""
            while True:
                time.sleep(2.0)
                assert w.proc is not None and w.proc.poll() is None, "worker died"
                peak = max(peak, _rss_kb(w.proc.pid, "VmRSS"))
                try:
                    text = w.metrics_text()
                except OSError:  # TimeoutError too: the worker's loop is busy; ask again
                    continue
                scored = _sum(text, "vigil_scores_total")
                if scored != last:
                    last, last_change = scored, time.monotonic()
                    print(f"{time.monotonic() - t1:6.1f} s  scored {scored:.0f}/{expected}  late "
                          f"{_sum(text, 'vigil_late_events_total'):.0f}  held "
                          f"{_sum(text, 'vigil_reorder_held_events'):.0f}  rss {peak / 1024:.0f} MB", flush=True)
                if scored >= expected or time.monotonic() - last_change > a.idle:
                    break
            took = last_change - t1
            hwm = _rss_kb(w.proc.pid, "VmHWM")
        finally:
            w.stop()
    result = {
        "stays": a.limit, "events": replayed["events"], "rows_expected": expected,
        "rows_scored": int(_sum(text, "vigil_scores_total")), "late": int(_sum(text, "vigil_late_events_total")),
        "duplicates": int(_sum(text, "vigil_duplicate_events_total")),
        "pauses": int(_sum(text, "vigil_reorder_pauses_total")),
        "stalled": int(_sum(text, "vigil_reorder_stalled_inputs_total")),
        "seconds_to_last_score": round(took, 1), "peak_rss_mb": round(max(peak, hwm) / 1024),
        "settings": extra,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
