"""The worker's Faust host leaves nothing behind on the broker: a start creates no topic beyond the catalogue's.

Faust's leader assignor declares a ``<app id>-__assignor-__leader`` topic on every start unless told not to
(``topic_disable_leader``); the control app's id is unique per process, so each start used to leave one more
topic. This starts a real worker on a fresh prefix, waits until its control plane (the ``model-updates``
agent, a Faust consumer group) has consumed an update, stops it, and lists the broker's topics.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from vigil.config import Settings
from vigil.kafka_io import produce_many, read_topic
from vigil.tools.procs import WorkerProcess

pytestmark = pytest.mark.broker


def broker_topics(s: Settings) -> set[str]:
    async def go() -> set[str]:
        c = AIOKafkaConsumer(group_id=None, **s.kafka.client_kwargs())
        await c.start()
        try:
            return set(await c.topics())
        finally:
            await c.stop()

    return asyncio.run(go())


def test_worker_start_creates_no_topic_beyond_the_catalogue(settings_factory, topics_factory, tmp_path: Path) -> None:
    s = settings_factory()
    created = set(topics_factory(s, 2))
    before = broker_topics(s)
    assert created <= before
    assert {t for t in before if t.startswith(s.topic_prefix)} == created
    log_path = tmp_path / "worker.log"
    bad_update = orjson.dumps({"action": "promote", "name": "no-such-model", "version": "0"})
    with WorkerProcess(s, log_path=log_path) as w:
        w.wait_ready()
        # the control plane is up once the model-updates agent has consumed (and refused) an update; it reads
        # from "latest", so keep sending until one arrives after its assignment
        deadline = time.monotonic() + 60
        while "model update rejected" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the model-updates agent consumed nothing within 60 s"
            asyncio.run(produce_many(s, s.topic("model-updates"), [(None, bad_update)]))
            time.sleep(0.5)
        assert w.stop() == 0
    after = broker_topics(s)
    assert {t for t in after if t.startswith(s.topic_prefix)} == created
    new = after - before
    assert not new, f"topics created by a worker start: {sorted(new)}"
    # the alert settings the worker ran with are on the audit topic, once (issue 17: an audit of overrides)
    audit = [orjson.loads(r.value) for r in asyncio.run(read_topic(s, s.topic("audit"), quiet_s=0.5))]
    got = [(a["kind"], a["subject"], a["who"]) for a in audit]
    assert got == [("config_override", "config:alerts", "vigil worker")]
    assert audit[0]["details"] == s.alerts.model_dump(mode="json")
