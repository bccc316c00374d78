"""Edge watermarks (issue 15, latency): producers that write in event-time order publish their progress on
every input partition, and the worker orders those partitions on it instead of a wall-clock minimum hold.

Unit tests of the planning rules (no broker), then a real `vigil worker` process on the embedded broker fed by
`vigil replay`'s producer code with a 60 s minimum hold: every row is scored once and nothing is late well
before any hold could end, so the order came from the producer's watermarks; a record from a producer that
does not punctuate is counted as a violation and still applied (late, counted), never dropped."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace as E

import orjson
import pytest

from vigil import kafka_io
from vigil.config import Settings
from vigil.kafka_io import TopicTail
from vigil.physionet import iter_stays
from vigil.records import Invalid, Watermark, decode, encode_observation, encode_watermark
from vigil.worker.punctuation import EdgeMarks
from vigil.worker.reorder import Input, ReorderBuffer, plan

H = 3600.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_watermark_record_round_trips_and_bad_ones_are_invalid() -> None:
    ev = decode(encode_watermark("replay-x", T0, final=True), "adt")
    assert ev == Watermark("replay-x", T0.timestamp(), True)
    assert decode(b'{"v":1,"source":"p","watermark":"2026-01-01T00:00:00"}', "vitals").reason == "naive_timestamp"
    bad = decode(b'{"v":1,"source":"p","watermark":"2026-01-01T00:00:00Z","final":1}', "labs")
    assert type(bad) is Invalid and (bad.reason, bad.field) == ("bad_type", "final")
    assert decode(b'{"v":1,"watermark":"2026-01-01T00:00:00Z"}', "labs").field == "source"


def test_edge_ordered_inputs_set_the_watermark_and_need_no_minimum_hold() -> None:
    ins = [Input("vitals", 0, 9 * H, caught_up=False, polled=1.0, edge=5 * H),
           Input("labs", 0, 7 * H, caught_up=True, polled=1.0, quiet_since=0.99, edge=6 * H),
           Input("acks", 0, -math.inf, caught_up=True, polled=0.9, quiet_since=0.0),  # idle: does not count
           Input("vitals", 1, 4 * H, caught_up=False, polled=1.0, edge=4 * H),
           Input("labs", 1, 3 * H, caught_up=False, polled=1.0)]  # fmt: skip  # inferred: partition 1 keeps the hold
    p = plan(ins, {}, slack_s=H, max_held=10**6, now=1.0, idle_s=0.05)
    assert p.watermarks == {0: (5 * H, 0.9), 1: (3 * H, math.inf)}
    assert p.unheld == {0}
    # vitals p0 is 4 h ahead of the watermark, but it is not paused: its own watermark is the partition's
    assert p.pause == set()
    # a stalled edge-ordered input does not count (the only wall-clock escape, as for inferred ones)
    stalled = [Input("vitals", 0, 9 * H, caught_up=False, edge=5 * H, stalled=True),
               Input("labs", 0, 7 * H, caught_up=False, edge=6 * H)]  # fmt: skip
    assert plan(stalled, {}, slack_s=H, max_held=10).watermarks[0] == (6 * H, math.inf)


def test_release_skips_the_minimum_hold_only_for_unheld_partitions() -> None:
    buf = ReorderBuffer(min_hold_s=60.0)
    edged = {("vitals", 0): 4, ("vitals", 1): -1}  # vitals p0 edge-ordered after offset 4, p1 throughout
    buf.add([E(topic="vitals", partition=p, offset=o, event=E(time=1.0)) for p, o in ((0, 5), (1, 0))], 10.0, edged)
    buf.add([E(topic="labs", partition=0, offset=0, event=E(time=2.0))], 10.0, edged)  # not edge-ordered
    buf.add([E(topic="vitals", partition=0, offset=3, event=E(time=2.0))], 10.0, edged)  # before the first mark
    marks = {0: (5.0, math.inf), 1: (5.0, math.inf)}
    assert buf.wake(10.0, {0, 1}) == 70.0  # only the chunks with an event fetched before ordering wait
    out = buf.release(10.0, marks, {0})  # partition 1 has an input ordered by inference: it keeps the hold
    assert [(ie.topic, ie.partition) for ie in out] == [("vitals", 0)] and buf.held == 3
    assert sorted((ie.topic, ie.partition) for ie in buf.release(70.0, marks)) == [
        ("labs", 0), ("vitals", 0), ("vitals", 1)]


def test_producers_that_go_silent_stop_counting_and_a_violation_falls_back() -> None:
    m = EdgeMarks(timeout_s=5.0)
    m.observe("tp", Watermark("a", 10.0), now=0.0)
    m.observe("tp", Watermark("b", 20.0), now=4.0)
    assert m.current("tp", 4.5) == 10.0 and m.current("tp", 5.5) == 20.0  # "a" silent 5 s: gone
    assert m.violation("tp", "vitals", 1.0, now=6.0) and not m.violation("tp", "vitals", 1.0, now=7.0)
    assert m.current("tp", 8.0) is None  # falls back to the inferred watermark and the hold ...
    m.observe("tp", Watermark("b", 21.0), now=11.5)
    assert m.current("tp", 12.5) == 21.0  # ... until timeout_s after the last violation
    assert EdgeMarks(5.0, enabled=False).current("tp", 0.0) is None
    off = EdgeMarks(5.0, enabled=False)
    off.observe("tp", Watermark("a", 1.0), now=0.0)
    assert off.current("tp", 0.0) is None


def first_patient_absent(log: str, recs: list[dict]) -> bool:  # type: ignore[type-arg]
    """No patient pseudonym in the worker's log (the violation warning names the topic-partition only)."""
    return all(d["patient"] not in log for d in recs)


