"""The engine's checkpoint (vigil.worker.checkpoint): the commit offset never passes an event held in the
reorder buffer, commits only what moved, and forgets positions on a new assignment."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

from aiokafka import TopicPartition

from vigil.worker.checkpoint import Checkpoint
from vigil.worker.reorder import ReorderBuffer

NAMES = {"p-vitals": "vitals", "p-labs": "labs"}
V0, L0 = TopicPartition("p-vitals", 0), TopicPartition("p-labs", 0)


class Recorder:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def held(topic: str, offset: int, t: float) -> SimpleNamespace:
    return SimpleNamespace(event=SimpleNamespace(time=t), topic=topic, partition=0, offset=offset)


def test_commit_stops_at_the_lowest_held_offset_then_moves_on_once_released() -> None:
    buf = ReorderBuffer(min_hold_s=0.0)
    cp = Checkpoint(buf, NAMES)
    consumer = Recorder()
    cp.fetched(V0, 10)  # vitals 0..9 fetched
    cp.fetched(L0, 5)
    buf.add([held("vitals", 7, 100.0), held("vitals", 8, 101.0)], now=0.0)  # 7 and 8 still held
    assert cp.position(V0) == 10
    assert cp.offsets() == {V0: 7, L0: 5}
    assert cp.pending()
    assert asyncio.run(cp.commit(consumer)) == {V0: 7, L0: 5}
    assert not cp.pending()
    assert asyncio.run(cp.commit(consumer)) == {}  # nothing moved: no commit call
    assert consumer.commits == [{V0: 7, L0: 5}]
    released = buf.release(math.inf, {0: (math.inf, math.inf)})
    assert [ie.offset for ie in released] == [7, 8]
    assert cp.offsets() == {V0: 10, L0: 5}
    assert asyncio.run(cp.commit(consumer)) == {V0: 10}  # only the partition that moved
    assert consumer.commits == [{V0: 7, L0: 5}, {V0: 10}]


def test_reset_forgets_positions_and_commits() -> None:
    cp = Checkpoint(ReorderBuffer(min_hold_s=0.0), NAMES)
    consumer = Recorder()
    cp.fetched(V0, 3)
    asyncio.run(cp.commit(consumer))
    cp.reset()
    assert cp.position(V0) is None
    assert cp.offsets() == {}
    assert not cp.pending()
    cp.fetched(V0, 3)  # the same offset after a reassignment is committed again
    assert asyncio.run(cp.commit(consumer)) == {V0: 3}
