"""Edge watermarks: event-time progress published by the producers, in band, on every input topic-partition.

The reorder buffer (:mod:`vigil.worker.reorder`) must not apply an event while an earlier event of the
same partition may still arrive on another topic. Without help from the producers it can only infer that
from what it fetched (the newest event time per topic-partition, idleness) plus a wall-clock minimum hold,
which costs every event ``state.reorder_min_hold_s`` of latency. A producer that writes in event-time order
knows more: after it has written everything up to event time *W*, it writes a
:class:`~vigil.records.Watermark` record (``{"v": 1, "source": PRODUCER, "watermark": W}``, keyless) to
**every** partition of each topic it writes: "what I write here from now on has event time >= W". Because
the record sits in the partition's log after the data it covers, the worker that reads it has fetched all
of that data (Kafka keeps order within a partition), whatever the lag.

Per input topic-partition this module keeps each producer's latest watermark. The topic-partition is
**edge-ordered** while at least one producer's watermark is live and no data record has contradicted them;
its contribution to the partition's watermark is then the minimum over its producers (``final``: +inf), and
the partition needs no minimum hold once every input of it is edge-ordered, idle or stalled
(:func:`vigil.worker.reorder.plan`). Otherwise it falls back to the inferred watermark and the hold.

* A producer whose last watermark is older than ``timeout_s`` (wall time) no longer counts: a crashed or
  stopped producer must not stall the partition (its later records, if earlier than the others' progress,
  count as late) — Flink's source idleness, applied to producers.
* A data record earlier than the topic-partition's edge watermark is a **violation** (a producer that
  writes without watermarks, or out of order, on a topic whose other producers punctuate): counted in
  ``vigil_watermark_violations_total{topic}``, logged once per topic-partition per ``timeout_s``, and the
  topic-partition falls back to the inferred watermark and the hold for ``timeout_s``. It is never dropped:
  it is applied like any event (late if its row is already closed).
* ``enabled=False`` (``state.edge_watermarks = false``): watermark records are consumed and counted but
  never used.

>>> from aiokafka import TopicPartition as TP
>>> from vigil.records import Watermark
>>> m = EdgeMarks(timeout_s=5.0)
>>> m.current(TP("vitals", 0), now=0.0) is None  # no producer watermark yet: inferred watermark and hold
True
>>> m.observe(TP("vitals", 0), Watermark("replay-a", 100.0), now=0.0)
>>> m.observe(TP("vitals", 0), Watermark("replay-b", 90.0), now=0.0)
>>> m.current(TP("vitals", 0), now=1.0)
90.0
>>> m.violation(TP("vitals", 0), "vitals", 5.0, now=1.0)  # a data record 5 s below it: a fallback starts
True
>>> m.current(TP("vitals", 0), now=2.0) is None  # falls back for timeout_s
True
>>> m.observe(TP("vitals", 0), Watermark("replay-b", 110.0), now=6.0)
>>> m.current(TP("vitals", 0), now=6.5)  # replay-a silent for 5 s no longer counts
110.0
>>> m.observe(TP("vitals", 0), Watermark("replay-b", 110.0, final=True), now=7.0)
>>> m.current(TP("vitals", 0), now=7.5), m.current(TP("vitals", 0), now=13.0)  # done; then forgotten
(inf, None)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from typing import TYPE_CHECKING

from vigil.records import Watermark

if TYPE_CHECKING:
    from vigil.metrics import WorkerMetrics

__all__ = ["EdgeMarks"]

log = logging.getLogger(__name__)


class EdgeMarks:
    def __init__(self, timeout_s: float, *, enabled: bool = True) -> None:
        self.timeout_s = timeout_s
        self.enabled = enabled
        self._marks: dict[Hashable, dict[str, tuple[float, float]]] = {}  # tp -> producer -> (time, seen at)
        self._mixed_until: dict[Hashable, float] = {}  # tp -> wall time its last violation stops counting

    def observe(self, tp: Hashable, wm: Watermark, now: float) -> None:
        """A watermark record read from ``tp``. A producer's watermark that moves back (it restarted from
        an earlier point) is taken as it is: holding more is always safe."""
        self._marks.setdefault(tp, {})[wm.source] = (math.inf if wm.final else wm.time, now)

    def current(self, tp: Hashable, now: float) -> float | None:
        """``tp``'s edge watermark, or None when it is not edge-ordered (no live producer watermark, a
        recent violation, or disabled)."""
        marks = self._marks.get(tp)
        if not marks or not self.enabled or now < self._mixed_until.get(tp, -math.inf):
            return None
        old = now - self.timeout_s
        live = [t for t, seen in marks.values() if seen >= old]
        if len(live) < len(marks):  # producers gone silent no longer count
            for src in [s for s, (_, seen) in marks.items() if seen < old]:
                del marks[src]
        return min(live) if live else None

    def violation(self, tp: Hashable, topic: str, by: float, now: float, metrics: WorkerMetrics | None = None) -> bool:
        """A data record ``by`` seconds below the watermark of edge-ordered ``tp``: counted, and ``tp`` falls
        back for ``timeout_s``; logged when that starts a fallback period (returns True then)."""
        if metrics is not None:
            metrics.watermark_violations.labels(topic).inc()
        first = now >= self._mixed_until.get(tp, -math.inf)
        self._mixed_until[tp] = now + self.timeout_s
        if first:
            log.warning("%s partition %s: a record %.3f s before its producers' watermark (a producer that does "
                        "not publish watermarks, or writes out of order): ordered by the inferred watermark and "
                        "the minimum hold for %.0f s", topic, getattr(tp, "partition", tp), by, self.timeout_s)
        return first

    def clear(self) -> None:
        """Forget everything (a rebalance: every assigned topic-partition is read again from its commit)."""
        self._marks.clear()
        self._mixed_until.clear()