def _metric(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith((name + "{", name + " ")))


@pytest.mark.broker
def test_replay_watermarks_order_the_worker_without_the_hold(settings_factory: Callable[..., Settings],
                                                             topics_factory: Callable[..., list[str]],
                                                             sample_path: Path, tmp_path: Path) -> None:  # fmt: skip
    from vigil.replay import replay
    from vigil.tools.bench_contenders import expected_rows
    from vigil.tools.procs import WorkerProcess

    s = settings_factory()
    topics_factory(s, 4)
    stays = [st for st in iter_stays(sample_path, limit=12) if st.n_rows]
    want = sum(expected_rows(st.iculos, s.scoring.max_gap_rows) for st in stays)

    async def run() -> tuple[list[dict], int]:  # type: ignore[type-arg]
        tail = await TopicTail(s, s.topic("scores")).start()
        try:
            stats = await replay(s, "", stays=stays)
            await tail.wait_for(lambda rs: len({orjson.loads(r.value)["score_id"] for r in rs}) >= want, 40)
            # a producer that does not punctuate writes a vital sign for an hour long closed: below the
            # replay's (final) watermark, so a violation; applied, hence late; never dropped
            first = orjson.loads(tail.records[0].value)
            p = kafka_io.producer(s)
            await p.start()
            try:
                stale = encode_observation(patient=first["patient"], source="late-gateway", seq=1, time=T0,
                                           system="LOINC", code="8867-4", value=80.0, unit="/min")  # fmt: skip
                await (await p.send(s.topic("vitals"), stale, key=first["patient"].encode()))
            finally:
                await p.stop()
            with contextlib.suppress(TimeoutError):
                await tail.wait_for(lambda rs: False, 2.0)  # anything scored twice would arrive now
            return [orjson.loads(r.value) for r in tail.records], stats.watermarks
        finally:
            await tail.stop()

    env = {"VIGIL_STATE__REORDER_MIN_HOLD_S": "60"}  # no row could be scored in time by the hold's clock
    with WorkerProcess(s, log_path=tmp_path / "worker.log", extra_env=env) as w:
        w.wait_ready()
        recs, sent = asyncio.run(run())
        metrics = w.metrics_text()
        assert w.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    ids = [d["score_id"] for d in recs]
    assert len(ids) == want and len(set(ids)) == want  # every row once, none late, all within the hold
    assert _metric(metrics, "vigil_late_events_total") == 0
    assert _metric(metrics, "vigil_watermarks_total") == sent > 0
    # the stale record: counted as a violation, and its input fell back to the hold, which holds it (applied
    # at the latest when the worker stops: never dropped)
    assert _metric(metrics, "vigil_watermark_violations_total") == 1
    assert _metric(metrics, "vigil_reorder_held_events") == 1
    log = (tmp_path / "worker.log").read_text()
    assert "before its producers' watermark" in log and first_patient_absent(log, recs)


def test_watermark_records_match_their_published_schema() -> None:
    import jsonschema

    from vigil.catalog import CONTROL_SCHEMAS
    from vigil.config import REPO_ROOT

    schema = orjson.loads((REPO_ROOT / "streams" / CONTROL_SCHEMAS[0]).read_bytes())
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for final in (False, True):
        v.validate(orjson.loads(encode_watermark("replay-1", T0, final=final)))
    assert not v.is_valid({"v": 1, "source": "p", "watermark": "2026-01-01T00:00:00"})  # naive: refused


def test_other_readers_of_adt_skip_watermark_records_without_counting_them_invalid() -> None:
    """`vigil demand run` and `vigil api` read `adt` too: a producer's watermark there is not an event."""
    from vigil.api.auth import hash_token
    from vigil.api.server import ApiServer
    from vigil.config import load_settings
    from vigil.demand.calibration import Calibration
    from vigil.demand.job import DemandJob
    from vigil.records import encode_adt

    s = load_settings(None, demand={"interval_min": 60, "horizons_h": [6], "beds": {"W1": 4}},
                      api={"tokens_sha256": [hash_token("t")]})  # fmt: skip
    wm = encode_watermark("replay-1", T0)
    admit = encode_adt(patient="pt-a", source="adt", seq=1, time=T0, kind="admit", ward="W1", bed="1", unit="MICU")
    job = DemandJob(s, Calibration.synthetic(horizons=(6,)), emit_history=True)
    job.process([("adt", None, wm), ("adt", b"pt-a", admit)])  # type: ignore[list-item]
    outcomes = {x.labels["outcome"]: x.value for f in job.metrics.registry.collect() for x in f.samples
                if x.name == "vigil_demand_input_events_total" and x.labels["topic"] == "adt"}
    assert "invalid" not in outcomes and sum(outcomes.values()) == 1  # the admit only
    api = ApiServer(s)
    rec = E(topic=s.topic("adt"), key=None, value=wm, partition=0, offset=0)
    api._apply(rec)  # noqa: SLF001
    assert not any(x.value for f in api.metrics.skipped.collect() for x in f.samples if x.name.endswith("_total"))
