"""Changelog writes: which patient states go to the changelog, and when (``state.changelog_interval_s``).

With the interval at 0 (the behaviour before this module), every patient touched by a batch is written,
whole, once per batch. With an interval ``> 0`` the writes are **coalesced per partition**: a patient
touched by a batch becomes *dirty*, and partition ``p``'s dirty set is written as a whole at most once
per interval — at the first batch, or the engine's housekeeping tick (every 0.5 s), after the interval
has passed since ``p``'s last flush (so the first change after a quiet spell is written at once). The
engine writes every dirty state on a partition revoke and on a worker stop (drain), each followed by a
commit. A discharge is not written early: all of a partition's states are written together, so what a
restore reads back is the partition as it stood at its last flush (one consistent cut), and the replay
after it re-applies exactly the events applied since (each one new to the restored states: none depends
on the per-patient de-duplication window).

**The recovery guarantee** is kept by the commit, not by the writes: per input topic-partition of
partition ``p``, :meth:`ChangelogWriter.min_offsets` is the lowest offset applied since ``p``'s last
flush, and :class:`vigil.worker.checkpoint.Checkpoint` never commits past it. A crash before the next
flush restores the older states from the changelog and re-delivers every event applied since they were
written, which are applied again (the same rows, the same scores and alerts under the same
deterministic ids); events already in a restored state are dropped by its de-duplication window.

Why per partition and not per patient: one offset bound per (topic, partition), kept as a plain ``min``
when events are applied and cleared when the partition's dirty set is flushed, costs nothing per patient
and needs no ordered structure; a per-patient bound would let the commit advance between flushes but
needs the oldest offset over every dirty patient (a heap with deletions). The price: the committed
offset lags by up to one interval, so a crash re-delivers up to one interval of input (re-emitting
outputs that subscribers de-duplicate by id).

A dirty patient is never evicted (``Processor.evict_idle`` skips it): a tombstone written while the
commit still lies before the patient's last events would let a replay open a ghost stay. It is evicted
after the next flush and commit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from vigil.state import PatientState
from vigil.worker.outputs import Outputs

__all__ = ["ChangelogWriter", "write_and_commit"]

log = logging.getLogger(__name__)


class _Applied(Protocol):  # vigil.worker.batch.InEvent
    topic: str
    partition: int
    offset: int


class ChangelogWriter:
    """Decides the changelog records of a batch and keeps the commit bound of the states not yet written.

    ``interval_s``: 0 writes every touched state every batch; ``> 0`` writes a partition's dirty states
    at most once per interval (see the module docstring). ``clock``: monotonic seconds (tests inject one).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = float(interval_s)
        self.clock = clock
        self._dirty: dict[int, dict[str, None]] = {}  # partition -> patients changed since its last flush
        self._low: dict[tuple[str, int], int] = {}  # (topic, partition) -> lowest offset applied since the flush
        self._flushed: dict[int, float] = {}  # partition -> clock() of its last flush

    def write(self, changelog: list[tuple[int, str, bytes | None]], states: Mapping[int, Mapping[str, PatientState]],
              touched: list[tuple[int, PatientState]], done: list[tuple[int, PatientState]],
              applied: Iterable[Iterable[_Applied]] = ()) -> None:  # fmt: skip
        """Append to ``changelog`` the records of a batch: ``touched`` states (changed by the batch's events,
        ``applied`` grouped per patient) and ``done`` ones (finalised by the clock: a discharge closed, an
        admission inferred) — each at once (interval 0), or with its partition's next flush."""
        if self.interval_s <= 0:  # every touched or finalised state, once, now
            written: set[int] = set()
            for p, st in touched + done:
                if id(st) in written:
                    continue
                written.add(id(st))
                if st.discharged:  # keep a closed record: stragglers and duplicates are dropped, not revived
                    st.pending = []
                changelog.append((p, st.patient, st.to_bytes()))
            return
        low = self._low
        for lst in applied:
            for ie in lst:
                if ie.offset >= 0:
                    key = (ie.topic, ie.partition)
                    if ie.offset < low.get(key, math.inf):
                        low[key] = ie.offset
        for p, st in touched + done:  # finalised states too: the partition's records stay one consistent cut
            if st.discharged:
                st.pending = []
            self._dirty.setdefault(p, {})[st.patient] = None
        changelog += self.flush(states)

    def due(self) -> list[int]:
        """Partitions whose unwritten changes are due (their last flush at least ``interval_s`` ago)."""
        now = self.clock()
        return sorted(p for p in self._pending() if now - self._flushed.get(p, -math.inf) >= self.interval_s)

    def _pending(self) -> set[int]:
        return {p for p, d in self._dirty.items() if d} | {p for _, p in self._low}

    def flush(self, states: Mapping[int, Mapping[str, PatientState]], everything: bool = False
              ) -> list[tuple[int, str, bytes | None]]:  # fmt: skip
        """The records of the dirty states of the partitions due (``everything``: of every partition), which
        then count as written: call only when the records will be produced and acknowledged before the next
        commit (the engine's ``_emit`` then ``Checkpoint.commit``)."""
        if self.interval_s <= 0:
            return []
        parts = sorted(self._pending()) if everything else self.due()
        out: list[tuple[int, str, bytes | None]] = []
        now = self.clock()
        for p in parts:
            part = states.get(p, {})
            for key in self._dirty.pop(p, {}):
                st = part.get(key)
                if st is not None:  # an evicted patient's tombstone is already written
                    out.append((p, key, st.to_bytes()))
            self._flushed[p] = now
            for k in [k for k in self._low if k[1] == p]:
                del self._low[k]
        return out

    def is_dirty(self, p: int, patient: str) -> bool:
        """Whether ``patient``'s state in partition ``p`` has changes not written yet."""
        return patient in self._dirty.get(p, ())

    def dirty(self) -> int:
        """Patients with changes not written yet."""
        return sum(len(d) for d in self._dirty.values())

    def min_offsets(self) -> dict[tuple[str, int], int]:
        """Per (catalogue topic, partition): the lowest input offset applied since the partition's last
        flush — the commit must not pass it (:class:`vigil.worker.checkpoint.Checkpoint`)."""
        return dict(self._low)

    def drop(self, parts: Iterable[int]) -> None:
        """Forget partitions no longer owned (their next owner replays from the committed offset)."""
        for p in parts:
            self._dirty.pop(p, None)
            self._flushed.pop(p, None)
            for k in [k for k in self._low if k[1] == p]:
                del self._low[k]


