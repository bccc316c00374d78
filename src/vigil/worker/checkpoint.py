"""Checkpointing of the input topics: which offsets may be committed, and committing them.

The engine calls :meth:`Checkpoint.commit` only after every output of the batch (scores, alerts, dead
letters, re-routes, changelog) has been acknowledged by the broker (``acks=all``): a crash before the
commit replays the batch, which the changelog's de-duplication and the outputs' deterministic ids absorb.

The commit offset of a partition is the next offset to read, **or the lowest offset still held in the
reorder buffer** (:class:`vigil.worker.reorder.ReorderBuffer`), whichever is lower: a held event has not
been applied to state or produced anything yet, so committing past it would lose it on a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiokafka import TopicPartition

from vigil.worker.reorder import ReorderBuffer

__all__ = ["Checkpoint", "Committer"]


class Committer(Protocol):
    """What :meth:`Checkpoint.commit` needs of a consumer (``AIOKafkaConsumer.commit``)."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class Checkpoint:
    """Per input topic-partition: the next offset to read and the offset last committed.

    ``topic_names`` maps broker topic names to catalogue names (the keys of the reorder buffer's held
    offsets); ``reorder`` is the engine's reorder buffer, read for the lowest held offset per partition.
    """

    def __init__(self, reorder: ReorderBuffer, topic_names: Mapping[str, str]) -> None:
        self.reorder = reorder
        self.topic_names = topic_names
        self._next: dict[TopicPartition, int] = {}  # next offset to read, per fetched partition
        self._committed: dict[TopicPartition, int] = {}

    def fetched(self, tp: TopicPartition, next_offset: int) -> None:
        """Records of ``tp`` up to ``next_offset - 1`` were fetched (screened, held or applied)."""
        self._next[tp] = next_offset

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset to read of ``tp`` as known to the checkpoint (None before the first fetch)."""
        return self._next.get(tp)

    def offsets(self) -> dict[TopicPartition, int]:
        """Per partition: the next offset, or the lowest offset still held in the reorder buffer."""
        held = self.reorder.min_offsets()
        names = self.topic_names
        return {tp: held.get((names[tp.topic], tp.partition), nxt) for tp, nxt in self._next.items()}

    def pending(self) -> bool:
        """Whether a commit would move any partition's committed offset."""
        return any(self._committed.get(tp) != off for tp, off in self.offsets().items())

    async def commit(self, consumer: Committer) -> dict[TopicPartition, int]:
        """Commit the offsets that changed (call only once the batch's outputs are acknowledged); returns them."""
        offsets = {tp: off for tp, off in self.offsets().items() if self._committed.get(tp) != off}
        if offsets:
            await consumer.commit(offsets)
            self._committed.update(offsets)
        return offsets

    def reset(self) -> None:
        """Forget every position (on a new assignment, aiokafka restarts each partition at its committed offset)."""
        self._next.clear()
        self._committed.clear()
