"""The bedside-feed simulator: replay PhysioNet stays as ADT, vitals and labs events on Kafka.

Each stay becomes an ADT admit, one observation per measured (non-NaN) cell and an ADT discharge
(:func:`stay_events`). Stays start staggered (stay ``i`` is anchored — its ICU admission, ICULOS 0 — at
``base + i * stagger``), so hundreds are in the ICU at once, like a real hospital; :func:`replay` merges
all their events in event-time order and publishes them with one producer.

Identifiers: the stay id (``p000123``) is an identifier and never leaves the process. The patient key is
``pseudonymise(stay_id, settings.pseudonym_key)``; the record ``source`` is
``"physionet-replay/" + pseudonym`` and ``seq`` is the event's index within the stay (0 = admit), so
``(source, seq)`` is unique across the whole replay and stable whatever ``limit`` or order is used.

Times: row ICULOS ``k`` is observed at ``anchor + k`` hours; the admit is at ``anchor + ICULOS_first`` hours
(published just before that row's events) with ``admit_time = anchor``; the discharge at
``anchor + (ICULOS_last + 1)`` hours, which closes the last row.

Codes: each variable is sent under the first LOINC code :mod:`vigil.data` ``codes.csv`` lists for it, with
the canonical UCUM unit (:data:`vigil.variables.CANONICAL_UNITS`) — see :func:`replay_codes`.

>>> replay_codes()["HR"]
('LOINC', '8867-4', '/min')
>>> ward_for("MICU"), ward_for(None)
('ICU-MED', 'ICU-GEN')
"""

from __future__ import annotations

import asyncio
import csv
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil import records
from vigil.physionet import Stay, iter_stays
from vigil.privacy import pseudonymise
from vigil.variables import CANONICAL_UNITS, STATIC_INDEX, VARIABLES, VITALS

if TYPE_CHECKING:
    from vigil.config import Settings

__all__ = [
    "REPLAY_SOURCE",
    "DEFAULT_BASE",
    "DEFAULT_STAGGER",
    "WARDS",
    "ReplayStats",
    "BedAllocator",
    "replay_codes",
    "ward_for",
    "unit_for",
    "stay_events",
    "merged_events",
    "replay",
    "replay_sync",
]

log = logging.getLogger(__name__)

REPLAY_SOURCE = "physionet-replay"
DEFAULT_BASE = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_STAGGER = timedelta(minutes=5)
WARDS: dict[str | None, str] = {"MICU": "ICU-MED", "SICU": "ICU-SURG", None: "ICU-GEN"}
HOUR = 3600.0
LOINC = "LOINC"  # the system name codes.csv uses
_CHUNK = 20_000  # records acknowledged together (and progress reported)
_BATCH_WINDOW = 2_000  # as fast as possible: open batches are shipped at least every this many records
_CODES_CSV = Path(__file__).parent / "data" / "codes.csv"

# Used only when codes.csv is missing: the LOINC code of each canonical variable.
_FALLBACK_LOINC: dict[str, str] = {
    "HR": "8867-4", "O2Sat": "2708-6", "Temp": "8310-5", "SBP": "8480-6", "MAP": "8478-0",
    "DBP": "8462-4", "Resp": "9279-1", "EtCO2": "19889-5", "BaseExcess": "1925-7", "HCO3": "1959-6",
    "FiO2": "3150-0", "pH": "2744-1", "PaCO2": "2019-8", "SaO2": "20564-1", "AST": "1920-8",
    "BUN": "3094-0", "Alkalinephos": "6768-6", "Calcium": "17861-6", "Chloride": "2075-0",
    "Creatinine": "2160-0", "Bilirubin_direct": "1968-7", "Glucose": "2345-7", "Lactate": "2524-7",
    "Magnesium": "19123-9", "Phosphate": "2777-1", "Potassium": "2823-3", "Bilirubin_total": "1975-2",
    "TroponinI": "10839-9", "Hct": "4544-3", "Hgb": "718-7", "PTT": "3173-2", "WBC": "6690-2",
    "Fibrinogen": "3255-7", "Platelets": "777-3",
}  # fmt: skip


