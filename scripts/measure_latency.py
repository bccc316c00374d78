"""The benchmark's latency step (``vigil.tools.bench_steps.latency_step``) for one configuration, optionally with a
lagging lab feed (issue 15; not part of `make test`). A private embedded broker, a fresh `vigil worker` process, the
first ``--stays`` stays of ``--data`` offered at ``--rate`` events/s by one producer; ``--labs-delay-ms`` D sends
every labs record D x rate records after its turn (a lab feed D ms behind the others). ``--set`` sets worker
settings through the environment (e.g. ``state.reorder_min_hold_s=0``). Prints one JSON line: p50/p99/max
latency (score record's broker timestamp minus the closing event's), or the failure (late events, missing
scores). Run several configurations alternately (and the previous code with ``PYTHONPATH``) to compare on a
shared machine:

    PYTHONPATH=src python scripts/measure_latency.py --set state.reorder_min_hold_s=0 --labs-delay-ms 100
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import uuid
from pathlib import Path

from vigil.broker import EmbeddedBroker
from vigil.config import load_settings
from vigil.tools.bench import SAMPLE, SHARED
from vigil.tools.bench_contenders import BenchFailure, Workload, workload
from vigil.tools.bench_steps import latency_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else SAMPLE)
    ap.add_argument("--stays", type=int, default=300)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--labs-delay-ms", type=float, default=0.0)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    for item in a.set:
        key, _, value = item.partition("=")
        os.environ["VIGIL_" + key.upper().replace(".", "__")] = value
    logdir = Path(tempfile.mkdtemp(prefix="vigil-latency-"))
    with EmbeddedBroker(log_path=logdir / "broker.log") as b:
        base = load_settings(None, kafka={"bootstrap_servers": b.bootstrap}, topic_prefix=f"m{uuid.uuid4().hex[:6]}-",
                             time_window={"mode": "replay"}, dev_mode=True)  # fmt: skip
        wl = workload(a.data, a.stays, base)
        shift = round(a.labs_delay_ms / 1000 * a.rate)
        if shift:
            ev = wl.events
            order = sorted(range(len(ev)), key=lambda i: i + shift + 0.5 if ev[i][0] == "labs" else i)
            wl = Workload([ev[i] for i in order], wl.stays, wl.rows, wl.invalid)
        cfg = {"set": a.set, "labs_delay_ms": a.labs_delay_ms, "rate": a.rate, "stays": a.stays}
        try:
            print(json.dumps({**cfg, **latency_step(base, wl, [a.rate], logdir, log=lambda _: None)[0]}), flush=True)
        except BenchFailure as exc:
            print(json.dumps({**cfg, "failed": str(exc), "logs": str(logdir)}), flush=True)


if __name__ == "__main__":
    main()
