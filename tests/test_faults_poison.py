"""Fault suite (issue 14): poison input, bad clocks, a processing exception, planted identifiers and a foreign
partitioner, each against real ``vigil worker`` processes on the embedded broker. Every test asserts exactly
which rows were scored and exactly what was dead-lettered; a worker that stopped, restarted or lost a patient
fails it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from vigil.config import Settings
from vigil.kafka_io import produce_records, read_topic
from vigil.physionet import iter_stays
from vigil.privacy import pseudonymise
from vigil.records import decode
from vigil.replay import stay_events
from vigil.tools.procs import WorkerProcess
from vigil.worker.batch import InEvent, Processor
from vigil.worker.engine import load_scorers
from vigil.worker.intake import partition_for

pytestmark = pytest.mark.broker
ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)
PARTITIONS = 4
INPUTS = ("vitals", "labs", "adt")
PLANTED = ("MRN-4417-0092", "Jonathan Q. Publicfigure", "+1-555-0100-337")
FAULT_SEQ = 987_654_321

Event = tuple[str, bytes, bytes]  # (stream, key, value)


def stays(sample: Path, n: int, s: Settings) -> dict[bytes, list[Event]]:
    """Per patient key, the events of one sample stay in order (admit first)."""
    out: dict[bytes, list[Event]] = {}
    for i, stay in enumerate(iter_stays(sample, limit=n)):
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        out[patient.encode()] = [
            (stream, patient.encode(), value)
            for stream, _t, value in stay_events(stay, patient=patient, anchor=ANCHOR, source="test-feed",
                                                 ward=f"W{i % 2}", bed=str(i))
        ]  # fmt: skip
    return out


def reference(events: list[Event], s: Settings) -> dict[tuple[str, int], tuple[float, str | None]]:
    """(patient, row) -> (risk, ward) of one uninterrupted in-process pass over ``events`` (valid ones only)."""
    s = s.model_copy(update={"state": s.state.model_copy(update={"discharge_grace_s": 0.0, "admit_grace_s": 60.0})})
    p = Processor(s, load_scorers(s))
    result: dict[tuple[str, int], tuple[float, str | None]] = {}
    for stream, key, value in events:
        out = p.process([InEvent(decode(value, stream, key), stream, 0, 0.0)])  # type: ignore[arg-type]
        for _, v in out.scores:
            rec = orjson.loads(v)
            result[(rec["patient"], rec["row"])] = (rec["risk"], rec["ward"])
    return result


def hr(patient: bytes, seq: int, t: str, value: float = 80.0, **extra: Any) -> bytes:
    return orjson.dumps({"v": 1, "source": "fault-feed", "seq": seq, "patient": patient.decode(), "time": t,
                         "system": "LOINC", "code": "8867-4", "value": value, "unit": "/min", **extra})  # fmt: skip


def admit_time(events: list[Event]) -> datetime:
    first = orjson.loads(events[0][2])
    assert first["kind"] == "admit"
    return datetime.fromisoformat(first.get("admit_time", first["time"]))


async def read_scores(s: Settings, expected: int, timeout_s: float = 90.0) -> list[dict[str, Any]]:
    from vigil.kafka_io import TopicTail

    tail = await TopicTail(s, s.topic("scores")).start()
    try:
        def enough(recs: list[Any]) -> bool:
            return len({orjson.loads(r.value)["score_id"] for r in recs}) >= expected

        try:
            await tail.wait_for(enough, timeout_s)
        except TimeoutError:
            pass  # the caller's exact assertion says what is missing
        await asyncio.sleep(1.5)  # anything beyond the expected rows would show up now
        await tail.poll()
        return [orjson.loads(r.value) for r in tail.records]
    finally:
        await tail.stop()


def assert_scored_exactly(expected: dict[tuple[str, int], tuple[float, str | None]], got: list[dict[str, Any]]) -> None:
    by_row: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in got:
        by_row.setdefault((rec["patient"], rec["row"]), []).append(rec)
    missing, extra = sorted(set(expected) - set(by_row)), sorted(set(by_row) - set(expected))
    assert not missing and not extra, f"{len(missing)} rows never scored {missing[:5]}; {len(extra)} extra {extra[:5]}"
    for k, recs in by_row.items():
        risk, ward = expected[k]
        assert len({r["score_id"] for r in recs}) == 1, f"row {k}: two score streams {recs}"
        for r in recs:
            assert abs(r["risk"] - risk) <= 1e-6 and r["ward"] == ward, (k, r, expected[k])


async def all_records(s: Settings, skip: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Every record of every topic with the test's prefix (except ``skip``, catalogue names)."""
    c = AIOKafkaConsumer(**s.kafka.client_kwargs())
    await c.start()
    try:
        names = sorted(t for t in await c.topics() if t.startswith(s.topic_prefix))
    finally:
        await c.stop()
    names = [t for t in names if t not in {s.topic(x) for x in skip}]
    got = await asyncio.gather(*(read_topic(s, t, quiet_s=1.0) for t in names))
    return dict(zip(names, got, strict=True))


