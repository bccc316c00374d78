"""Where a contender's CPU went during its timed span: its event loop's thread, its other threads (the inference
thread) and the broker process, read from Linux's ``/proc`` (None elsewhere).

``make bench`` reports these beside the rates so that a ratio to the raw ceiling can be read against the machine:
at 0.40 of the raw ceiling the pipeline's span would be ``raw seconds / 0.40``, and two cores give twice that in
core-seconds, for the worker's threads *and* the broker. :func:`budget` does that arithmetic from one run.

>>> a = {"loop": 1, "threads": {1: 1.0, 2: 0.5}, "broker": 2.0}
>>> b = {"loop": 1, "threads": {1: 3.0, 2: 1.5, 3: 0.25}, "broker": 2.5}
>>> spent(a, b)
{'event_loop': 2.0, 'other_threads': 1.25, 'broker': 0.5, 'total': 3.75}
>>> budget(raw_seconds=1.0, cores=2, ratio=0.4)
{'ratio': 0.4, 'seconds': 2.5, 'core_seconds': 5.0}
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["budget", "snapshot", "spent"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_seconds(path: Path) -> float | None:
    """utime + stime of a /proc stat file, in seconds (None when it cannot be read)."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def snapshot(broker_pid: int | None = None) -> dict[str, Any] | None:
    """CPU seconds so far of every thread of this process and of the broker process; call it on the event loop's
    thread. None where ``/proc`` is not there."""
    task = Path(f"/proc/{os.getpid()}/task")
    if not task.is_dir():
        return None
    threads = {}
    for d in task.iterdir():
        sec = _stat_seconds(d / "stat")
        if sec is not None:
            threads[int(d.name)] = sec
    broker = _stat_seconds(Path(f"/proc/{broker_pid}/stat")) if broker_pid is not None else None
    return {"loop": threading.get_native_id(), "threads": threads, "broker": broker}


def spent(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, float] | None:
    """CPU seconds between two snapshots: the event loop's thread, every other thread of the process (a thread
    started in between counts from 0; one that ended before ``b`` is not seen: the pipeline's inference thread
    lives as long as the process), the broker (0 when it was not measured) and their total."""
    if a is None or b is None:
        return None
    loop = a["loop"]
    ta, tb = a["threads"], b["threads"]
    ev = tb.get(loop, 0.0) - ta.get(loop, 0.0)
    other = sum((v - ta.get(t, 0.0) for t, v in tb.items() if t != loop), 0.0)
    broker = (b["broker"] - a["broker"]) if a["broker"] is not None and b["broker"] is not None else 0.0
    out = {"event_loop": ev, "other_threads": other, "broker": broker, "total": ev + other + broker}
    return {k: round(v, 3) for k, v in out.items()}


def budget(raw_seconds: float, cores: int, ratio: float = 0.40) -> dict[str, float]:
    """The span a contender would have at ``ratio`` of a raw ceiling that read the same events in ``raw_seconds``,
    and the core-seconds ``cores`` cores give in it (for the worker's threads and the broker together)."""
    seconds = raw_seconds / ratio
    return {"ratio": ratio, "seconds": round(seconds, 3), "core_seconds": round(seconds * cores, 3)}
