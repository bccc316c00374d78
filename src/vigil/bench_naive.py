"""Benchmark baseline: the naive design — a Faust agent handling one event at a time.

Same decoding, state, featurizer and model as the pipeline, but each event goes through Faust's
per-event stream machinery and is processed alone (featurize + one ONNX call per closed row, one
``send`` per output). Run by ``vigil.bench`` as ``python -m vigil.bench_naive``; it writes its rate
to ``$BENCH_OUT`` and stops itself after ``$BENCH_TOTAL`` events.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["build_app"]


def build_app() -> Any:
    import faust
    import orjson

    from vigil.config import load_settings
    from vigil.records import Invalid, dead_letter_record, decode
    from vigil.worker.batch import InEvent, Processor
    from vigil.worker.engine import load_scorers

    settings = load_settings()
    total = int(os.environ.get("BENCH_TOTAL", "0"))
    out_path = Path(os.environ.get("BENCH_OUT", "naive.json"))
    app = faust.App(
        f"naive-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="vigil-naive-"),
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    names = {settings.topic(t): t for t in ("vitals", "labs", "adt")}
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(*names, **raw)
    scores = app.topic(settings.topic("scores"), **raw)
    alerts = app.topic(settings.topic("alerts"), **raw)
    dlq = app.topic(settings.topic("dead-letter"), **raw)
    changelog = app.topic(settings.topic("worker-state-changelog"), **raw)
    processor = Processor(settings, load_scorers(settings))
    state: dict[str, Any] = {"n": 0, "t0": None}

    @app.agent(inputs)
    async def naive(stream: Any) -> None:
        async for event in stream.events():
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            msg = event.message
            ev = decode(msg.value, names[msg.topic], msg.key)
            if type(ev) is Invalid:
                await dlq.send(key=msg.key, value=dead_letter_record(
                    ev, topic=msg.topic, partition=msg.partition, offset=msg.offset, raw=msg.value, key=msg.key,
                    received_at=time.time()))  # fmt: skip
            else:
                out = processor.process([InEvent(ev, names[msg.topic], msg.partition, msg.timestamp)])  # type: ignore[arg-type]
                for k, v in out.scores:
                    await scores.send(key=k.encode(), value=v)
                for k, v in out.alerts:
                    await alerts.send(key=k.encode(), value=v)
                for part, k, v in out.changelog:
                    await changelog.send(key=k.encode(), value=v, partition=part)
            state["n"] += 1
            if state["n"] == total:
                rate = total / (time.perf_counter() - state["t0"])
                out_path.write_bytes(orjson.dumps({"events": total, "events_per_s": rate}))
                os.kill(os.getpid(), signal.SIGTERM)

    return app


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    build_app().main()