async def uncommitted(s: Settings, records: dict[str, list[Any]], streams: tuple[str, ...] = INPUTS) -> int:
    """Records of ``streams`` (as read: ``records``) beyond the worker group's committed offsets (0: nothing is
    re-delivered to a restart, no offset is stuck)."""
    c = AIOKafkaConsumer(group_id=s.group_id, enable_auto_commit=False, **s.kafka.client_kwargs())
    await c.start()
    try:
        total = 0
        for x in streams:
            for p in range(PARTITIONS):
                offsets = [r.offset for r in records[s.topic(x)] if r.partition == p]
                committed = (await c.committed(TopicPartition(s.topic(x), p))) or 0
                total += sum(1 for o in offsets if o >= committed)
        return total
    finally:
        await c.stop()


def metric(text: str, line_start: str) -> float:
    vals = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start)]
    return sum(vals)


# --------------------------------------------------------------------------------------------------------------
def test_poison_records_bad_clocks_and_a_processing_error_never_stop_scoring(
    settings_factory, topics_factory, sample_path, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """One worker, 6 stays. Into the stream go: an invalid ~800 kB record; a valid event whose processing raises
    (fault injection, test-only setting); heart rates dated 9999-12-31 and 2000-01-01 inside stays; a patient
    whose every event carries an MRN, a name and a phone in extra fields; invalid records carrying them where a
    code, a unit, a time and the patient should be. Every row of every stay is scored exactly as by one clean
    pass; each poison record is dead-lettered once with its reason; the identifiers appear in no output topic and
    not in the worker's log; the worker never stops and no offset stays uncommitted."""
    s = settings_factory()
    topics_factory(s, PARTITIONS)
    per = stays(sample_path, 6, s)
    keys = list(per)
    clean = [e for k in keys for e in per[k]]
    expected = reference(clean, s)
    assert len(expected) > 50
    hours = {k: admit_time(per[k]) for k in keys}

    def at(k: bytes, h: float) -> str:
        return (hours[k] + timedelta(hours=h)).isoformat()

    p0, p1, p2, p3, p4 = keys[:5]
    oversize = orjson.dumps({"v": 1, "patient": p0.decode(), "note": "x" * 800_000, "name": PLANTED[1]})
    fault = hr(p1, FAULT_SEQ, at(p1, 3.5), 81.0)
    future = hr(p2, 900_001, "9999-12-31T23:59:59+00:00", 82.0)
    past = hr(p3, 900_002, "2000-01-01T00:00:00+00:00", 83.0)
    planted_extra = {"name": PLANTED[1], "mrn": PLANTED[0], "phone": PLANTED[2], PLANTED[0]: PLANTED[2]}
    per[p4] = [(st, k, orjson.dumps({**orjson.loads(v), **planted_extra})) for st, k, v in per[p4]]
    bad_planted = [  # (value, reason)
        (orjson.loads(hr(p4, 900_010, at(p4, 1.2))) | {"patient": PLANTED[0]}, "key_mismatch"),  # an MRN as patient
        (orjson.loads(hr(p4, 900_011, at(p4, 1.3))) | {"code": PLANTED[0]}, "unknown_code"),
        (orjson.loads(hr(p4, 900_012, at(p4, 1.4))) | {"unit": PLANTED[1]}, "unknown_unit"),
        (orjson.loads(hr(p4, 900_013, at(p4, 1.5))) | {"time": PLANTED[2]}, "bad_timestamp"),
        (orjson.loads(hr(p4, 900_014, at(p4, 1.6))) | {"value": PLANTED[1]}, "bad_type"),
        (b"MRN-4417-0092 Jonathan Q. Publicfigure +1-555-0100-337", "malformed_json"),
    ]
    bad_planted = [(v if isinstance(v, bytes) else orjson.dumps(v), r) for v, r in bad_planted]
    # poison in the middle of each stay's stream (after its first third)
    inject = {p0: [oversize], p1: [fault], p2: [future], p3: [past], p4: [v for v, _ in bad_planted]}
    events: list[Event] = []
    for k in keys:
        lst = per[k]
        cut = len(lst) // 3
        events += lst[:cut] + [("vitals", k, v) for v in inject.get(k, [])] + lst[cut:]

    log = tmp_path / "worker.log"
    worker = WorkerProcess(s, log_path=log, extra_env={"VIGIL_STATE__FAULT_INJECT_SEQ": str(FAULT_SEQ)})

    async def publish() -> None:  # the producer's limit raised so that it can send the 800 kB record
        prod = AIOKafkaProducer(acks="all", linger_ms=5, max_request_size=2_000_000, **s.kafka.client_kwargs())
        await prod.start()
        try:
            futs = [await prod.send(s.topic(st), v, key=k) for st, k, v in events]
            await asyncio.gather(*futs)
        finally:
            await prod.stop()

    with worker:
        worker.wait_ready()
        asyncio.run(publish())
        got = asyncio.run(read_scores(s, len(expected)))
        assert worker.proc is not None and worker.proc.poll() is None, "the worker stopped"
        metrics = worker.metrics_text()
        assert worker.stop() == 0, log.read_text()[-3000:]
    assert_scored_exactly(expected, got)
    everything = asyncio.run(all_records(s))
    assert asyncio.run(uncommitted(s, everything)) == 0  # every offset committed: no record left to crash-loop on
    dead = [orjson.loads(r.value) for r in everything[s.topic("dead-letter")]]
    want = Counter({("oversize", hashlib.sha256(oversize).hexdigest()): 1,
                    ("time_out_of_range", hashlib.sha256(future).hexdigest()): 1,
                    ("processing_error", FAULT_SEQ): 1, ("time_out_of_range", 900_002): 1})  # fmt: skip
    for v, reason in bad_planted:
        want[(reason, hashlib.sha256(v).hexdigest())] += 1
    got_dead = Counter((d["reason"], d["sha256"] or d["content"]["seq"]) for d in dead)
    assert got_dead == want
    for d in dead:
        assert d["source_topic"] == s.topic("vitals") and d["raw_b64"] is None
        assert len(orjson.dumps(d)) < 4096
    by_reason = {d["reason"]: d for d in dead}
    assert by_reason["oversize"]["size"] == len(oversize) and by_reason["oversize"]["content"] is None
    assert by_reason["processing_error"]["error_type"] == "RuntimeError"
    assert "quarantined" in by_reason["processing_error"]["detail"]
    for reason, n in Counter(r for r, _ in want.elements()).items():
        assert metric(metrics, f'vigil_dead_letters_total{{reason="{reason}"}}') == n, reason
    assert metric(metrics, 'vigil_quarantined_events_total{topic="vitals"}') == 1
    # no planted identifier in any output topic (scores, alerts, dead letters, changelog, ...) or in the log
    for topic, recs in everything.items():
        if topic in {s.topic(x) for x in INPUTS}:
            continue  # where they were planted
        for r in recs:
            blob = (r.key or b"") + (r.value or b"")
            assert not any(p.encode() in blob for p in PLANTED), topic
    text = log.read_text()
    assert not any(p in text for p in PLANTED)
    assert "quarantined an event" in text and p1.decode() not in text  # logged, by the key's hash only


# --------------------------------------------------------------------------------------------------------------
def test_librdkafka_default_partitioner_never_splits_a_patient(settings_factory, topics_factory, sample_path,
                                                                tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ADT through vigil's murmur2 producer, vitals and labs through librdkafka (confluent-kafka) with its
    DEFAULT partitioner (CRC32), two workers. Records found on the wrong partition are re-routed to the
    patient's partition, so each patient has one owner and one score stream: exactly the expected rows, each
    once, each with its ward; every patient's state lives in its murmur2 partition of the changelog."""
    confluent_kafka = pytest.importorskip("confluent_kafka", reason="the [dev] extra installs confluent-kafka")
    s = settings_factory()
    topics_factory(s, PARTITIONS)
    per = stays(sample_path, 8, s)
    events = [e for lst in per.values() for e in lst]
    expected = reference(events, s)
    discharges = [e for e in events if e[0] == "adt" and orjson.loads(e[2])["kind"] == "discharge"]
    first = [e for e in events if e not in discharges]
    landed: list[tuple[bytes, int]] = []  # (key, partition) of every librdkafka delivery

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        landed.append((msg.key(), msg.partition()))

    rd = confluent_kafka.Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "acks": "all",
                                   "linger.ms": 5})  # the default partitioner: consistent_random (CRC32)

    async def send_adt(batch: list[Event]) -> None:
        await produce_records(s, [(s.topic(st), k, v) for st, k, v in batch])

    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [WorkerProcess(s, log_path=lg) for lg in logs]
    with workers[0], workers[1]:
        for w in workers:
            w.wait_ready()
        # in publish order, switching producer where the stream changes (each run acknowledged before the next)
        run: list[Event] = []
        for e in [*first, None]:
            if run and (e is None or (e[0] == "adt") != (run[0][0] == "adt")):
                if run[0][0] == "adt":
                    asyncio.run(send_adt(run))
                else:
                    for st, k, v in run:
                        rd.produce(s.topic(st), v, key=k, on_delivery=delivered)
                    assert rd.flush(30) == 0
                run = []
            if e is not None:
                run.append(e)
        wrong = sum(1 for k, part in landed if part != partition_for(k, PARTITIONS))
        assert len(landed) == len(first) - len([e for e in first if e[0] == "adt"]) and wrong > 0

        def rerouted() -> float:
            return sum(metric(w.metrics_text(), "vigil_rerouted_events_total{") for w in workers)

        # a replay compresses hours into milliseconds: let the re-routed copies land before the discharges
        # close the stays (live, a discharge comes hours after the vitals it closes)
        deadline = time.monotonic() + 60
        while rerouted() < wrong and time.monotonic() < deadline:
            time.sleep(0.3)
        asyncio.run(send_adt(discharges))
        got = asyncio.run(read_scores(s, len(expected)))
        texts = [w.metrics_text() for w in workers]
        for w, lg in zip(workers, logs, strict=True):
            assert w.proc is not None and w.proc.poll() is None, lg.read_text()[-2000:]
    assert_scored_exactly(expected, got)
    assert sum(metric(t, "vigil_rerouted_events_total{") for t in texts) == wrong
    assert sum(metric(t, "vigil_events_total{") for t in texts) == len(events)  # each event applied once
    assert sum(metric(t, "vigil_late_events_total{") for t in texts) == 0
    everything = asyncio.run(all_records(s))
    assert everything[s.topic("dead-letter")] == []
    log_parts = {(r.key, r.partition) for r in everything[s.topic("worker-state-changelog")]}
    assert {k for k, _ in log_parts} == set(per)
    assert all(part == partition_for(k, PARTITIONS) for k, part in log_parts)  # one owner per patient
    assert all(r.partition == partition_for(r.key, PARTITIONS) for r in everything[s.topic("scores")])


