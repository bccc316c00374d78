"""Chunked inference overlapped with record building (vigil.worker.infer, ``scoring.overlap_rows``): the same
score, shadow-score and alert records as one inference call per batch, with real ONNX Runtime models (the
shipped tree ensemble with its abstention block, and the TCN, which reads the hourly sequence, in shadow mode)
on real set-A stays; a model that raises in a chunk is handled as before (the batch is scored patient by
patient and the failing patient's events quarantined)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import orjson
import pytest

from vigil.config import Settings, load_settings
from vigil.features import FEATURE_NAMES
from vigil.physionet import iter_stays
from vigil.predict import ANCHOR
from vigil.privacy import pseudonymise
from vigil.records import Invalid, decode
from vigil.replay import stay_events
from vigil.state import PatientState, Snapshot
from vigil.variables import STATIC_INDEX
from vigil.worker.batch import InEvent, Processor
from vigil.worker.engine import load_scorers, load_shadows
from vigil.worker.infer import Ahead, chunks

WALL_CLOCK = ("emitted_at", "trigger_time")  # wall clock (the batch's; a row closed by the clock: its own)


def _settings(overlap: int) -> Settings:
    s = load_settings(None, scoring={"overlap_rows": overlap, "shadow": ["sepsis-tcn:1"]},
                      state={"discharge_grace_s": 0, "admit_grace_s": 60})  # fmt: skip
    return s


def _events(sample, n_stays: int) -> list[InEvent]:  # type: ignore[no-untyped-def]
    events = []
    for k, stay in enumerate(iter_stays(sample, limit=n_stays)):
        patient = pseudonymise(stay.stay_id, "test-key")
        for stream, _t, value in stay_events(stay, patient=patient, anchor=ANCHOR, ward=f"W{k % 3}", bed=str(k)):
            ev = decode(value, stream, patient.encode())
            if not isinstance(ev, Invalid):
                events.append(InEvent(ev, stream, 0, 0.0))
    return events


def _records(out) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def,type-arg]
    def clean(recs: list[tuple[str, bytes]]) -> list[dict]:  # type: ignore[type-arg]
        got = []
        for _, raw in recs:
            d = orjson.loads(raw)
            for f in WALL_CLOCK:
                d.pop(f, None)
            got.append(d)
        return got

    return {"scores": clean(out.scores), "shadow": clean(out.shadow_scores), "alerts": clean(out.alerts)}


def test_chunked_inference_gives_the_same_records_as_one_call_per_batch(sample_path) -> None:  # type: ignore[no-untyped-def]
    events = _events(sample_path, 12)
    got = {}
    for overlap in (0, 7):
        s = _settings(overlap)
        proc = Processor(s, load_scorers(s), load_shadows(s))
        assert [sc.name for sc in proc.shadows] == ["sepsis-tcn"] and proc.scorers[0].abstainer is not None
        out = proc.process(list(events))
        got[overlap] = (_records(out), out.risks, out.indeterminate)
    (one, risks_one, ind_one), (chunked, risks_chunked, ind_chunked) = got[0], got[7]
    n = len(one["scores"])
    assert n > 7 * 10  # many chunks of 7 rows
    assert one == chunked  # every record, field for field, in the same order
    assert len(one["shadow"]) == n and one["alerts"]
    assert ind_one == ind_chunked and sum(ind_one.values()) > 0  # abstention flags counted the same
    assert risks_one.keys() == risks_chunked.keys()
    for name in risks_one:
        assert risks_one[name].tolist() == risks_chunked[name].tolist()


class Boom:
    """Returns each row's number (its ``age`` feature, see :func:`_snaps`); a call holding row ``fail_row``
    raises."""

    abstainer = None
    needs_sequence = False

    def __init__(self, fail_row: int = -1) -> None:
        self.fail_row = fail_row

    def predict(self, x, seq=None):  # type: ignore[no-untyped-def]
        rows = x[:, FEATURE_NAMES.index("age")]
        if (rows == self.fail_row).any():
            msg = "boom"
            raise RuntimeError(msg)
        return rows.astype(np.float32)


def _snaps(n: int) -> list[Snapshot]:
    """``n`` snapshots whose ``age`` is their row number."""
    st = PatientState("pt-x")
    out = []
    for i in range(n):
        st.static[STATIC_INDEX["Age"]] = i
        out.append(st.snapshot(0.0))
    return out


def test_chunks_come_back_in_row_order_and_a_failing_one_raises_once_all_are_done() -> None:
    from contextlib import closing

    snaps = _snaps(10)
    ok = Ahead([Boom()], rows=3)
    ok.offer(snaps[:4])  # one full chunk (0..3) started, as after a patient's rows were applied
    assert [(a, fut is not None) for a, _, _, fut in ok.parts] == [(0, True)]
    ok.offer(snaps)  # two more (3..6, 6..9); the last row is left for close(), after them on the inference thread
    _, x = ok.close(snaps)
    assert x.shape[0] == 10 and [fut is None for *_, fut in ok.parts] == [False, False, False, False]
    assert [(p.start, p.stop, p.results[0][0].tolist()) for p in chunks(ok)] == [
        (0, 3, [0.0, 1.0, 2.0]), (3, 6, [3.0, 4.0, 5.0]), (6, 9, [6.0, 7.0, 8.0]), (9, 10, [9.0])]  # fmt: skip

    one = Ahead([Boom()], rows=20)  # a batch of one chunk (live rates): one call on the caller's thread
    one.offer(snaps)
    one.close(snaps)
    assert [fut for *_, fut in one.parts] == [None]
    assert [(p.start, p.stop) for p in chunks(one)] == [(0, 10)]

    bad = Ahead([Boom(fail_row=4)], rows=3)
    bad.close(snaps)  # close() alone starts every chunk too
    got = []
    with pytest.raises(RuntimeError, match="boom"), closing(chunks(bad)) as parts:
        for p in parts:  # the chunk before the failing one comes back first; the error when its chunk is reached
            got.append(p.start)
    assert got == [0]
    assert all(fut.done() for *_, fut in bad.parts if fut is not None)  # no call outlives it

    left = Ahead([Boom()], rows=3)
    left.close(snaps)
    with closing(chunks(left)) as parts:
        assert next(parts).start == 0  # a caller that stops reading (an error of its own) and closes it
    assert all(fut.done() for *_, fut in left.parts if fut is not None)


def test_a_model_error_in_a_chunk_quarantines_only_that_patient(sample_path) -> None:  # type: ignore[no-untyped-def]
    s = _settings(5)
    s.scoring.shadow = []
    events = _events(sample_path, 4)
    proc = Processor(s, load_scorers(s))
    real = proc.scorers[0]
    admits = {e.event.patient: e.event.age for e in events if getattr(e.event, "kind", "") == "admit"}
    victim = list(admits)[-1]  # the last patient of the batch: its rows are in the last chunk, after the others'
    assert list(admits.values()).count(admits[victim]) == 1  # known by its age alone
    age_col = FEATURE_NAMES.index("age")

    class OnePatientFails:
        """The shipped model, except that a call holding a row of the victim (known by its age) raises."""

        def __getattr__(self, item):  # type: ignore[no-untyped-def]
            return getattr(real, item)

        def predict_flagged(self, x, seq=None):  # type: ignore[no-untyped-def]
            if (x[:, age_col] == np.float32(admits[victim])).any():
                msg = "model failed on this row"
                raise RuntimeError(msg)
            return real.predict_flagged(x, seq)

    proc.scorers[0] = OnePatientFails()  # type: ignore[call-overload]
    out = proc.process(list(events))
    scored_patients = {orjson.loads(r)["patient"] for _, r in out.scores}
    assert scored_patients == set(admits) - {victim}  # everyone else scored
    assert {d.reason for d in out.dead} == {"processing_error"}
    assert len(out.dead) == sum(1 for e in events if e.event.patient == victim)
    # ... exactly as if the victim had not been there: the failed chunked call moved no alert state, so the
    # patient-by-patient retry stepped no row twice (same score and alert records, same alert states)
    clean = Processor(s, load_scorers(s))
    want = clean.process([e for e in events if e.event.patient != victim])
    assert _records(out) == _records(want) and want.alerts
    for p in set(admits) - {victim}:
        assert repr(proc.states[0][p].alerts) == repr(clean.states[0][p].alerts)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_its_own_inference_thread() -> None:
    snaps = _snaps(7)
    assert [p.start for p in chunks(_closed(snaps))] == [0, 3, 6]  # the parent's inference thread exists now
    pid = os.fork()
    if pid == 0:  # the child: chunked inference must still complete (exit 0), not wait for a thread it lacks
        code = 1
        try:
            code = 0 if [p.stop for p in chunks(_closed(snaps))] == [3, 6, 7] else 2
        finally:
            os._exit(code)
    for _ in range(600):  # bounded: without the fix the child waits forever for the parent's thread
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's chunked inference never finished (it waited for the parent's thread)")
    assert os.waitstatus_to_exitcode(status) == 0


def _closed(snaps: list[Snapshot]) -> Ahead:
    ahead = Ahead([Boom()], rows=3)
    ahead.close(snaps)
    return ahead