@cache
def replay_codes(path: Path | None = None) -> dict[str, tuple[str, str, str]]:
    """The one table of what the replay sends: variable -> (system, code, unit).

    The first LOINC row of ``codes.csv`` for each variable, with the variable's canonical unit; the
    built-in LOINC list when ``codes.csv`` is missing. Cached: build it once, treat it as read-only.
    """
    path = path or _CODES_CSV
    codes: dict[str, tuple[str, str, str]] = {}
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                var, system = (row.get("variable") or "").strip(), (row.get("system") or "").strip()
                if var in CANONICAL_UNITS and var not in codes and "loinc" in system.lower():
                    codes[var] = (system, row["code"].strip(), CANONICAL_UNITS[var])
    else:
        log.warning("%s missing: replaying with the built-in LOINC codes", path)
    for var in VARIABLES:
        if var not in codes:
            if path.exists():
                log.warning("codes.csv has no LOINC code for %s: using the built-in one", var)
            codes[var] = (LOINC, _FALLBACK_LOINC[var], CANONICAL_UNITS[var])
    return codes


def unit_for(static_row: np.ndarray) -> str | None:
    """ICU unit from a STATIC row: ``"MICU"`` if Unit1 == 1, ``"SICU"`` if Unit2 == 1, else None."""
    if static_row[STATIC_INDEX["Unit1"]] == 1:
        return "MICU"
    if static_row[STATIC_INDEX["Unit2"]] == 1:
        return "SICU"
    return None


def ward_for(unit: str | None) -> str:
    """The simulated ward of an ICU unit (MICU -> ICU-MED, SICU -> ICU-SURG, unknown -> ICU-GEN)."""
    return WARDS.get(unit, WARDS[None])


class BedAllocator:
    """Beds per ward: each admit gets the lowest-numbered bed free at its admit time (never two patients
    in one bed at once). Beds are named ``{ward}-{n:02d}`` from 1.

    >>> beds = BedAllocator()
    >>> [beds.assign("ICU-MED", admit, discharge) for admit, discharge in [(0, 10), (5, 20), (10, 12)]]
    ['ICU-MED-01', 'ICU-MED-02', 'ICU-MED-01']
    """

    def __init__(self) -> None:
        self._free_from: dict[str, list[float]] = {}  # ward -> per bed, when it is free again

    def assign(self, ward: str, admit: float, discharge: float) -> str:
        beds = self._free_from.setdefault(ward, [])
        for i, free_from in enumerate(beds):
            if free_from <= admit:
                beds[i] = discharge
                return f"{ward}-{i + 1:02d}"
        beds.append(discharge)
        return f"{ward}-{len(beds):02d}"


def _as_floats(values: np.ndarray) -> list[float]:
    """float32 values as the Python floats of their shortest decimal form (75.33, not 75.33000183)."""
    return [float(s) for s in values.astype(str)]