# --------------------------------------------------------------------------------------------------------------
def test_a_dead_letter_the_broker_refuses_falls_back_then_is_counted_never_raised(settings_factory, topics_factory
                                                                                 ) -> None:  # fmt: skip
    """A real producer whose request limit refuses the full dead letter: the minimal form (coordinates, size,
    hash) is sent instead; with a limit that refuses even that, the failure is counted and the batch goes on."""
    from vigil.metrics import WorkerMetrics
    from vigil.records import Invalid
    from vigil.worker.intake import Intake, Side

    s = settings_factory()
    topics_factory(s, 1)
    raw = orjson.dumps({"v": 1, "seq": 7, "time": "2026-01-01T00:00:00Z", "system": "LOINC", "code": "8867-4",
                        "value": 80, "unit": "/min", "note": "n" * 5000})  # fmt: skip
    detail = "a detail of some length " * 12

    async def attempt(limit: int) -> tuple[Side, WorkerMetrics]:
        m = WorkerMetrics()
        intake = Intake(s, m, lambda _t: None)
        side = Side(dead=[intake.dead_letter(Invalid("bad_type", "InvalidEvent", detail, "value"), s.topic("vitals"),
                                             0, 41, raw, b"pt-1", 0.0, "vitals")])  # fmt: skip
        full = len(side.dead[0].value)
        prod = AIOKafkaProducer(acks="all", max_request_size=limit, **s.kafka.client_kwargs())
        await prod.start()
        try:
            await intake.produce(prod, side)  # never raises for a refused record
        finally:
            await prod.stop()
        intake.count(side)
        assert full > 600
        return side, m

    side, m = asyncio.run(attempt(600))  # the full record (> 600 B) is refused, its minimal form (< 600 B) is not
    assert (side.fallbacks, side.failures) == (1, 0)
    dead = asyncio.run(read_topic(s, s.topic("dead-letter"), quiet_s=1.0))
    assert len(dead) == 1
    d = orjson.loads(dead[0].value)
    assert (d["error_type"], d["offset"], d["size"]) == ("DeadLetterFallback", 41, len(raw))
    assert d["sha256"] == hashlib.sha256(raw).hexdigest() and dead[0].key == b"pt-1"
    side, m = asyncio.run(attempt(100))  # nothing fits: counted and logged, no exception, no crash loop
    assert (side.fallbacks, side.failures) == (1, 1)
    assert m.dead_letter_failures._value.get() == 1 and m.dead_letter_fallbacks._value.get() == 1  # noqa: SLF001
    assert len(asyncio.run(read_topic(s, s.topic("dead-letter"), quiet_s=1.0))) == 1


