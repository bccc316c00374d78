"""`vigil worker` end to end on the real embedded broker: events in, scores/alerts/dead letters out,
state intact across a restart and across a rebalance to a second worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from vigil.config import REPO_ROOT, Settings
from vigil.kafka_io import TopicTail, produce_many, produce_records, read_topic
from vigil.physionet import iter_stays
from vigil.privacy import pseudonymise
from vigil.records import Invalid, decode
from vigil.registry import Registry
from vigil.replay import stay_events
from vigil.tools.procs import WorkerProcess
from vigil.worker.batch import InEvent, Processor
from vigil.worker.engine import load_scorers

pytestmark = pytest.mark.broker
ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)
PARTITIONS = 4


def build_events(sample: Path, n: int, s: Settings) -> list[tuple[str, bytes, bytes]]:
    """(stream, key, value) for the first ``n`` sample stays, each stay's events in order."""
    out: list[tuple[str, bytes, bytes]] = []
    for i, stay in enumerate(iter_stays(sample, limit=n)):
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        for stream, _t, value in stay_events(stay, patient=patient, anchor=ANCHOR, source="test-feed",
                                             ward=f"W{i % 2}", bed=str(i)):  # fmt: skip
            out.append((stream, patient.encode(), value))
    return out


def reference_scores(events: list[tuple[str, bytes, bytes]], s: Settings) -> dict[tuple[str, int], float]:
    """What a single uninterrupted pass of the same code computes, event by event in publish order."""
    s = s.model_copy(update={"state": s.state.model_copy(update={"discharge_grace_s": 0.0, "admit_grace_s": 60.0})})
    p = Processor(s, load_scorers(s))
    result: dict[tuple[str, int], float] = {}
    for stream, key, value in events:
        ev = decode(value, stream, key)
        out = p.process([InEvent(ev, stream, 0, 0.0)])  # type: ignore[arg-type]
        for _, v in out.scores:
            rec = orjson.loads(v)
            result[(rec["patient"], rec["row"])] = rec["risk"]
    return result


def publish(s: Settings, events: list[tuple[str, bytes, bytes]]) -> None:
    async def go() -> None:  # in order across topics (one producer), like independent real feeds
        await produce_records(s, [(s.topic(stream), k, v) for stream, k, v in events])

    asyncio.run(go())


def scores_by_row(s: Settings, expected: int, timeout_s: float = 90) -> dict[tuple[str, int], float]:
    async def go() -> dict[tuple[str, int], float]:
        tail = await TopicTail(s, s.topic("scores")).start()
        try:
            def distinct(recs: list) -> int:  # type: ignore[type-arg]
                return len({orjson.loads(r.value)["score_id"] for r in recs})

            with contextlib.suppress(TimeoutError):  # the caller's assertion reports what is missing
                await tail.wait_for(lambda recs: distinct(recs) >= expected, timeout_s)
            return {(d["patient"], d["row"]): d["risk"] for d in (orjson.loads(r.value) for r in tail.records)}
        finally:
            await tail.stop()

    return asyncio.run(go())


BAD = [
    ("vitals", b"{not json", "malformed_json"),
    (
        "vitals",
        b'{"v":1,"source":"t","seq":1,"time":"2026-01-01T00:00:00+00:00","system":"LOINC","code":"8867-4",'
        b'"value":80,"unit":"/min"}',
        "missing_field",
    ),
    (
        "vitals",
        b'{"v":1,"source":"t","seq":2,"patient":"pt-x","time":"2026-01-01T00:00:00+00:00","system":"LOINC",'
        b'"code":"0000-0","value":80,"unit":"/min"}',
        "unknown_code",
    ),
    (
        "labs",
        b'{"v":1,"source":"t","seq":3,"patient":"pt-x","time":"2026-01-01T00:00:00+00:00","system":"LOINC",'
        b'"code":"8867-4","value":-5,"unit":"/min"}',
        "implausible_value",
    ),
    (
        "adt",
        b'{"v":1,"source":"t","seq":4,"patient":"pt-x","time":"2026-01-01T00:00:00","kind":"admit"}',
        "naive_timestamp",
    ),
]


