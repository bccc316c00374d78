"""Shared fixtures: one embedded broker per test session, unique topic/group names per test, factories."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from vigil.broker import EmbeddedBroker
from vigil.config import Settings, load_settings

# Development mode for every Settings and every worker / listener process the tests start: they may use the
# public development pseudonym key (production refuses it, see vigil.ingest.security.require_production_key).
os.environ.setdefault("VIGIL_DEV_MODE", "1")

# CI runs on 2 shared cores: an example that takes longer than hypothesis' default 200 ms deadline is load, not
# a defect (the fuzz tests assert behaviour, never speed).
hypothesis_settings.register_profile("vigil", deadline=None)
hypothesis_settings.load_profile("vigil")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "physionet2019_sample.tar.gz"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's broker: KAFKA_BOOTSTRAP_SERVERS if set, else embedded Tansu."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b.bootstrap


@pytest.fixture
def settings_factory(broker: str) -> Callable[..., Settings]:
    """Settings with a unique topic prefix and group id per call (tests never share topics)."""

    def make(**overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:10]
        base: dict[str, object] = {
            "topic_prefix": f"t{tag}-",
            "group_id": f"g{tag}",
            "kafka": {"bootstrap_servers": broker},
            "web_port": 0,
            # the bundled PhysioNet data is replayed from 2026-01-01: historical, so the plausible-time window
            # runs in replay mode (the future bound still applies; vigil.timewindow)
            "time_window": {"mode": "replay"},
        }
        base.update(overrides)
        return load_settings(None, **base)

    return make


@pytest.fixture
def topics_factory() -> Callable[..., list[str]]:
    """Create the catalogue topics for a Settings (with its prefix)."""
    from vigil.catalog import create_topics, load_catalog

    def make(settings: Settings, partitions: int | None = None) -> list[str]:
        return asyncio.run(
            create_topics(settings.kafka.client_kwargs(), load_catalog(settings.streams_dir), settings.topic_prefix,
                          partitions)
        )  # fmt: skip

    return make


@pytest.fixture(scope="session")
def sample_path() -> Path:
    assert SAMPLE.exists(), f"bundled sample missing: {SAMPLE}"
    return SAMPLE


INGEST_KEY = "test-pseudonym-key"  # the pseudonym key of the ingest tests (they recompute pseudonyms with it)


@pytest.fixture
def ingest_env(settings_factory: Callable[..., Settings], topics_factory: Callable[..., list[str]]
               ) -> Callable[..., Settings]:  # fmt: skip
    """Settings for an edge listener (free ports, the test pseudonym key) with fresh one-partition topics."""

    def make(**ingest: object) -> Settings:
        s = settings_factory(pseudonym_key=INGEST_KEY, ingest={"hl7_port": 0, "fhir_port": 0, **ingest})
        topics_factory(s, partitions=1)
        return s

    return make


@pytest.fixture
def conforms() -> Callable[[Settings, dict[str, list[Any]]], None]:
    """A check that every record matches its topic's JSON Schema (streams/schemas)."""
    import jsonschema
    import orjson

    from vigil.catalog import schema_for

    def check(settings: Settings, by_topic: dict[str, list[Any]]) -> None:
        for topic, recs in by_topic.items():
            validator = jsonschema.Draft202012Validator(schema_for(topic, settings.streams_dir))
            for r in recs:
                validator.validate(orjson.loads(r.value))

    return check


@pytest.fixture
def run_demand_job() -> Callable[..., Any]:
    """``run(settings, calibration, done, timeout_s=30, **job_kw)``: run a :class:`vigil.demand.job.DemandJob` on
    the broker until ``done(records)`` holds for the ``resource-demand`` records it wrote; returns them."""
    import orjson

    from vigil.demand.job import DemandJob
    from vigil.kafka_io import TopicTail

    async def run(s: Settings, cal: Any, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30.0,
                  **job_kw: Any) -> list[dict[str, Any]]:  # fmt: skip
        job = DemandJob(s, cal, emit_history=True, **job_kw)
        stop = asyncio.Event()
        task = asyncio.create_task(job.run(stop))
        tail = await TopicTail(s, s.topic("resource-demand")).start()
        try:
            recs = await tail.wait_for(lambda rs: task.done() or done([orjson.loads(r.value) for r in rs]),
                                       timeout_s)  # fmt: skip
            assert not task.done(), task.exception()
            return [orjson.loads(r.value) for r in recs]
        finally:
            stop.set()
            await tail.stop()
            await asyncio.wait_for(task, 10)

    return lambda *a, **kw: asyncio.run(run(*a, **kw))


@pytest.fixture
def all_records() -> Callable[[Settings], Any]:
    """``await all_records(settings)``: every record value of every topic with the settings' prefix, by topic
    (scans for planted identifiers, "nothing published" checks)."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def read(s: Settings) -> dict[str, list[bytes]]:
        kw = s.kafka.client_kwargs()
        admin = AIOKafkaAdminClient(**kw)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(s.topic_prefix)]
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(**kw, enable_auto_commit=False)
        await consumer.start()
        out: dict[str, list[bytes]] = {t: [] for t in topics}
        try:
            tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or {0}]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + 30

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind() and time.monotonic() < deadline:
                for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                    out[tp.topic] += [r.value or b"" for r in recs]
        finally:
            await consumer.stop()
        return out

    return read