async def write_and_commit(engine: Any, everything: bool = False, revoking: bool = False) -> None:
    """The engine's side (:class:`vigil.worker.engine.Engine`, coalescing on): write the dirty states of the
    partitions due (``everything``: of all), await their acknowledgement (``Engine._emit``), then commit the
    input offsets this lets move. On a revoke (``revoking``, inside the rebalance callback, whose exceptions
    aiokafka would only log) a failed commit is logged — the next owner replays from the last commit — and any
    other failure ends the worker as a failure of the consume loop does (crash-only): states that no longer
    count as dirty but were not written must never be committed past."""
    writer: ChangelogWriter = engine.processor.changelog
    if writer.interval_s <= 0 or engine._producer is None or engine._consumer is None:  # noqa: SLF001
        return
    try:
        out = Outputs()
        out.changelog = writer.flush(engine.processor.states, everything)
        if out.changelog:
            await engine._emit(out)  # noqa: SLF001
        if engine.checkpoint.pending():
            await engine.checkpoint.commit(engine._consumer)  # noqa: SLF001
    except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
        if not revoking:
            raise
        log.warning("commit on revoke failed (%s): the next owner replays from the last commit", type(exc).__name__)
        engine.metrics.commit_failures.inc()
    except Exception as exc:
        if revoking:
            log.critical("changelog write on revoke failed: %s", type(exc).__name__)
            engine.fatal = exc
            if engine.on_fatal is not None:
                engine.on_fatal(exc)
        raise
