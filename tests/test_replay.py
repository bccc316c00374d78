"""vigil.replay: per-stay events, the time-ordered merge of many stays, and publishing to the broker."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from vigil.config import Settings, load_settings
from vigil.physionet import Stay, iter_stays
from vigil.privacy import pseudonymise
from vigil.records import AdtEvent, Invalid, Observation, Watermark, decode
from vigil.replay import (
    DEFAULT_BASE,
    DEFAULT_STAGGER,
    REPLAY_SOURCE,
    BedAllocator,
    merged_events,
    replay,
    replay_codes,
    replay_sync,
    stay_events,
)
from vigil.variables import CANONICAL_UNITS, LABS, STATIC_INDEX, VARIABLES, VITALS

ANCHOR = datetime(2026, 2, 1, 6, tzinfo=UTC)
HOUR = 3600.0
KEY = "test-key"
BRIEF_LOINC = {
    "HR": "8867-4", "O2Sat": "2708-6", "Temp": "8310-5", "SBP": "8480-6", "DBP": "8462-4", "MAP": "8478-0",
    "Resp": "9279-1", "EtCO2": "19889-5", "FiO2": "3150-0", "Lactate": "2524-7", "Platelets": "777-3",
}  # fmt: skip


@pytest.fixture(scope="module")
def stays(sample_path: Path) -> list[Stay]:
    return list(iter_stays(sample_path, limit=12))


def _events(stay: Stay, anchor: datetime = ANCHOR) -> tuple[str, list[tuple[str, float, bytes]]]:
    patient = pseudonymise(stay.stay_id, KEY)
    return patient, stay_events(stay, patient=patient, anchor=anchor, source=REPLAY_SOURCE, ward="ICU-MED",
                                bed="ICU-MED-01")  # fmt: skip


def _synthetic(unit1: float, unit2: float, gender: float, iculos: list[int]) -> Stay:
    n = len(iculos)
    values = np.full((n, len(VARIABLES)), np.nan, np.float32)
    values[:, 0] = 90.0
    static = np.zeros((n, 6), np.float32)
    static[:, STATIC_INDEX["Age"]] = 71.5
    static[:, STATIC_INDEX["Gender"]] = gender
    static[:, STATIC_INDEX["Unit1"]] = unit1
    static[:, STATIC_INDEX["Unit2"]] = unit2
    static[:, STATIC_INDEX["HospAdmTime"]] = -12.25
    static[:, STATIC_INDEX["ICULOS"]] = iculos
    return Stay("p123456", values, static, np.zeros(n, np.int8))


def test_codes_table() -> None:
    codes = replay_codes()
    assert set(codes) == set(VARIABLES)
    for var, (system, code, unit) in codes.items():
        assert "loinc" in system.lower() and code and unit == CANONICAL_UNITS[var]
    for var, code in BRIEF_LOINC.items():
        assert codes[var][1] == code


def test_stay_events_structure(stays: list[Stay]) -> None:
    for stay in stays:
        patient, events = _events(stay)
        cells = int(np.count_nonzero(~np.isnan(stay.values)))
        assert len(events) == cells + 2
        times = [t for _, t, _ in events]
        assert times == sorted(times)
        first, last = int(stay.iculos[0]), int(stay.iculos[-1])
        assert events[0][0] == "adt" and events[0][1] == ANCHOR.timestamp() + first * HOUR
        assert events[-1][0] == "adt" and events[-1][1] == ANCHOR.timestamp() + (last + 1) * HOUR
        assert all(s != "adt" for s, _, _ in events[1:-1])
        n_vitals = int(np.count_nonzero(~np.isnan(stay.values[:, : len(VITALS)])))
        assert sum(s == "vitals" for s, _, _ in events) == n_vitals
        assert sum(s == "labs" for s, _, _ in events) == cells - n_vitals
        # every observation time is anchor + ICULOS of a row that has values
        hours = {round((t - ANCHOR.timestamp()) / HOUR, 9) for s, t, _ in events[1:-1]}
        has_value = ~np.isnan(stay.values).all(axis=1)
        assert hours == {float(k) for k in stay.iculos[has_value]}


def test_events_decode_to_the_psv_values(sample_path: Path) -> None:
    """Every event of the whole sample decodes to the psv value — except the few the edge rejects as
    implausible (the data's own oddities, e.g. FiO2 0 or 0.2): the replay sends those as recorded."""
    rejected = total = 0
    for stay in iter_stays(sample_path):
        patient, events = _events(stay)
        src = f"{REPLAY_SOURCE}/{patient}"
        rows, cols = np.nonzero(~np.isnan(stay.values))
        last = len(events) - 1
        total += len(events)
        for i, (stream, t, value) in enumerate(events):
            d = decode(value, stream, patient.encode())
            if isinstance(d, Invalid):
                r, c = rows[i - 1], cols[i - 1]
                assert d.reason == "implausible_value" and 0 < i < last, d
                assert d.detail.startswith(f"{VARIABLES[c]} {float(stay.values[r, c]):g} outside"), d
                rejected += 1
                continue
            assert (d.seq, d.patient, d.source) == (i, patient, src)
            assert d.time == pytest.approx(t)
            if i in (0, last):
                assert isinstance(d, AdtEvent) and d.kind == ("admit" if i == 0 else "discharge")
                assert (d.ward, d.bed) == ("ICU-MED", "ICU-MED-01")
                if i == 0:
                    assert d.admit_time == pytest.approx(ANCHOR.timestamp())
                continue
            r, c = rows[i - 1], cols[i - 1]
            assert isinstance(d, Observation)
            assert d.var == c and VARIABLES[d.var] in (VITALS if stream == "vitals" else LABS)
            assert d.kind == ("vital" if stream == "vitals" else "lab")
            assert t == ANCHOR.timestamp() + stay.iculos[r] * HOUR
            assert np.float32(d.value) == stay.values[r, c]  # the same float32 as the psv text
    assert total == 54_513 and rejected <= 10  # 8 in the sample (set A: 332 of 5,577,521)


def test_unit_sex_and_static_mapping() -> None:
    cases = [((1, 0, 1), "MICU", "M"), ((0, 1, 0), "SICU", "F"), ((np.nan, np.nan, 0), None, "F")]
    for (u1, u2, g), unit, sex in cases:
        stay = _synthetic(u1, u2, g, [3, 4, 5])
        patient, events = _events(stay)
        admit = decode(events[0][2], "adt", patient.encode())
        assert isinstance(admit, AdtEvent)
        assert admit.unit == unit and admit.sex == sex
        assert admit.age == pytest.approx(71.5) and admit.hosp_adm_time_h == pytest.approx(-12.25)
        assert admit.time == pytest.approx(ANCHOR.timestamp() + 3 * HOUR)
        assert events[-1][1] == ANCHOR.timestamp() + 6 * HOUR
        assert len(events) == 3 + 2


def test_held_events_are_compact(stays: list[Stay]) -> None:
    """A replay holds ~10^5 encoded events at once: each must cost its size, not orjson's 4 KB buffer."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [_events(s)[1] for s in stays]
        per_event = (tracemalloc.get_traced_memory()[0] - before) / sum(len(e) for e in held)
    finally:
        tracemalloc.stop()
    assert per_event < 1000, per_event


def test_iculos_must_increase() -> None:
    with pytest.raises(ValueError, match="ICULOS must be"):
        _events(_synthetic(1, 0, 1, [3, 5, 4]))


def test_no_raw_stay_id_anywhere(stays: list[Stay]) -> None:
    ids = {s.stay_id for s in stays}
    for _stream, _t, key, value in merged_events(stays, KEY):
        for sid in ids:
            assert sid.encode() not in value and sid.encode() not in key
            assert sid[1:].encode() not in key  # not even the number
        assert key.startswith(b"pt-")


def test_merge_orders_and_staggers(stays: list[Stay]) -> None:
    merged = list(merged_events(stays, KEY))
    per_stay = {pseudonymise(s.stay_id, KEY): _events(s)[1] for s in stays}
    assert len(merged) == sum(len(e) for e in per_stay.values())
    times = [t for _, t, _, _ in merged]
    assert times == sorted(times)
    # each stay's events keep their own order; stay i is anchored at base + i * stagger
    for i, stay in enumerate(stays):
        patient = pseudonymise(stay.stay_id, KEY)
        mine = [(s, t) for s, t, k, _ in merged if k == patient.encode()]
        anchor = DEFAULT_BASE + i * DEFAULT_STAGGER
        assert mine[0] == ("adt", anchor.timestamp() + int(stay.iculos[0]) * HOUR)
        assert [s for s, _ in mine] == [s for s, _, _ in per_stay[patient]]
        assert [t - anchor.timestamp() for _, t in mine] == [
            t - ANCHOR.timestamp() for _, t, _ in per_stay[patient]
        ]


def test_beds_never_shared() -> None:
    beds = BedAllocator()
    stays = [(0.0, 10.0), (1.0, 5.0), (5.0, 7.0), (6.0, 20.0), (10.0, 11.0)]
    got = [beds.assign("W", a, d) for a, d in stays]
    assert got == ["W-01", "W-02", "W-02", "W-03", "W-01"]
    busy: dict[str, list[tuple[float, float]]] = {}
    for (a, d), bed in zip(stays, got, strict=True):
        assert all(d0 <= a or d <= a0 for a0, d0 in busy.get(bed, []))
        busy.setdefault(bed, []).append((a, d))


def test_merge_reads_stays_lazily(stays: list[Stay]) -> None:
    read: list[str] = []

    def gen():  # type: ignore[no-untyped-def]
        for s in stays:
            read.append(s.stay_id)
            yield s

    it = merged_events(gen(), KEY, stagger=timedelta(hours=6))
    next(it)
    assert len(read) < len(stays)  # stays anchored after the first event are not read yet
    rest = list(it)
    assert len(read) == len(stays) and len(rest) + 1 == sum(len(_events(s)[1]) for s in stays)


# ------------------------------------------------------------------------------------------- broker


def _settings(bootstrap: str) -> Settings:
    return load_settings(topic_prefix=f"r{uuid.uuid4().hex[:10]}-", kafka={"bootstrap_servers": bootstrap})


async def _create_topics(s: Settings, partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**s.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(s.topic(t), num_partitions=partitions, replication_factor=1)
                for t in ("adt", "vitals", "labs")
            ]
        )
    finally:
        await admin.close()


async def _consume(s: Settings, expected: int, timeout_s: float = 30.0) -> list[object]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **s.kafka.client_kwargs()
    )
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic(t), p) for t in ("adt", "vitals", "labs")
               for p in consumer.partitions_for_topic(s.topic(t)) or {0}]  # fmt: skip
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[object] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(recs)
        # nothing more arrives
        for recs in (await consumer.getmany(timeout_ms=500)).values():
            out.extend(recs)
        return out
    finally:
        await consumer.stop()


@pytest.mark.broker
def test_replay_into_broker(broker: str, sample_path: Path) -> None:
    s = _settings(broker)
    asyncio.run(_create_topics(s))
    first5 = list(iter_stays(sample_path, limit=5))
    expected = sum(int(np.count_nonzero(~np.isnan(st.values))) + 2 for st in first5)
    seen: list[int] = []
    stats = asyncio.run(replay(s, sample_path, limit=5, progress=lambda st: seen.append(st.events)))
    assert stats.stays == 5 and stats.events == expected and seen[-1] == expected
    assert stats.by_stream["adt"] == 10 and sum(stats.by_stream.values()) == expected
    n_parts = 3 * 3  # adt, vitals, labs x 3 partitions: every watermark goes to each
    assert stats.watermarks > 0 and stats.watermarks % n_parts == 0
    recs = asyncio.run(_consume(s, expected + stats.watermarks))
    assert len(recs) == expected + stats.watermarks
    # the producer's watermarks: first and last record of every partition (the last one final), and every data
    # record at or after the watermark before it in its partition (the promise the worker orders on)
    by_tp: dict[tuple[str, int], list[object]] = {}
    for r in sorted(recs, key=lambda r: r.offset):  # type: ignore[attr-defined]
        by_tp.setdefault((r.topic, r.partition), []).append(r)  # type: ignore[attr-defined]
    assert len(by_tp) == n_parts
    data = []
    for (topic, _), rs in by_tp.items():
        stream = topic.removeprefix(s.topic_prefix)
        evs = [decode(r.value, stream, r.key) for r in rs]  # type: ignore[attr-defined]
        assert type(evs[0]) is Watermark and not evs[0].final
        assert type(evs[-1]) is Watermark and evs[-1].final
        assert len({e.source for e in evs if type(e) is Watermark}) == 1
        mark = evs[0].time
        for r, e in zip(rs, evs, strict=True):
            if type(e) is Watermark:
                assert e.time >= mark and r.key is None  # type: ignore[attr-defined]
                mark = e.time
            else:
                assert e.time >= mark  # type: ignore[union-attr]
                data.append(r)
    assert len(data) == expected
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    partitioner = DefaultPartitioner()
    for r in data:
        # the partition send() would have picked for the key (batches are built by hand)
        assert r.partition == partitioner(r.key, [0, 1, 2], [0, 1, 2])  # type: ignore[attr-defined]
        stream = r.topic.removeprefix(s.topic_prefix)  # type: ignore[attr-defined]
        ev = decode(r.value, stream, r.key)  # type: ignore[attr-defined]
        assert not isinstance(ev, Invalid)
        # the broker timestamp is the send (ingest) time, which end-to-end latency is measured from
        assert abs(r.timestamp / 1000 - time.time()) < 120  # type: ignore[attr-defined]
        by_key.setdefault(r.key, []).append((r.timestamp, ev.seq))  # type: ignore[attr-defined, union-attr]
    assert sorted(by_key) == sorted(pseudonymise(st.stay_id, s.pseudonym_key.get_secret_value()).encode()
                                    for st in first5)  # fmt: skip
    for items in by_key.values():
        assert sorted(seq for _, seq in items) == list(range(len(items)))


@pytest.mark.broker
def test_replay_paced(broker: str, sample_path: Path) -> None:
    s = _settings(broker)
    asyncio.run(_create_topics(s, partitions=1))
    (stay,) = iter_stays(sample_path, limit=1)
    span_h = int(stay.iculos[-1]) + 1 - int(stay.iculos[0])
    speed = span_h * HOUR / 1.0  # the whole stay in about one wall second
    t0 = time.perf_counter()
    stats = replay_sync(s, sample_path, limit=1, speed=speed)
    assert time.perf_counter() - t0 >= 0.9
    assert stats.events == int(np.count_nonzero(~np.isnan(stay.values))) + 2
    assert stats.last_event_time - stats.first_event_time == span_h * HOUR  # type: ignore[operator]
