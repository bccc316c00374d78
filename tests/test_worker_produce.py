"""Batch production (vigil.worker.produce.BatchSender) against the embedded broker: every keyed record lands on
the partition the Java/aiokafka murmur2 partitioner gives its key (also when the key's partition is cached from an
earlier batch), an explicit partition wins, and per-partition order is the order given."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import TopicPartition

from vigil import kafka_io
from vigil.config import Settings
from vigil.worker.intake import partition_for
from vigil.worker.produce import BatchSender


async def _send_and_read(s: Settings, batches: list[list[tuple[str, bytes | None, bytes, int | None]]]
                         ) -> dict[int, list[tuple[bytes | None, bytes]]]:  # fmt: skip
    producer = kafka_io.producer(s)
    await producer.start()
    try:
        sender = BatchSender(producer)
        for recs in batches:  # the second batch hits the partition cache filled by the first
            futs = await sender.send(recs)
            await asyncio.gather(*futs)
    finally:
        await producer.stop()
    topic = s.topic("scores")
    c = kafka_io.consumer(s)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or await _parts(c, topic))]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: dict[int, list[tuple[bytes | None, bytes]]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + 30  # bounded: a shortfall fails the count assertions below
        while any([await c.position(tp) < ends[tp] for tp in tps]) and time.monotonic() < deadline:
            got = await c.getmany(timeout_ms=500)
            for tp, rs in got.items():
                out[tp.partition] += [(r.key, r.value) for r in rs]
        return out
    finally:
        await c.stop()


async def _parts(c: object, topic: str) -> set[int]:
    await c.topics()  # type: ignore[attr-defined]
    return c.partitions_for_topic(topic) or set()  # type: ignore[attr-defined]


def test_keyed_records_land_on_their_murmur2_partition_in_order(
    settings_factory: Callable[..., Settings], topics_factory: Callable[..., list[str]]
) -> None:
    s = settings_factory()
    topics_factory(s, 4)
    topic = s.topic("scores")
    keys = [f"pt-{i:04d}".encode() for i in range(40)]
    first = [(topic, k, b"a-%d" % i, None) for i, k in enumerate(keys)]
    second = [(topic, k, b"b-%d" % i, None) for i, k in enumerate(keys)] + [(topic, b"pt-explicit", b"x", 2)]
    got = asyncio.run(_send_and_read(s, [first, second]))
    n = len(got)
    assert n == 4
    for p, recs in got.items():
        for key, _ in recs:
            if key != b"pt-explicit":
                assert partition_for(key, n) == p  # type: ignore[arg-type]
    assert (b"pt-explicit", b"x") in got[2]
    for i, k in enumerate(keys):  # each key: its first-batch record before its second-batch record, same partition
        recs = got[partition_for(k, n)]
        assert recs.index((k, b"a-%d" % i)) < recs.index((k, b"b-%d" % i))
    assert sum(len(r) for r in got.values()) == 81