def test_worker_end_to_end_scores_alerts_and_dead_letters(settings_factory, topics_factory, sample_path, tmp_path):
    s = settings_factory()
    topics_factory(s, PARTITIONS)
    events = build_events(sample_path, 6, s)
    expected = reference_scores(events, s)
    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()
        publish(s, events)
        asyncio.run(_produce_bad(s))
        got = scores_by_row(s, len(expected))
        dead = asyncio.run(read_topic(s, s.topic("dead-letter"), quiet_s=1.5))
        metrics = w.metrics_text()
        assert w.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert_same_scores(expected, got)
    # every bad event is on the dead-letter topic with its reason, coordinates and exact raw bytes
    records = [orjson.loads(r.value) for r in dead]
    by_hash = {d["sha256"]: d for d in records}  # dead letters keep a hash of the original, never its bytes
    for stream, raw, reason in BAD:
        d = by_hash[hashlib.sha256(raw).hexdigest()]
        assert d["reason"] == reason, d
        assert d["source_topic"] == s.topic(stream)
        assert d["partition"] >= 0 and d["offset"] >= 0 and d["error_type"]
    assert 'vigil_invalid_events_total{reason="malformed_json",topic="vitals"} 1.0' in metrics
    counted = sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines()
                  if ln.startswith(("vigil_events_total{", "vigil_invalid_events_total{")))  # fmt: skip
    assert counted == len(events) + len(BAD)  # every record consumed is counted once, valid or not
    assert "vigil_model_info{" in metrics and 'provider="CPUExecutionProvider"' in metrics
    for name in Registry(REPO_ROOT / "models").serving():  # PSI of the score against the card's training reference
        assert f'vigil_drift_psi{{model="{name}",quantity="score"}}' in metrics
    assert "pt-" not in "".join(line for line in metrics.splitlines() if not line.startswith("#"))


async def _produce_bad(s: Settings) -> None:
    for stream, raw, _ in BAD:
        await produce_many(s, s.topic(stream), [(b"pt-x", raw)])


def _split_by_time(events, frac: float):  # type: ignore[no-untyped-def]
    """Cut every stay's event list at ``frac`` of its length (phase 1 / phase 2)."""
    per: dict[bytes, list] = {}  # type: ignore[type-arg]
    for e in events:
        per.setdefault(e[1], []).append(e)
    first, second = [], []
    for lst in per.values():
        cut = int(len(lst) * frac)
        first += lst[:cut]
        second += lst[cut:]
    return first, second


def _two_phase(settings_factory, topics_factory, sample_path, n: int):  # type: ignore[no-untyped-def]
    """Settings with fresh topics, the events of ``n`` stays, their reference scores, and two halves."""
    s = settings_factory()
    topics_factory(s, PARTITIONS)
    events = build_events(sample_path, n, s)
    return s, reference_scores(events, s), *_split_by_time(events, 0.5)


def test_state_survives_worker_restart(settings_factory, topics_factory, sample_path, tmp_path):
    s, expected, first, second = _two_phase(settings_factory, topics_factory, sample_path, 5)
    with WorkerProcess(s, log_path=tmp_path / "w1.log") as w:
        w.wait_ready()
        publish(s, first)
        n_first = len(reference_scores(first, s))
        scores_by_row(s, n_first)
        assert w.stop() == 0
    with WorkerProcess(s, log_path=tmp_path / "w2.log") as w:
        w.wait_ready()
        publish(s, second)
        got = scores_by_row(s, len(expected))
        restored = [ln for ln in w.metrics_text().splitlines() if ln.startswith("vigil_state_restored_total")]
        assert w.stop() == 0
    assert restored and float(restored[0].split()[-1]) > 0
    assert_same_scores(expected, got)


