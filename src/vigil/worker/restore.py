"""State restore: per-patient state of the assigned partitions, read back from the changelog.

The changelog (``worker-state-changelog``, compacted) holds the latest :class:`~vigil.state.PatientState`
of every patient, keyed by pseudonym, on the same partition number as the patient's input events; a
tombstone (null value) deletes a patient. :class:`ChangelogRestore` reads the given partitions from the
beginning to their end offsets as of the start of the restore, with a group-less consumer.
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition

from vigil import kafka_io
from vigil.config import Settings
from vigil.metrics import WorkerMetrics
from vigil.state import PatientState

__all__ = ["CHANGELOG", "ChangelogRestore"]

log = logging.getLogger(__name__)

CHANGELOG = "worker-state-changelog"


class ChangelogRestore:
    """Restores the patient states of changelog partitions (counted in ``vigil_state_restored_total``)."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, topic: str = CHANGELOG) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topic = settings.topic(topic)

    async def restore(self, parts: list[int]) -> dict[int, dict[str, PatientState]]:
        """Read changelog partitions ``parts`` from the beginning to their end offsets."""
        topic = self.topic
        tps = [TopicPartition(topic, p) for p in parts]
        consumer = kafka_io.consumer(self.settings)  # no group, no auto-commit, from the earliest offset
        await consumer.start()
        out: dict[int, dict[str, PatientState]] = {p: {} for p in parts}
        n = 0
        try:
            known = await consumer.topics()
            if topic not in known:
                return out
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
                for tp, records in batch.items():
                    part = out[tp.partition]
                    for r in records:
                        key = r.key.decode() if r.key else ""
                        if r.value is None:
                            part.pop(key, None)
                        else:
                            part[key] = PatientState.from_bytes(r.value)
                            n += 1
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        self.metrics.restored.inc(sum(len(v) for v in out.values()))
        log.info("restored %d patient states from %d changelog records", sum(len(v) for v in out.values()), n)
        return out