# --------------------------------------------------------------------------------------------------------------
def test_an_observation_far_before_its_admit_is_dead_lettered_even_when_it_waited_for_the_admit(settings_factory
                                                                                              ) -> None:  # fmt: skip
    """A heart rate dated 2000-01-01 arrives (with a good one) before the patient's admit, in an earlier batch:
    both wait for the admit; when it comes, the far-past one is dead-lettered with its coordinates and the good
    one is applied (in-process, the worker's own Processor)."""
    from vigil.records import encode_adt
    from vigil.variables import VAR_INDEX

    s = settings_factory()
    proc = Processor(s, load_scorers(s))
    key = b"pt-wait"
    past = decode(hr(key, 5, "2000-01-01T00:00:00+00:00", 83.0), "vitals", key)
    good = decode(hr(key, 6, "2026-03-01T01:10:00+00:00", 80.0), "vitals", key)
    first = proc.process([InEvent(past, "vitals", 2, 0.0, 17), InEvent(good, "vitals", 2, 0.0, 18)])  # type: ignore[arg-type]
    assert first.dead == [] and len(proc.states[2]["pt-wait"].pending) == 2
    admit = decode(encode_adt(patient="pt-wait", source="adt", seq=1, time=datetime(2026, 3, 1, 1, tzinfo=UTC),
                              kind="admit", admit_time=datetime(2026, 3, 1, tzinfo=UTC)), "adt", key)  # fmt: skip
    second = proc.process([InEvent(admit, "adt", 2, 0.0, 3)])  # type: ignore[arg-type]
    assert [(d.reason, d.topic, d.partition, d.offset) for d in second.dead] == [
        ("time_out_of_range", s.topic("vitals"), 2, 17)
    ]
    rec = orjson.loads(second.dead[0].value)
    assert rec["content"]["seq"] == 5 and "before the patient's admission" in rec["detail"]
    st = proc.states[2]["pt-wait"]
    assert st.pending == [] and st.last_value[VAR_INDEX["HR"]] == 80.0


