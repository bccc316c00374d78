"""Coalesced changelog writes (vigil.worker.changelog, ``state.changelog_interval_s``) without a broker: what is
written when, the commit bound (vigil.worker.checkpoint never passes an event applied to an unwritten state),
and a crash simulated at the Processor level — restore the last written states, replay from the committed
offsets — that gives the same score and alert ids, the same rows and the same final states as one uninterrupted
pass. The same guarantee with real processes on the real broker: tests/test_faults_backlog.py."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import orjson
import pytest
from aiokafka import TopicPartition

from vigil.config import load_settings
from vigil.records import AdtEvent, Observation
from vigil.state import HOUR, PatientState
from vigil.variables import VAR_INDEX
from vigil.worker.batch import InEvent, Processor
from vigil.worker.changelog import ChangelogWriter
from vigil.worker.checkpoint import Checkpoint
from vigil.worker.reorder import ReorderBuffer

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NAMES = {"t-vitals": "vitals", "t-labs": "labs", "t-adt": "adt"}
HR, TEMP, LACT = VAR_INDEX["HR"], VAR_INDEX["Temp"], VAR_INDEX["Lactate"]


class Recorder:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def ev(topic: str, p: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=p, offset=offset)


def st(patient: str) -> PatientState:
    return PatientState(patient)


# ------------------------------------------------------------------------------------------- the writer alone
def test_interval_zero_writes_every_touched_state_every_batch_and_holds_no_offset() -> None:
    w = ChangelogWriter(0.0)
    a, b = st("a"), st("b")
    log: list = []  # type: ignore[type-arg]
    w.write(log, {0: {"a": a, "b": b}}, [(0, a), (0, b)], [(0, a)], [[ev("vitals", 0, 5)]])
    assert [(p, k) for p, k, _ in log] == [(0, "a"), (0, "b")]  # once each, in order (a is touched and done)
    w.write(log, {0: {"a": a}}, [(0, a)], [], [[ev("vitals", 0, 6)]])
    assert [(p, k) for p, k, _ in log][-1] == (0, "a")
    assert w.min_offsets() == {} and w.dirty() == 0 and w.flush({0: {"a": a}}, everything=True) == []


def test_a_partition_is_written_at_most_once_per_interval_and_its_offsets_bound_the_commit_until_then() -> None:
    clock = Clock()
    w = ChangelogWriter(5.0, clock)
    a, b, c = st("a"), st("b"), st("c")
    states = {0: {"a": a, "b": b}, 1: {"c": c}}
    log: list = []  # type: ignore[type-arg]
    # the first change after a quiet spell is written at once (leading edge)
    w.write(log, states, [(0, a)], [], [[ev("vitals", 0, 10), ev("adt", 0, 3)]])
    assert [k for _, k, _ in log] == ["a"] and w.min_offsets() == {} and w.dirty() == 0
    clock.t = 1.0
    w.write(log, states, [(0, a), (0, b), (1, c)], [], [[ev("vitals", 0, 12), ev("vitals", 0, 11)],
                                                         [ev("labs", 0, 4)], [ev("vitals", 1, 7)]])  # fmt: skip
    # partition 0 was written 1 s ago: a and b wait; partition 1 never was: c is written now
    assert [k for _, k, _ in log] == ["a", "c"]
    assert w.min_offsets() == {("vitals", 0): 11, ("labs", 0): 4}
    assert w.is_dirty(0, "a") and w.is_dirty(0, "b") and not w.is_dirty(1, "c") and w.dirty() == 2
    clock.t = 2.0
    w.write(log, states, [(0, a)], [], [[ev("vitals", 0, 13)]])
    assert len(log) == 2 and w.min_offsets() == {("vitals", 0): 11, ("labs", 0): 4}  # the lowest stays
    assert w.due() == [] and w.flush(states) == []
    clock.t = 5.0
    assert w.due() == [0]
    recs = w.flush(states)  # the engine's housekeeping tick: partition 0 is due
    assert [(p, k) for p, k, _ in recs] == [(0, "a"), (0, "b")]
    assert PatientState.from_bytes(recs[0][2]).patient == "a"  # type: ignore[arg-type]
    assert w.min_offsets() == {} and w.dirty() == 0 and w.due() == []


def test_finalised_states_wait_for_their_partitions_flush_and_revoke_or_stop_writes_everything() -> None:
    clock = Clock()
    w = ChangelogWriter(5.0, clock)
    a, b = st("a"), st("b")
    states = {0: {"a": a, "b": b}}
    log: list = []  # type: ignore[type-arg]
    w.write(log, states, [(0, a)], [], [[ev("vitals", 0, 1)]])  # leading edge: written
    clock.t = 1.0
    w.write(log, states, [(0, a), (0, b)], [], [[ev("vitals", 0, 2)], [ev("vitals", 0, 3)]])
    assert len(log) == 1
    b.discharged = True
    b.pending = [object()]  # type: ignore[list-item]
    w.write(log, states, [], [(0, b)])  # a discharge finalised by the clock (housekeeping)
    assert len(log) == 1 and w.is_dirty(0, "b") and b.pending == []  # a closed record keeps no pending events
    assert w.min_offsets() == {("vitals", 0): 2}
    recs = w.flush(states, everything=True)  # revoke / stop: before the interval
    assert [k for _, k, _ in recs] == ["a", "b"] and PatientState.from_bytes(recs[1][2]).discharged  # type: ignore[arg-type]
    assert w.min_offsets() == {} and w.dirty() == 0


def test_an_evicted_patient_is_not_written_again_and_dropped_partitions_are_forgotten() -> None:
    clock = Clock()
    w = ChangelogWriter(5.0, clock)
    a = st("a")
    log: list = []  # type: ignore[type-arg]
    w.write(log, {0: {"a": a}}, [(0, a)], [], [[ev("vitals", 0, 1)]])
    clock.t = 1.0
    w.write(log, {0: {"a": a}}, [(0, a)], [], [[ev("vitals", 0, 2)]])
    assert w.flush({0: {}}, everything=True) == []  # gone from the states: its tombstone is the last word
    w.write(log, {2: {"a": a}}, [(2, a)], [], [[ev("vitals", 2, 9)]])
    clock.t = 1.5
    w.write(log, {2: {"a": a}}, [(2, a)], [], [[ev("vitals", 2, 10)]])
    assert w.min_offsets() == {("vitals", 2): 10}
    w.drop([2])
    assert w.min_offsets() == {} and w.dirty() == 0


# ---------------------------------------------------------------------------------------------- the checkpoint
def test_checkpoint_commits_the_lowest_of_next_held_and_unwritten_offsets() -> None:
    clock = Clock()
    buf = ReorderBuffer(min_hold_s=0.0)
    w = ChangelogWriter(5.0, clock)
    cp = Checkpoint(buf, NAMES, w)
    v0, l0, a0 = TopicPartition("t-vitals", 0), TopicPartition("t-labs", 0), TopicPartition("t-adt", 0)
    consumer = Recorder()
    a = st("a")
    log: list = []  # type: ignore[type-arg]
    cp.fetched(v0, 20)
    cp.fetched(l0, 8)
    cp.fetched(a0, 3)
    w.write(log, {0: {"a": a}}, [(0, a)], [], [[ev("vitals", 0, 9)]])  # written at once
    assert asyncio.run(cp.commit(consumer)) == {v0: 20, l0: 8, a0: 3}
    clock.t = 1.0
    cp.fetched(v0, 30)
    cp.fetched(l0, 12)
    w.write(log, {0: {"a": a}}, [(0, a)], [], [[ev("vitals", 0, 21), ev("labs", 0, 9)]])  # not written yet
    buf.add([SimpleNamespace(event=SimpleNamespace(time=100.0), topic="vitals", partition=0, offset=25)], now=0.0)
    assert cp.offsets() == {v0: 21, l0: 9, a0: 3}  # the unwritten state's lowest offsets, below the held 25
    assert asyncio.run(cp.commit(consumer)) == {v0: 21, l0: 9}
    clock.t = 6.0
    assert len(w.flush({0: {"a": a}})) == 1  # written (the engine awaits its acknowledgement, then commits)
    assert cp.offsets() == {v0: 25, l0: 12, a0: 3}  # now only the held event bounds vitals
    assert asyncio.run(cp.commit(consumer)) == {v0: 25, l0: 12}


# ------------------------------------------------------------------------- a crash, at the Processor level
def _events(n_patients: int = 8, hours: float = 9.0, seed: int = 7) -> list[InEvent]:
    """Admit, vitals every 15 min, labs every 2 h and (half of them) a discharge, for patients over two
    partitions; offsets numbered per (topic, partition) in event-time order, as a producer in time order would."""
    rng = random.Random(seed)
    raw: list[tuple[float, str, int, object]] = []
    for i in range(n_patients):
        pt, p, start = f"pt-{i}", i % 2, T0 + i * 0.3 * HOUR
        raw.append((start, "adt", p, AdtEvent(pt, "adt", 1, start, "admit", ward="W1", bed=str(i), unit="MICU",
                                              admit_time=start, age=60.0 + i, sex="F", hosp_adm_time_h=-2.0)))
        seq = 2
        for k in range(int(hours * 4)):
            t = start + k * 0.25 * HOUR
            raw.append((t, "vitals", p, Observation(pt, "mon", seq, t, HR, rng.uniform(60, 130), "vital")))
            raw.append((t, "vitals", p, Observation(pt, "mon", seq + 1, t, TEMP, rng.uniform(36, 39.5), "vital")))
            seq += 2
            if k % 8 == 3:
                raw.append((t, "labs", p, Observation(pt, "lab", seq, t, LACT, rng.uniform(0.5, 6), "lab")))
                seq += 1
        if i % 2 == 0:
            t = start + hours * HOUR
            raw.append((t, "adt", p, AdtEvent(pt, "adt", seq, t, "discharge", ward="W1", bed=str(i), unit="MICU",
                                              admit_time=start, age=60.0 + i, sex="F", hosp_adm_time_h=-2.0)))
    raw.sort(key=lambda r: r[0])
    nxt: dict[tuple[str, int], int] = {}
    out = []
    for _, topic, p, e in raw:
        off = nxt.get((topic, p), 0)
        nxt[(topic, p)] = off + 1
        out.append(InEvent(e, topic, p, T0, off))  # type: ignore[arg-type]
    return out


def _proc(interval: float, clock: Clock) -> Processor:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"discharge_grace_s": 0, "admit_grace_s": 60})
    proc = Processor(s, load_scorers(s))
    assert proc.changelog.interval_s == 0  # a Processor alone writes every touched state; the Engine coalesces
    proc.changelog = ChangelogWriter(interval, clock)
    return proc


def _run(proc: Processor, batches: list[list[InEvent]], clock: Clock, log: dict[tuple[int, str], bytes | None],
         cp: Checkpoint, committed: dict[TopicPartition, int]) -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]  # fmt: skip
    """One batch at a time, as the engine does: process, 'acknowledge' every output, commit; 1 s per batch."""
    scores, alerts = [], []
    for batch in batches:
        out = proc.process(batch)
        for p, k, v in out.changelog:
            log[(p, k)] = v
        scores += [orjson.loads(v) for _, v in out.scores]
        alerts += [orjson.loads(v) for _, v in out.alerts]
        for ie in batch:
            cp.fetched(TopicPartition(f"t-{ie.topic}", ie.partition), ie.offset + 1)
        committed.update(asyncio.run(cp.commit(Recorder())))
        clock.t += 1.0
    return scores, alerts


def _by_id(scores: list[dict]) -> dict[str, tuple[str, int, float]]:  # type: ignore[type-arg]
    by_id: dict[str, tuple[str, int, float]] = {}
    for d in scores:  # a score emitted again after the crash carries the same id and the same content
        got = (d["patient"], d["row"], d["risk"])
        assert by_id.setdefault(d["score_id"], got) == got, d["score_id"]
    return by_id


def _state(s: PatientState) -> tuple:  # type: ignore[type-arg]
    return (s.row, s.last_event_time, s.discharged, s.discharge_time, s.window.tobytes(), s.last_value.tobytes(),
            s.last_row.tobytes(), s.seen.to_bytes(), s.alerts.to_json())  # fmt: skip


@pytest.mark.parametrize("crash_at", [7, 13])
def test_a_crash_between_flushes_replays_to_the_same_scores_alerts_and_states(crash_at: int) -> None:
    events = _events()
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    # one uninterrupted pass, today's behaviour (every touched state written every batch)
    clock = Clock()
    ref = _proc(0.0, clock)
    ref_scores, ref_alerts = _run(ref, batches, clock, {}, Checkpoint(ReorderBuffer(0.0), NAMES, ref.changelog), {})
    want = _by_id(ref_scores)
    assert len(want) > 60 and ref_alerts  # the workload scores rows and raises alerts

    # interval 5 s (one batch a second), killed after `crash_at` batches: no flush, no final commit
    clock = Clock()
    first = _proc(5.0, clock)
    log: dict[tuple[int, str], bytes | None] = {}
    committed: dict[TopicPartition, int] = {}
    cp = Checkpoint(ReorderBuffer(0.0), NAMES, first.changelog)
    scores, alerts = _run(first, batches[:crash_at], clock, log, cp, committed)
    assert first.changelog.dirty() > 0  # the kill lands between flushes: some changes live only in memory
    # a new process: the states of the changelog, the input from the committed offsets
    second = _proc(5.0, clock)
    for p in (0, 1):
        second.load_partition(p, {k: PatientState.from_bytes(v) for (pp, k), v in log.items()
                                  if pp == p and v is not None})  # fmt: skip
    rest = [ie for ie in events
            if ie.offset >= committed.get(TopicPartition(f"t-{ie.topic}", ie.partition), 0)]  # fmt: skip
    assert len(rest) > len(events) - crash_at * 25  # more than the unread input: the unwritten part again
    cp2 = Checkpoint(ReorderBuffer(0.0), NAMES, second.changelog)
    s2, a2 = _run(second, [rest[i : i + 25] for i in range(0, len(rest), 25)], clock, log, cp2, {})
    got = _by_id(scores + s2)
    assert got == want  # every row once by id, no row lost, none under a second id, the same risks
    assert len(scores) + len(s2) > len(want)  # and some were emitted again (same ids: de-duplicated downstream)
    assert {(d["alert_id"], d["event"]) for d in alerts + a2} == {(d["alert_id"], d["event"]) for d in ref_alerts}
    for p in (0, 1):
        assert {k: _state(v) for k, v in second.states[p].items()} == {k: _state(v) for k, v in ref.states[p].items()}


def test_a_dirty_patient_is_not_evicted_before_its_state_is_written() -> None:
    import time

    clock = Clock()
    proc = _proc(5.0, clock)
    events = _events(n_patients=1, hours=2.0)
    assert events[-1].event.kind == "discharge"
    proc.process(events)  # admitted, observed, discharged: written at once
    assert not proc.changelog.is_dirty(0, "pt-0") and proc.states[0]["pt-0"].discharged
    clock.t = 1.0
    straggler = Observation("pt-0", "mon", 999, T0 + HOUR, HR, 80.0, "vital")
    out = proc.process([InEvent(straggler, "vitals", 0, T0, events[-1].offset + 1)])
    assert out.counts["late"] == {"vitals": 1} and out.changelog == []
    assert proc.changelog.is_dirty(0, "pt-0")  # dropped, but the closed record changed (its de-duplication ids)
    later = time.time() + 7200  # past closed_keep_s
    tombstones, _ = proc.evict_idle(now=later)
    assert tombstones == [] and "pt-0" in proc.states[0]
    clock.t = 5.0
    assert [k for _, k, _ in proc.changelog.flush(proc.states)] == ["pt-0"]
    tombstones, _ = proc.evict_idle(now=later)
    assert tombstones == [(0, "pt-0", None)]


# ------------------------------------------------------------------ the engine's side: write, acknowledge, commit
class _Engine:
    """What write_and_commit uses of vigil.worker.engine.Engine."""

    def __init__(self, emit_error: Exception | None = None, commit_error: Exception | None = None) -> None:
        self.clock = Clock()
        self.processor = SimpleNamespace(changelog=ChangelogWriter(5.0, self.clock), states={0: {"a": st("a")}})
        self.checkpoint = Checkpoint(ReorderBuffer(0.0), NAMES, self.processor.changelog)
        self.emitted: list = []  # type: ignore[type-arg]
        self.committed: list = []  # type: ignore[type-arg]
        self.emit_error, self.commit_error = emit_error, commit_error
        self._producer = object()
        self._consumer = self
        self.failures = 0
        self.metrics = SimpleNamespace(commit_failures=SimpleNamespace(inc=self._failed))
        self.fatal: BaseException | None = None
        self.on_fatal = lambda exc: self.emitted.append(("fatal", type(exc).__name__))

    def _failed(self) -> None:
        self.failures += 1

    async def _emit(self, out: object) -> None:
        if self.emit_error is not None:
            raise self.emit_error
        self.emitted += out.changelog  # type: ignore[attr-defined]

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed.append(dict(offsets))

    def dirty_a(self) -> None:
        w, a = self.processor.changelog, self.processor.states[0]["a"]
        w.write([], self.processor.states, [(0, a)], [], [[ev("vitals", 0, 3)]])  # leading edge: written
        self.clock.t = 1.0
        w.write([], self.processor.states, [(0, a)], [], [[ev("vitals", 0, 4)]])  # dirty, bound 4
        self.checkpoint.fetched(TopicPartition("t-vitals", 0), 5)


def test_write_and_commit_writes_every_dirty_state_then_commits_past_the_bound() -> None:
    from vigil.worker.changelog import write_and_commit

    eng = _Engine()
    eng.dirty_a()
    asyncio.run(write_and_commit(eng))  # not due yet (1 s of 5): nothing written, the commit stays at 4
    assert eng.emitted == [] and eng.committed == [{TopicPartition("t-vitals", 0): 4}]
    asyncio.run(write_and_commit(eng, everything=True, revoking=True))
    assert [k for _, k, _ in eng.emitted] == ["a"]
    assert eng.committed[-1] == {TopicPartition("t-vitals", 0): 5}


def test_a_failed_write_on_revoke_ends_the_worker_and_a_failed_commit_is_counted() -> None:
    from aiokafka.errors import CommitFailedError

    from vigil.worker.changelog import write_and_commit

    eng = _Engine(emit_error=RuntimeError("broker gone"))
    eng.dirty_a()
    with pytest.raises(RuntimeError):
        asyncio.run(write_and_commit(eng, everything=True, revoking=True))
    assert eng.emitted == [("fatal", "RuntimeError")] and isinstance(eng.fatal, RuntimeError)
    assert eng.committed == []  # never committed past the unwritten state
    eng = _Engine(commit_error=CommitFailedError("rebalancing"))
    eng.dirty_a()
    asyncio.run(write_and_commit(eng, everything=True, revoking=True))  # logged and counted, not raised
    assert eng.failures == 1 and eng.fatal is None and [k for _, k, _ in eng.emitted] == ["a"]
    eng = _Engine(commit_error=CommitFailedError("rebalancing"))
    eng.dirty_a()
    with pytest.raises(CommitFailedError):  # outside a revoke: the consume loop handles it
        asyncio.run(write_and_commit(eng, everything=True))