def _compact(raw: bytes) -> bytes:
    """An exact-size copy: orjson 3.13's ``dumps`` result pins a ~4 KB allocation however short it is,
    which adds up to GBs over the ~10^5 events a replay holds at once."""
    return bytes(memoryview(raw))


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def stay_events(
    stay: Stay, *, patient: str, anchor: datetime, source: str = REPLAY_SOURCE, ward: str, bed: str
) -> list[tuple[str, float, bytes]]:
    """The events of one stay in publish order: ``(stream, event time POSIX s, record bytes)``.

    ``patient`` is the pseudonym (the key); the record source is ``f"{source}/{patient}"``, seq the index.
    """
    codes = replay_codes()
    iculos = stay.iculos
    if iculos[0] < 0 or (np.diff(iculos) <= 0).any():
        msg = f"ICULOS must be >= 0 and increasing (stay of patient {patient})"
        raise ValueError(msg)
    rows, cols = np.nonzero(~np.isnan(stay.values))
    values = _as_floats(stay.values[rows, cols])
    src = f"{source}/{patient}"
    static0 = stay.static[0]
    first, last = int(iculos[0]), int(iculos[-1])
    out: list[tuple[str, float, bytes]] = []

    admit_at = anchor + timedelta(hours=first)
    gender = static0[STATIC_INDEX["Gender"]]
    out.append(("adt", admit_at.timestamp(), _compact(records.encode_adt(
        patient=patient, source=src, seq=0, time=admit_at, kind="admit", ward=ward, bed=bed,
        unit=unit_for(static0), admit_time=anchor, age=_opt(static0[STATIC_INDEX["Age"]]),
        sex=None if np.isnan(gender) else ("M" if gender == 1 else "F"),
        hosp_adm_time_h=_opt(static0[STATIC_INDEX["HospAdmTime"]]),
    ))))  # fmt: skip

    vitals = set(VITALS)
    streams = ["vitals" if v in vitals else "labs" for v in VARIABLES]
    row_time: dict[int, tuple[datetime, float]] = {}
    for i, (r, c, value) in enumerate(zip(rows.tolist(), cols.tolist(), values, strict=True), start=1):
        when = row_time.get(r)
        if when is None:
            dt = anchor + timedelta(hours=int(iculos[r]))
            when = row_time[r] = (dt, dt.timestamp())
        var = VARIABLES[c]
        system, code, unit = codes[var]
        value_bytes = records.encode_observation(
            patient=patient, source=src, seq=i, time=when[0], system=system, code=code, value=value, unit=unit
        )
        out.append((streams[c], when[1], _compact(value_bytes)))

    discharge_at = anchor + timedelta(hours=last + 1)
    out.append(("adt", discharge_at.timestamp(), _compact(records.encode_adt(
        patient=patient, source=src, seq=len(out), time=discharge_at, kind="discharge", ward=ward, bed=bed,
    ))))  # fmt: skip
    return out


@dataclass
class ReplayStats:
    """What a replay published."""

    events: int = 0
    stays: int = 0
    by_stream: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_event_time: float | None = None  # POSIX s
    last_event_time: float | None = None
    watermarks: int = 0  # watermark records written (vigil.punctuate)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "stays": self.stays, "by_stream": dict(self.by_stream),
            "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s, 1),
            "first_event_time": self.first_event_time, "last_event_time": self.last_event_time,
            "watermarks": self.watermarks,
        }  # fmt: skip


def merged_events(
    stays: Iterable[Stay],
    pseudonym_key: str,
    *,
    base: datetime = DEFAULT_BASE,
    stagger: timedelta = DEFAULT_STAGGER,
    source: str = REPLAY_SOURCE,
    on_stay: Callable[[], None] | None = None,
) -> Iterator[tuple[str, float, bytes, bytes]]:
    """All stays' events merged in event-time order: ``(stream, time, key, value)``.

    Stays are consumed lazily: stay ``i`` is read only when the merge reaches its anchor (no event of it
    can come earlier), so memory holds the stays in the ICU at that moment. Ties keep stay order, and a
    stay's own events keep their publish order.
    """
    if base.tzinfo is None:
        msg = "base must be timezone-aware"
        raise ValueError(msg)
    beds = BedAllocator()
    it = iter(stays)
    pending: list[tuple[float, int, int]] = []  # (time, stay number, position of the next event)
    active: dict[int, tuple[bytes, list[tuple[str, float, bytes]]]] = {}
    base_s, stagger_s = base.timestamp(), stagger.total_seconds()
    n_read, exhausted = 0, False

    def read_next() -> bool:
        nonlocal n_read
        stay = next(it, None)
        if stay is None:
            return False
        i = n_read
        n_read += 1
        if stay.n_rows == 0:
            return True
        anchor = base + i * stagger
        patient = pseudonymise(stay.stay_id, pseudonym_key)
        iculos = stay.iculos
        ward = ward_for(unit_for(stay.static[0]))
        bed = beds.assign(
            ward, anchor.timestamp() + iculos[0] * HOUR, anchor.timestamp() + (iculos[-1] + 1) * HOUR
        )
        events = stay_events(stay, patient=patient, anchor=anchor, source=source, ward=ward, bed=bed)
        active[i] = (patient.encode(), events)
        heapq.heappush(pending, (events[0][1], i, 0))
        if on_stay:
            on_stay()
        return True

    while True:
        # Read every stay anchored no later than the earliest pending event.
        while not exhausted and (not pending or base_s + n_read * stagger_s <= pending[0][0]):
            exhausted = not read_next()
        if not pending:
            return
        t, i, pos = heapq.heappop(pending)
        key, events = active[i]
        n = len(events)
        while pos < n and events[pos][1] == t:  # every event of this stay at this instant, in order
            stream, _, value = events[pos]
            yield stream, t, key, value
            pos += 1
        if pos < n:
            heapq.heappush(pending, (events[pos][1], i, pos))
        else:
            del active[i]


