"""Checkpointing of the input topics: which offsets may be committed, and committing them.

The engine calls :meth:`Checkpoint.commit` only after every output of the batch (scores, alerts, dead
letters, re-routes, changelog) has been acknowledged by the broker (``acks=all``): a crash before the
commit replays the batch, which the changelog's de-duplication and the outputs' deterministic ids absorb.

The commit offset of a partition is the next offset to read, **or the lowest offset still held in the
reorder buffer** (:class:`vigil.worker.reorder.ReorderBuffer`), whichever is lower: a held event has not
been applied to state or produced anything yet, so committing past it would lose it on a crash. With
coalesced changelog writes (``state.changelog_interval_s`` > 0, :mod:`vigil.worker.changelog`), it is
also never past **the lowest offset applied since the partition's states were last written**: an event
whose effect lives only in an unwritten state is replayed after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from aiokafka import TopicPartition

from vigil.worker.reorder import ReorderBuffer

if TYPE_CHECKING:
    from vigil.worker.changelog import ChangelogWriter

__all__ = ["Checkpoint", "Committer"]


class Committer(Protocol):
    """What :meth:`Checkpoint.commit` needs of a consumer (``AIOKafkaConsumer.commit``)."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class Checkpoint:
    """Per input topic-partition: the next offset to read and the offset last committed.

    ``topic_names`` maps broker topic names to catalogue names (the keys of the reorder buffer's held
    offsets); ``reorder`` is the engine's reorder buffer, read for the lowest held offset per partition;
    ``changelog`` (optional) the processor's changelog writer, read for the lowest offset applied to a state
    not written yet.
    """

    def __init__(self, reorder: ReorderBuffer, topic_names: Mapping[str, str],
                 changelog: ChangelogWriter | None = None) -> None:  # fmt: skip
        self.reorder = reorder
        self.changelog = changelog
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
        """Per partition: the lowest of the next offset, the lowest offset still held in the reorder buffer
        and the lowest offset applied to a state not yet written to the changelog."""
        held = self.reorder.min_offsets()
        names = self.topic_names
        dirty = self.changelog.min_offsets() if self.changelog is not None else {}
        if not dirty:
            return {tp: held.get((names[tp.topic], tp.partition), nxt) for tp, nxt in self._next.items()}
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            key = (names[tp.topic], tp.partition)
            out[tp] = min(nxt, held.get(key, nxt), dirty.get(key, nxt))
        return out

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