# --------------------------------------------------------------------------------------------------------------
class _FailsOnHr222:
    """The real scorer, except that it raises for any row whose last heart rate is 222/min: a stand-in for a
    model bug that one patient's data triggers (the real features and the real ONNX Runtime for everyone else)."""

    def __init__(self, real: Any) -> None:
        from vigil.features import FEATURE_NAMES

        self._real = real
        self._hr = list(FEATURE_NAMES).index("HR_locf")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def predict(self, x: Any, seq: Any = None) -> Any:
        if (x[:, self._hr] == 222.0).any():
            raise FloatingPointError("model bug")
        return self._real.predict(x, seq)

    def predict_flagged(self, x: Any, seq: Any = None) -> Any:  # the path of a version with an abstention block
        if (x[:, self._hr] == 222.0).any():
            raise FloatingPointError("model bug")
        return self._real.predict_flagged(x, seq)


def test_a_scoring_exception_for_one_patient_quarantines_only_that_patient(settings_factory, sample_path) -> None:  # type: ignore[no-untyped-def]
    """Batch scoring raises because of one patient's row: every other patient is scored exactly as without that
    patient; that patient's events of the batch are dead-lettered once each (processing_error, 'scoring raised
    ...', never the exception's message) and its rows scored in the batch are exactly those it gets alone."""
    s = settings_factory()
    s = s.model_copy(update={"state": s.state.model_copy(update={"discharge_grace_s": 0.0, "admit_grace_s": 60.0})})
    per = stays(sample_path, 3, s)
    keys = list(per)
    bad = keys[1]
    spike = hr(bad, 900_100, (admit_time(per[bad]) + timedelta(hours=2, minutes=30)).isoformat(), 222.0)
    batch = [e for k in keys for e in per[k]] + [("vitals", bad, spike)]

    def run(scorers: list[Any], only: Any = None) -> Any:
        ies = [InEvent(decode(v, st, k), st, 0, 0.0, i) for i, (st, k, v) in enumerate(batch) if only is None
               or only(k)]  # type: ignore[arg-type]  # fmt: skip
        out = Processor(s, scorers).process(ies)  # one batch
        return out, {(r["patient"], r["row"]): r["risk"] for r in (orjson.loads(v) for _, v in out.scores)}

    real = load_scorers(s)
    flaky = [_FailsOnHr222(sc) for sc in real]
    out, got = run(flaky)
    _, clean = run(real, lambda k: k != bad)
    _, alone = run(flaky, lambda k: k == bad)
    assert len(clean) > 50
    assert {k: v for k, v in got.items() if k[0] != bad.decode()} == pytest.approx(clean, abs=1e-6)
    assert {k: v for k, v in got.items() if k[0] == bad.decode()} == pytest.approx(alone, abs=1e-6)
    assert len(alone) <= 1  # at most the row its discharge closes (no 222 in it); the others are not scored
    assert len(out.dead) == len(per[bad]) + 1 and {d.reason for d in out.dead} == {"processing_error"}
    assert len({d.offset for d in out.dead}) == len(out.dead)  # each event once
    rec = orjson.loads(out.dead[0].value)
    assert rec["error_type"] == "FloatingPointError" and rec["detail"].startswith("scoring raised FloatingPointError")
    assert "model bug" not in rec["detail"]  # the exception's message is never copied
