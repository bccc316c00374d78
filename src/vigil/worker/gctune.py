"""Garbage-collector settings for the worker process (its hot path allocates ~20 objects per event).

CPython's cyclic collector runs a young collection every 700 net allocations of tracked objects and a full
one every 100 of those (when enough long-lived objects are pending); a full collection walks every tracked
object of the process. A worker that decodes 5,000 records a batch triggers thousands of collections per
second of work, and the full ones walk everything that lives in the process: its state, the loaded models'
Python objects, and (in ``make bench``) the benchmark's own workload. Measured in one ``make bench`` pipeline
run (1,000 stays, 2 cores shared): 4.7 s of collector time in a 41 s run with the defaults; 0.65 s with
:func:`tune` (see NOTES-speed.md).

:func:`tune` is applied once per process, when the first :class:`~vigil.worker.engine.Engine` starts:

* ``gc.collect()`` then ``gc.freeze()``: what exists at start-up (modules, settings, models, a benchmark's
  data) moves to the permanent generation and is no longer walked by every full collection;
* the young-generation threshold is raised to :data:`GEN0_THRESHOLD` allocations, so young collections run
  ~30x less often (most of a batch's objects are freed by reference counting anyway; cycles are still
  collected, later).

Reference counting, and therefore the memory of everything that is not a cycle, is unaffected.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "tune"]

GEN0_THRESHOLD = 20_000
_tuned = False


def tune() -> bool:
    """Freeze the start-up heap and raise the young-generation threshold, once per process; returns whether
    this call did it.

    >>> import gc
    >>> _ = tune(); gc.get_threshold()[0] >= GEN0_THRESHOLD
    True
    """
    global _tuned  # noqa: PLW0603 - once per process
    if _tuned:
        return False
    _tuned = True
    gc.collect()
    gc.freeze()
    t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(max(t0, GEN0_THRESHOLD), t1, t2)
    return True