async def replay(
    settings: Settings,
    path: str | Path,
    *,
    speed: float | None = None,
    limit: int | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    base: datetime = DEFAULT_BASE,
    stagger: timedelta = DEFAULT_STAGGER,
    stays: Iterable[Stay] | None = None,
    watermarks: bool = True,
) -> ReplayStats:
    """Publish the stays under ``path`` (any :func:`vigil.physionet.iter_stays` layout) to Kafka.

    ``speed=None`` publishes as fast as possible; ``speed=3600`` plays one hour of event time per wall
    second. Topics are ``settings.topic("adt" | "vitals" | "labs")``, the key is the patient pseudonym; the
    message timestamp is the send time (when the event entered Kafka: what end-to-end latency is measured
    from), the event time is in the payload. ``progress`` is called with the running stats every 20,000
    events and at the end. ``stays`` replaces reading ``path`` (stays already loaded; ``limit`` applies).
    ``base``/``stagger``: stay ``i`` is admitted to the ICU (ICULOS 0) at ``base + i * stagger``.

    As fast as possible, records are packed into per-partition batches by hand (see ``_Batcher``); paced,
    each goes through ``send()`` when due. Every record is acknowledged (``acks="all"``) before this
    returns, and the producer is flushed and stopped whatever happens. ``watermarks``: the producer's
    event-time progress is written to every input partition (:class:`vigil.punctuate.Punctuator`: first,
    every 50 ms of wall time, and a final one), which lets the worker order without a wall-clock hold.
    """
    from vigil import kafka_io
    from vigil.punctuate import Punctuator

    if speed is not None and speed <= 0:
        msg = f"speed must be > 0 or None, not {speed}"
        raise ValueError(msg)
    stats = ReplayStats()
    topics = {s: settings.topic(s) for s in ("adt", "vitals", "labs")}
    if stays is not None:
        source_stays: Iterable[Stay] = itertools.islice(stays, limit)
    else:
        source_stays = iter_stays(Path(path), limit=limit)

    def count_stay() -> None:
        stats.stays += 1

    events = merged_events(
        source_stays,
        settings.pseudonym_key.get_secret_value(),
        base=base,
        stagger=stagger,
        on_stay=count_stay,
    )
    producer = kafka_io.producer(settings, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    by_stream: dict[str, int] = {}
    futures: list[asyncio.Future[Any]] = []
    try:
        batcher = None if speed is not None else await _Batcher.create(producer, list(topics.values()))
        punct = Punctuator(producer, list(topics.values()), source=f"replay-{uuid.uuid4().hex[:12]}",
                           batcher=batcher) if watermarks else None  # fmt: skip
        if punct is not None:
            await punct.start()
        wall0: float | None = None
        t0 = 0.0
        n = 0
        for stream, t, key, value in events:
            ts_ms = None  # the broker timestamp is the send (ingest) time; event time is in the payload
            if punct is not None and n == 0:
                await punct.emit(t)  # before the first record: its progress starts here
            if batcher is not None:
                await batcher.add(topics[stream], key, value, ts_ms)
            else:
                if wall0 is None:
                    wall0, t0 = loop.time(), t
                delay = wall0 + (t - t0) / speed - loop.time()  # type: ignore[operator]
                if delay > 0:
                    await asyncio.sleep(delay)
                futures.append(await producer.send(topics[stream], value=value, key=key, timestamp_ms=ts_ms))
            if punct is not None and (batcher is None or (n + 1) % _BATCH_WINDOW == 0):
                await punct.maybe(t)  # everything up to t is written; nothing earlier follows (merged order)
            by_stream[stream] = by_stream.get(stream, 0) + 1
            if stats.first_event_time is None:
                stats.first_event_time = t
            stats.last_event_time = t
            n += 1
            if batcher is not None and n % _BATCH_WINDOW == 0:
                await batcher.send_open()
            if n % _CHUNK == 0:
                if punct is not None:
                    futures += punct.futures
                    punct.futures = []
                await _settle(futures, batcher)
                _update(stats, by_stream, started)
                if progress:
                    progress(stats)
        if batcher is not None:
            await batcher.send_open()
        if punct is not None and stats.last_event_time is not None:
            await punct.emit(stats.last_event_time, final=True)
            futures += punct.futures
            stats.watermarks = punct.sent
        await _settle(futures, batcher)
        await producer.flush()
    finally:
        await producer.stop()  # sends what is still buffered, then closes the connections
    _update(stats, by_stream, started)
    if progress:
        progress(stats)
    log.info("replayed %s", stats.as_dict())
    return stats


class _Batcher:
    """Per-partition record batches for the as-fast-as-possible mode: ``send_batch`` skips most of
    ``send()``'s per-record cost (~2.5x the throughput). Records go to the partition the producer's default
    partitioner would pick for the key (murmur2, like the Java client), so per-patient order holds."""

    def __init__(self, producer: Any, partitions: dict[str, list[int]]) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self._producer = producer
        self._partitions = partitions
        self._partitioner = DefaultPartitioner()
        self._open: dict[tuple[str, int], Any] = {}
        self.futures: list[asyncio.Future[Any]] = []

    @classmethod
    async def create(cls, producer: Any, topics: list[str]) -> _Batcher:
        partitions = {}
        for topic in topics:
            parts = await producer.partitions_for(topic)
            if not parts:
                msg = f"topic {topic!r} has no partitions (does it exist?)"
                raise RuntimeError(msg)
            partitions[topic] = sorted(parts)
        return cls(producer, partitions)

    async def add(self, topic: str, key: bytes, value: bytes, ts_ms: int | None) -> None:
        parts = self._partitions[topic]
        tp = (topic, self._partitioner(key, parts, parts))
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=ts_ms) is None:  # full: ship it, start another
            await self._send(tp, batch)
            batch = self._open[tp] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=ts_ms) is None:
                msg = f"a {len(value)}-byte record does not fit in an empty batch"
                raise ValueError(msg)

    async def send_open(self) -> None:
        """Ship every open batch (bounds how far one topic lags another, e.g. ADT behind vitals)."""
        open_, self._open = self._open, {}
        for tp, batch in open_.items():
            await self._send(tp, batch)

    async def _send(self, tp: tuple[str, int], batch: Any) -> None:
        batch.close()
        self.futures.append(await self._producer.send_batch(batch, tp[0], partition=tp[1]))


async def _settle(futures: list[asyncio.Future[Any]], batcher: _Batcher | None) -> None:
    """Wait for every record sent so far to be acknowledged (raises the first delivery error)."""
    pending = futures + (batcher.futures if batcher is not None else [])
    futures.clear()
    if batcher is not None:
        batcher.futures = []
    await asyncio.gather(*pending)


def _update(stats: ReplayStats, by_stream: dict[str, int], started: float) -> None:
    stats.by_stream = dict(by_stream)
    stats.events = sum(by_stream.values())
    stats.seconds = time.perf_counter() - started


def replay_sync(settings: Settings, path: str | Path, **kwargs: Any) -> ReplayStats:
    """:func:`replay` for synchronous callers (starts its own event loop)."""
    return asyncio.run(replay(settings, path, **kwargs))