def test_two_workers_split_partitions_and_state_moves(settings_factory, topics_factory, sample_path, tmp_path):
    s, expected, first, second = _two_phase(settings_factory, topics_factory, sample_path, 8)
    a = WorkerProcess(s, log_path=tmp_path / "a.log").start()
    b = None
    try:
        a.wait_ready()
        publish(s, first)
        scores_by_row(s, len(reference_scores(first, s)))
        b = WorkerProcess(s, log_path=tmp_path / "b.log").start()  # joins the group: partitions move
        b.wait_ready()
        import time

        deadline = time.monotonic() + 30  # both members finish the rebalance (bounded wait)
        while True:
            owned = [_gauge(w.metrics_text(), "vigil_assigned_partitions") for w in (a, b)]
            if sorted(owned) == [PARTITIONS // 2, PARTITIONS // 2] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(owned) == [PARTITIONS // 2, PARTITIONS // 2], owned
        publish(s, second)
        got = scores_by_row(s, len(expected))
    finally:
        for w in (a, b):
            if w is not None:
                w.stop()
    assert_same_scores(expected, got)


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def assert_same_scores(expected: dict, got: dict) -> None:  # type: ignore[type-arg]
    assert got.keys() == expected.keys(), _missing(expected, got)
    worst = max(expected, key=lambda k: abs(got[k] - expected[k]))
    assert abs(got[worst] - expected[worst]) <= 1e-6, f"row {worst}: stream {got[worst]} vs reference {expected[worst]}"


def _missing(expected: dict, got: dict) -> str:  # type: ignore[type-arg]
    miss = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    return f"{len(miss)} rows never scored, e.g. {miss[:6]}; {len(extra)} unexpected, e.g. {extra[:6]}"


def test_model_update_event_swaps_the_model_without_restart(settings_factory, topics_factory, tmp_path):
    """The Faust control agent: an event on model-updates makes the running worker load, check and
    serve the new version (here a copy of v1 registered as v90)."""
    import shutil
    import time


    models = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", models)
    (models / "serving.json").write_text('{"sepsis-mlp": "1"}')  # the MLP line serves in this test
    shutil.copytree(models / "sepsis-mlp" / "1", models / "sepsis-mlp" / "90")
    card = orjson.loads((models / "sepsis-mlp" / "90" / "card.json").read_bytes())
    card["version"] = "90"
    (models / "sepsis-mlp" / "90" / "card.json").write_bytes(orjson.dumps(card))
    s = settings_factory(models_dir=models)
    topics_factory(s, PARTITIONS)
    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()
        # as `vigil models promote --force --reason` records it: workers accept only recorded promotions
        Registry(models).switch("sepsis-mlp", "90", "promote", expect_from="1", forced=True, reason="hot-swap test")
        update = orjson.dumps({"name": "sepsis-mlp", "version": "90", "action": "promote"})
        bogus = orjson.dumps({"name": "sepsis-mlp", "version": "404", "action": "promote"})
        deadline = time.monotonic() + 60
        serving = ""
        while time.monotonic() < deadline:  # the control agent joins its group a few seconds after start
            asyncio.run(produce_many(s, s.topic("model-updates"), [(b"sepsis-mlp", bogus), (b"sepsis-mlp", update)]))
            serving = w.metrics_text()
            if 'vigil_model_info{name="sepsis-mlp",provider="CPUExecutionProvider",version="90"} 1.0' in serving:
                break
            time.sleep(1.0)
        assert 'version="90"} 1.0' in serving, (tmp_path / "worker.log").read_text()[-2000:]
        assert 'vigil_model_info{name="sepsis-mlp",provider="CPUExecutionProvider",version="1"} 0.0' in serving
        assert w.proc is not None and w.proc.poll() is None  # no restart; the bogus update was rejected
        assert w.stop() == 0
    assert "model update rejected" in (tmp_path / "worker.log").read_text()


def test_fast_replay_through_the_worker_equals_one_offline_pass(settings_factory, topics_factory, sample_path,
                                                                 tmp_path):
    """`vigil replay` as fast as possible (stays interleaved in event time over three topics) into a
    worker gives exactly the scores of one in-process pass over the same events: nothing late."""
    from vigil.physionet import iter_stays
    from vigil.replay import merged_events, replay

    s = settings_factory()
    topics_factory(s, PARTITIONS)
    n = 60
    events = [(stream, key, value) for stream, _t, key, value in
              merged_events(iter_stays(sample_path, limit=n), s.pseudonym_key.get_secret_value())]
    expected = reference_scores([e for e in events if not isinstance(decode(e[2], e[0], e[1]), Invalid)], s)
    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()
        asyncio.run(replay(s, sample_path, speed=None, limit=n))
        got = scores_by_row(s, len(expected))
        late = [ln for ln in w.metrics_text().splitlines() if ln.startswith("vigil_late_events_total{")]
        assert w.stop() == 0
    assert_same_scores(expected, got)
    assert late == [], late
    # and `vigil predict` (one stay at a time, offline) gives the worker's scores: stream/offline parity
    from vigil.predict import _offline, predict_stay

    proc = _offline(s, None)
    for stay in iter_stays(sample_path, limit=n):
        risks, _ = predict_stay(proc, stay, s.pseudonym_key.get_secret_value())
        patient = pseudonymise(stay.stay_id, s.pseudonym_key.get_secret_value())
        for row, risk in zip(stay.static[:, -1].astype(int), risks, strict=True):
            assert abs(got[(patient, int(row))] - risk) <= 1e-5, (stay.stay_id, row)


def _registry_with_candidates(tmp_path: Path) -> Path:
    """A copy of models/ with sepsis-mlp:90 (a copy of v1: same risks, so every row can be checked against
    one reference) and sepsis-mlp:91 (v1 with a card claiming another feature schema: must be refused)."""
    import shutil


    models = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", models)
    (models / "serving.json").write_text('{"sepsis-mlp": "1"}')  # the MLP line serves in this test
    for version, schema in (("90", None), ("91", "sha256:" + "0" * 64)):
        shutil.copytree(models / "sepsis-mlp" / "1", models / "sepsis-mlp" / version)
        card = orjson.loads((models / "sepsis-mlp" / version / "card.json").read_bytes())
        card["version"] = version
        if schema:
            card["feature_schema"]["hash"] = schema
        (models / "sepsis-mlp" / version / "card.json").write_bytes(orjson.dumps(card))
    return models


def test_shadow_then_hot_swap_under_load_drops_and_doubles_nothing(settings_factory, topics_factory, sample_path,
                                                                     tmp_path):
    """A candidate scores in shadow beside the live model (scores-shadow, live score attached), then is
    promoted by a model-updates event while events stream in: every row is scored exactly once, by v1
    before the switch and v2 after it, with the reference risk; a model with another feature schema is
    refused and the live one keeps serving."""
    import threading
    import time

    models = _registry_with_candidates(tmp_path)
    s = settings_factory(models_dir=models)
    topics_factory(s, PARTITIONS)
    events = build_events(sample_path, 40, s)
    expected = reference_scores([e for e in events if not isinstance(decode(e[2], e[0], e[1]), Invalid)], s)
    half = len(events) // 2

    def update(version: str, action: str) -> None:
        value = orjson.dumps({"v": 1, "name": "sepsis-mlp", "version": version, "action": action})
        asyncio.run(produce_many(s, s.topic("model-updates"), [(b"sepsis-mlp", value)]))

    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()
        deadline = time.monotonic() + 60
        while 'vigil_shadow_model_info{name="sepsis-mlp",provider="CPUExecutionProvider",version="90"} 1.0' \
                not in w.metrics_text():  # the control agent joins its group a few seconds after start
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            update("90", "shadow")
            time.sleep(1.0)
        publish(s, events[:half])
        scores_by_row(s, 1, timeout_s=30)  # scoring is under way
        Registry(models).switch("sepsis-mlp", "91", "promote", expect_from="1", forced=True, reason="test")
        update("91", "promote")  # recorded, but a wrong feature schema: refused by the worker's own check
        def stream_rest() -> None:  # the second half keeps flowing, in small batches, across the switch
            rest = events[half:]
            step = max(1, len(rest) // 20)
            for i in range(0, len(rest), step):
                publish(s, rest[i : i + step])
                time.sleep(0.25)

        loader = threading.Thread(target=stream_rest)
        loader.start()
        time.sleep(0.5)
        Registry(models).switch("sepsis-mlp", "90", "promote", expect_from="91", forced=True, reason="test")
        update("90", "promote")
        loader.join()

        async def collect() -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]
            tail = await TopicTail(s, s.topic("scores")).start()
            try:
                with contextlib.suppress(TimeoutError):
                    await tail.wait_for(lambda recs: len(recs) >= len(expected), 90)
                await asyncio.sleep(2.0)  # anything extra (a double score) would arrive now
                await tail.poll()
                live = [orjson.loads(r.value) for r in tail.records]
            finally:
                await tail.stop()
            return live, [orjson.loads(r.value) for r in await read_topic(s, s.topic("scores-shadow"))]

        live, shadow = asyncio.run(collect())
        metrics = w.metrics_text()
        assert w.proc is not None and w.proc.poll() is None
        assert w.stop() == 0
    log = (tmp_path / "worker.log").read_text()
    assert "model update rejected" in log and "feature schema" in log
    rows = [(d["patient"], d["row"]) for d in live]
    assert len(rows) == len(set(rows)), "a row was scored twice"
    assert_same_scores(expected, {(d["patient"], d["row"]): d["risk"] for d in live})
    versions = [d["model"]["version"] for d in sorted(live, key=lambda d: d["emitted_at"])]
    assert set(versions) == {"1", "90"} and versions[0] == "1" and versions[-1] == "90", set(versions)
    assert 'vigil_model_info{name="sepsis-mlp",provider="CPUExecutionProvider",version="90"} 1.0' in metrics
    assert 'vigil_shadow_model_info{name="sepsis-mlp",provider="CPUExecutionProvider",version="90"} 0.0' in metrics
    # shadow scores: same rows as live v1 scores, the live score attached, never after v2 went live
    assert shadow and all(d["shadow"] is True and d["model"]["version"] == "90" for d in shadow)
    by_row = {(d["patient"], d["row"]): d for d in live}
    for d in shadow:
        peer = by_row[(d["patient"], d["row"])]
        assert peer["model"]["version"] == "1"
        assert d["live"] == {"model": "sepsis-mlp", "version": "1", "risk": peer["risk"],
                             "above_threshold": peer["above_threshold"]}  # fmt: skip
        assert abs(d["risk"] - peer["risk"]) <= 1e-6


def test_worker_crash_and_restart_gives_the_same_alert_ids_and_no_duplicate_webhook_delivery(
    settings_factory, topics_factory, sample_path, tmp_path
):
    """A worker killed with SIGKILL mid-stream and restarted re-derives exactly the alerts of one
    uninterrupted pass (same ids: state and policy state come back from the changelog), and a webhook
    forwarder running throughout delivers every alert id exactly once to a real local HTTP receiver."""
    import http.server
    import os
    import subprocess
    import sys
    import threading
    import time

    alert_env = {"VIGIL_ALERTS__MODEL_RISK__RAISE_AT": "0.45", "VIGIL_ALERTS__MODEL_RISK__REFRACTORY_H": "0",
                 "VIGIL_ALERTS__NEWS2_EMERGENCY__ENABLED": "true"}  # plenty of alerts from 8 stays  # fmt: skip
    s, _, first, second = _two_phase(settings_factory, topics_factory, sample_path, 8)
    s.alerts.model_risk.raise_at, s.alerts.model_risk.refractory_h = 0.45, 0.0
    s.alerts.news2_emergency.enabled = True
    ref = Processor(s.model_copy(update={"state": s.state.model_copy(update={"discharge_grace_s": 0.0,
                                                                               "admit_grace_s": 60.0})}),
                    load_scorers(s))  # fmt: skip
    ref_alerts: dict[str, tuple] = {}  # type: ignore[type-arg]
    for stream, key, value in first + second:
        ev = decode(value, stream, key)
        if not isinstance(ev, Invalid):
            for _, v in ref.process([InEvent(ev, stream, 0, 0.0)]).alerts:
                d = orjson.loads(v)
                ref_alerts[d["alert_id"]] = (d["patient"][:8], d["type"], d["event"], d["row"])
    want = set(ref_alerts)
    assert len(want) >= 5

    received: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.headers["Idempotency-Key"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers or "",
           "VIGIL_TOPIC_PREFIX": s.topic_prefix, "VIGIL_WEBHOOK__SECRET": "test-secret",
           "VIGIL_WEBHOOK__SESSION_TIMEOUT_MS": "2000"}  # fmt: skip
    hook_log = (tmp_path / "hook.log").open("wb")
    hook = subprocess.Popen([sys.executable, "-m", "vigil", "alerts", "webhook",
                             f"http://127.0.0.1:{server.server_port}/alerts", "--from-beginning"], env=env,
                            stdout=hook_log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        w = WorkerProcess(s, log_path=tmp_path / "w1.log", extra_env=alert_env).start()
        w.wait_ready()
        publish(s, first)
        scores_by_row(s, len(reference_scores(first, s)))
        w.kill()  # SIGKILL: no clean shutdown, no final commit
        with WorkerProcess(s, log_path=tmp_path / "w2.log", extra_env=alert_env) as w2:
            w2.wait_ready()
            publish(s, second)
            deadline = time.monotonic() + 90
            while set(received) < want and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(3.0)  # anything delivered twice would arrive now
            assert w2.stop() == 0
        on_topic = {orjson.loads(r.value)["alert_id"] for r in asyncio.run(read_topic(s, s.topic("alerts")))}
    finally:
        hook.terminate()
        hook.wait(timeout=15)
        hook_log.close()
        server.shutdown()
    missing = sorted(ref_alerts[a] for a in want - on_topic)
    assert on_topic == want, f"{len(missing)} missing, e.g. {missing[:8]}; {len(on_topic - want)} unexpected"
    assert sorted(received) == sorted(set(received)), "an alert reached the webhook twice"
    assert set(received) == want
