"""PatientState and the batch Processor without Kafka: rows, LOCF, de-duplication, eviction, round-trip."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from vigil.alerting import RuleState
from vigil.config import load_settings
from vigil.features import WINDOW
from vigil.records import AdtEvent, Observation
from vigil.state import HOUR, PatientState, event_uid
from vigil.variables import STATIC_INDEX, VAR_INDEX
from vigil.worker.batch import InEvent, Processor

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HR, TEMP, LACT = VAR_INDEX["HR"], VAR_INDEX["Temp"], VAR_INDEX["Lactate"]


def obs(t_h: float, var: int, value: float, seq: int, patient: str = "pt-a", source: str = "test") -> InEvent:
    kind = "lab" if var >= 8 else "vital"
    ev = Observation(patient, source, seq, T0 + t_h * HOUR, var, value, kind)
    return InEvent(ev, "labs" if kind == "lab" else "vitals", 0, T0)


def adt(t_h: float, kind: str, seq: int, patient: str = "pt-a", **kw: object) -> InEvent:
    fields = {"ward": "W1", "bed": "3", "unit": "MICU", "admit_time": T0, "age": 70.0, "sex": "F",
              "hosp_adm_time_h": -5.0}
    fields.update(kw)
    ev = AdtEvent(patient, "test", seq, T0 + t_h * HOUR, kind, **fields)  # type: ignore[arg-type]
    return InEvent(ev, "adt", 0, T0)


@pytest.fixture
def proc() -> Processor:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"discharge_grace_s": 0, "admit_grace_s": 60})
    return Processor(s, load_scorers(s))


def test_rows_close_on_next_hour_and_discharge(proc: Processor) -> None:
    out = proc.process([adt(2, "admit", 1), obs(2, HR, 80, 2), obs(3, HR, 90, 3), obs(5, TEMP, 38.5, 4)])
    rows = [orjson_loads(v)["row"] for _, v in out.scores]
    assert rows == [2, 3, 4]  # row 5 is still open; row 4 had no data but an hour passed
    out = proc.process([adt(6, "discharge", 5)])
    assert [orjson_loads(v)["row"] for _, v in out.scores] == [5]
    assert proc.patients() == 0  # discharged: no longer in care
    # a straggler (counted late) or a duplicate (counted as one) of the finished stay is dropped, not a ghost stay
    out = proc.process([obs(5.5, HR, 95, 99), obs(2, HR, 80, 2)])
    assert out.scores == [] and proc.patients() == 0
    assert out.counts["late"] == {"vitals": 1} and out.counts["duplicates"] == {"vitals": 1}
    tombstones, reasons = proc.evict_idle(now=time.time() + 7200)  # closed record kept closed_keep_s
    assert tombstones == [(0, "pt-a", None)] and reasons["discharge"] == 1
    # a new stay after the discharge opens a fresh state
    proc.process([adt(30, "admit", 200, admit_time=T0 + 30 * HOUR), obs(30, HR, 70, 201)])
    assert proc.patients() == 1 and proc.states[0]["pt-a"].row == 0


def test_locf_and_hours_since_in_snapshot() -> None:
    st = PatientState("pt-a")
    st.anchor(T0, 0, from_admit=True)
    st.observe(Observation("pt-a", "s", 1, T0 + 0.5 * HOUR, HR, 0.0, "vital"))  # zero is a real value
    st.advance_to(3, 72, T0, None)
    snap = st.snapshot(T0)
    assert snap.last_value[HR] == 0.0
    assert snap.hours_since[HR] == 3.0
    assert math.isnan(snap.hours_since[TEMP])
    assert np.isnan(snap.window[-1]).all()
    assert snap.window[WINDOW - 4, HR] == 0.0
    assert snap.static[STATIC_INDEX["ICULOS"]] == 3


def test_duplicates_dropped_and_counted(proc: Processor) -> None:
    out = proc.process([adt(0, "admit", 1), obs(0, HR, 80, 2), obs(0, HR, 80, 2), obs(0, HR, 80, 2)])
    assert out.counts["duplicates"] == {"vitals": 2}
    st = proc.states[0]["pt-a"]
    assert st.is_duplicate(event_uid("test", 2), 256)


def test_events_wait_for_admit_then_anchor(proc: Processor) -> None:
    # vitals arrive before their admit (cross-topic skew): rows are numbered once the admit arrives
    out = proc.process([obs(3, HR, 80, 2), obs(3.9, HR, 85, 3)])
    assert out.scores == []  # waiting for the admit (grace period)
    out = proc.process([adt(3, "admit", 1)])
    st = proc.states[0]["pt-a"]
    assert out.scores == [] and st.row == 3 and st.static[STATIC_INDEX["Age"]] == 70.0
    out = proc.process([obs(4, HR, 90, 4)])
    assert [orjson_loads(v)["row"] for _, v in out.scores] == [3]
    assert st.last_value[HR] == 90 and st.window[-2, HR] == 85


def test_admit_grace_expires_without_adt() -> None:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"admit_grace_s": 0, "discharge_grace_s": 0})
    p = Processor(s, load_scorers(s))
    out = p.process([obs(0, HR, 80, 1), obs(1, HR, 82, 2), obs(2, HR, 84, 3)])
    assert [orjson_loads(v)["row"] for _, v in out.scores] == [0, 1]  # grace over: rows from the first event
    assert math.isnan(p.states[0]["pt-a"].static[STATIC_INDEX["Age"]])


def test_interval_mode_scores_at_most_every_n_seconds() -> None:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, scoring={"mode": "interval", "min_interval_s": 60})
    p = Processor(s, load_scorers(s))
    p.process([adt(0, "admit", 1)])
    n = 0
    for i in range(300):  # 1 Hz for 5 minutes
        out = p.process([obs(i / 3600, HR, 80 + i % 5, 10 + i)])
        n += len(out.scores)
    assert 4 <= n <= 6
    assert all(orjson_loads(v)["partial"] for _, v in out.scores)


def test_ttl_eviction_by_event_time() -> None:
    from vigil.worker.engine import load_scorers

    s = load_settings(None, state={"ttl_s": 10 * HOUR, "ttl_wall_s": 0})
    p = Processor(s, load_scorers(s))
    p.process([adt(0, "admit", 1, patient="pt-old"), obs(0, HR, 80, 2, patient="pt-old")])
    p.process([adt(20, "admit", 3, patient="pt-new"), obs(20, HR, 80, 4, patient="pt-new")])
    assert p.evict_idle()[0] == [(0, "pt-old", None)]
    p2 = Processor(load_settings(None, state={"ttl_s": 10 * HOUR}), p.scorers)  # recently seen: kept
    p2.process([adt(0, "admit", 1, patient="pt-old"), adt(20, "admit", 3, patient="pt-new")])
    assert p2.evict_idle()[0] == []
    assert set(p.states[0]) == {"pt-new"}


def test_state_round_trip_bytes() -> None:
    st = PatientState("pt-a")
    st.set_context(AdtEvent("pt-a", "s", 1, T0, "admit", "W", "1", "SICU", T0, 55.0, "M", -1.0))
    st.anchor(T0, 0, from_admit=True)
    st.observe(Observation("pt-a", "s", 2, T0 + 10, LACT, 4.1, "lab"))
    st.is_duplicate(event_uid("s", 2), 256)
    st.pending.append(Observation("pt-a", "s", 3, T0 + 20, HR, 99.0, "vital"))
    st.alerts["news2_emergency"] = RuleState(active=True, streak=2, last=T0, level=7.0, episode="3")
    back = PatientState.from_bytes(st.to_bytes())
    assert back.to_bytes() == st.to_bytes()
    assert back.seen.keys() == st.seen.keys() and back.pending == st.pending
    np.testing.assert_array_equal(back.window, st.window)
    with pytest.raises(ValueError, match="magic"):
        PatientState.from_bytes(b"nope")


def orjson_loads(b: bytes) -> dict:  # type: ignore[type-arg]
    import orjson

    return orjson.loads(b)  # type: ignore[no-any-return]
