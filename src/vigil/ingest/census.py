"""The bed census of an HL7 listener: who occupied which bed when, from ADT events (bed association).

Many monitor gateways send ORU^R01 with PID-3 empty and the bed in PV1-3. Such an observation belongs to the
patient who occupied that bed **at the observation time**. :class:`BedCensus` keeps, per bed, the ADT
movements in and out of it (time-ordered; an ADT that arrives late is inserted where it belongs), fed by

* the ADT messages the listener accepts itself (applied once the broker acknowledged them), and
* every record of the ``adt`` topic (:class:`AdtTopicFeed`, an aiokafka consumer without a group that reads
  all partitions from ``ingest.census_lookback_s`` back), so ADT from other feeds counts too.

A bed is ``(ward, room, bed)``; a monitor that sends no room matches a bed of that ward whatever its room,
when exactly one such bed is known. The same event seen twice (own + topic) is applied once.

Patients are pseudonyms only (the ``adt`` topic carries nothing else), so the census holds no identifier.

>>> from vigil.records import AdtEvent
>>> def adt(p, kind, t, ward=None, bed=None, room=None):
...     return AdtEvent(p, "adt", 0, t, kind, ward, bed, None, None, None, None, None), room
>>> c = BedCensus()
>>> c.apply(*adt("pt-a", "admit", 100.0, "ICU", "4"))
True
>>> c.occupant("ICU", "", "4", 150.0), c.occupant("ICU", "", "4", 50.0)
('pt-a', None)
>>> c.apply(*adt("pt-a", "transfer", 200.0, "WARD2", "1")); c.apply(*adt("pt-b", "admit", 300.0, "ICU", "4"))
True
True
>>> [c.occupant("ICU", "", "4", t) for t in (150.0, 250.0, 350.0)]
['pt-a', None, 'pt-b']
>>> c.apply(*adt("pt-b", "discharge", 400.0)); c.occupant("ICU", "", "4", 450.0) is None
True
True
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from vigil import kafka_io, records
from vigil.config import Settings
from vigil.records import AdtEvent

__all__ = ["BedCensus", "AdtTopicFeed", "Bed", "adt_room"]

log = logging.getLogger(__name__)
Bed = tuple[str, str, str]  # (ward, room, bed); room "" when unknown
_MAX_MOVES_PER_BED = 256
_KIND_RANK = {"admit": 0, "transfer": 1, "discharge": 2}


def adt_room(raw: bytes) -> str | None:
    """The optional ``room`` of an ``adt`` record (AdtEvent does not carry it)."""
    import orjson

    try:
        room = orjson.loads(raw).get("room")
    except Exception:  # noqa: BLE001 - the decoder already validated the record; room is optional
        return None
    return room if isinstance(room, str) and room else None


@dataclass(order=True, slots=True)
class _Move:
    time: float
    rank: int
    seq: int
    patient: str = field(compare=False)
    occupied: bool = field(compare=False)  # True: the patient is in the bed from `time`; False: left it


class BedCensus:
    """Per bed, the time-ordered moves in and out; per patient, the bed they were last placed in."""

    def __init__(self, keep_s: float = 30 * 86400.0) -> None:
        self.keep_s = keep_s
        self._moves: dict[Bed, list[_Move]] = {}
        self._where: dict[str, tuple[float, Bed | None]] = {}  # patient -> (time, bed) of their latest ADT
        self._seen: set[tuple[str, str, int, str]] = set()  # (source, patient, seq, kind): applied once
        self.applied = 0

    def __len__(self) -> int:
        return len(self._moves)

    def apply(self, ev: AdtEvent, room: str | None = None) -> bool:
        """Apply one ADT event; False when it was already applied (the same (source, patient, seq, kind))."""
        ident = (ev.source, ev.patient, ev.seq, ev.kind)
        if ident in self._seen:
            return False
        self._seen.add(ident)
        if len(self._seen) > 200_000:
            self._seen.clear()
        self.applied += 1
        rank = _KIND_RANK.get(ev.kind, 1)
        prev_t, prev_bed = self._where.get(ev.patient, (-float("inf"), None))
        newest = ev.time >= prev_t
        target: Bed | None = None
        if ev.kind != "discharge" and ev.ward and ev.bed:
            target = (ev.ward, room or "", ev.bed)
        if ev.kind == "discharge" and ev.ward and ev.bed and prev_bed is None:
            prev_bed = (ev.ward, room or "", ev.bed)  # a discharge from a bed we had not seen the patient enter
        if newest:
            moved = target is not None or ev.kind == "discharge"  # an A08 without PV1-3 moves nobody
            if moved and prev_bed is not None and prev_bed != target:
                self._add(prev_bed, _Move(ev.time, rank, ev.seq, ev.patient, False))
            if target is not None:
                self._add(target, _Move(ev.time, rank, ev.seq, ev.patient, True))
            if moved:
                self._where[ev.patient] = (ev.time, target)
        elif target is not None:  # an older placement arriving late: it holds until the patient's next move
            self._add(target, _Move(ev.time, rank, ev.seq, ev.patient, True))
            self._add(target, _Move(prev_t, -1, ev.seq, ev.patient, False))
        return True

    def _add(self, bed: Bed, move: _Move) -> None:
        moves = self._moves.setdefault(bed, [])
        bisect.insort(moves, move)
        horizon = moves[-1].time - self.keep_s
        while len(moves) > _MAX_MOVES_PER_BED or (len(moves) > 1 and moves[1].time < horizon):
            moves.pop(0)

    def _at(self, bed: Bed, t: float) -> str | None:
        occupant: str | None = None
        for m in self._moves.get(bed, ()):
            if m.time > t:
                break
            if m.occupied:
                occupant = m.patient
            elif occupant == m.patient:
                occupant = None
        return occupant

    def occupant(self, ward: str, room: str, bed: str, t: float) -> str | None:
        """The patient (pseudonym) in ``bed`` of ``ward`` at time ``t``, or None (unknown or empty bed)."""
        if room:
            exact = self._at((ward, room, bed), t)
            return exact if exact is not None else self._at((ward, "", bed), t)
        found = {p for (w, _r, b) in self._moves if w == ward and b == bed
                 for p in [self._at((w, _r, b), t)] if p is not None}  # fmt: skip
        return found.pop() if len(found) == 1 else None

    def knows(self, ward: str, bed: str) -> bool:
        """Whether any ADT ever placed someone in ``bed`` of ``ward`` (to tell an unknown from an empty bed)."""
        return any(w == ward and b == bed for (w, _r, b) in self._moves)


class AdtTopicFeed:
    """Keeps a :class:`BedCensus` up to date from the ``adt`` topic (all partitions, no consumer group)."""

    def __init__(self, settings: Settings, census: BedCensus) -> None:
        self.settings = settings
        self.census = census
        self.topic = settings.topic("adt")
        self.invalid = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()

    async def start(self) -> AdtTopicFeed:
        cfg = self.settings.ingest
        self._consumer = kafka_io.consumer(self.settings)
        await self._consumer.start()
        parts = self._consumer.partitions_for_topic(self.topic)
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            await kafka_io.refresh_metadata(self._consumer)
            parts = self._consumer.partitions_for_topic(self.topic)
            if not parts:
                await asyncio.sleep(0.2)
        if not parts:
            log.warning("bed census: topic %s not found; only this listener's own ADT is counted", self.topic)
            self.caught_up.set()
            return self
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        since_ms = int((time.time() - cfg.census_lookback_s) * 1000)
        try:
            found = await self._consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        except Exception:  # noqa: BLE001 - a broker without timestamp lookup: read the whole topic
            found = {}
        for tp in tps:
            off = found.get(tp)
            if off is not None:
                self._consumer.seek(tp, off.offset)
            else:
                await self._consumer.seek_to_beginning(tp)
        ends = await self._consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(ends))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), cfg.census_catchup_s)
        if not self.caught_up.is_set():
            log.warning("bed census: the adt topic was not read to its end within %.0f s; continuing",
                        cfg.census_catchup_s)  # fmt: skip
        log.info("bed census: %d ADT events applied from %s, %d beds known", self.census.applied, self.topic,
                 len(self.census))  # fmt: skip
        return self

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following the topic
                log.warning("bed census: fetching %s failed (%s); retrying", self.topic, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for recs in batch.values():
                for r in recs:
                    ev = records.decode(r.value, "adt", r.key)
                    if isinstance(ev, AdtEvent):
                        self.census.apply(ev, adt_room(r.value))
                    elif not isinstance(ev, records.Watermark):  # a producer's watermark is not an event
                        self.invalid += 1
            if not self.caught_up.is_set() and await self._reached(ends):
                self.caught_up.set()

    async def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
