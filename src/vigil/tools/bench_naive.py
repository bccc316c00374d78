"""Benchmark baseline: the naive design — a Faust agent handling one event at a time.

Same decoding, state, featurizer and model as the pipeline, but each event goes through Faust's per-event
stream machinery and is processed alone (featurize + one ONNX call per closed row, one ``send`` per output,
the patient's state to the changelog after every event). Its input is every event merged in event-time order
on one topic (``$BENCH_TOPIC``, the stream name in the ``stream`` header), which spares it the cross-topic
reordering the pipeline does. Run by ``vigil.tools.bench`` as ``python -m vigil.tools.bench_naive``; it stops
itself after ``$BENCH_TOTAL`` events and writes its counts and time to ``$BENCH_OUT``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
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
        os.environ.get("BENCH_GROUP", "naive"),
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="vigil-naive-"),
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(os.environ["BENCH_TOPIC"], **raw)
    scores = app.topic(settings.topic("scores"), **raw)
    alerts = app.topic(settings.topic("alerts"), **raw)
    dlq = app.topic(settings.topic("dead-letter"), **raw)
    changelog = app.topic(settings.topic("worker-state-changelog"), **raw)
    processor = Processor(settings, load_scorers(settings))
    state: dict[str, Any] = {"n": 0, "t0": None, "late": 0, "duplicates": 0, "dead_letters": 0}

    @app.agent(inputs)
    async def naive(stream: Any) -> None:
        async for event in stream.events():
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            msg = event.message
            name = dict(msg.headers or [])["stream"].decode()
            ev = decode(msg.value, name, msg.key)
            if type(ev) is Invalid:
                state["dead_letters"] += 1
                await dlq.send(key=msg.key, value=dead_letter_record(
                    ev, topic=msg.topic, partition=msg.partition, offset=msg.offset, raw=msg.value, key=msg.key,
                    received_at=time.time()))  # fmt: skip
            else:
                out = processor.process([InEvent(ev, name, msg.partition, msg.timestamp)])  # type: ignore[arg-type]
                state["late"] += sum(out.counts.get("late", {}).values())
                state["duplicates"] += sum(out.counts.get("duplicates", {}).values())
                for k, v in out.scores:
                    await scores.send(key=k.encode(), value=v)
                for k, v in out.alerts:
                    await alerts.send(key=k.encode(), value=v)
                for part, k, v in out.changelog:
                    await changelog.send(key=k.encode(), value=v, partition=part)
            state["n"] += 1
            if state["n"] == total:
                await app.producer.flush()
                seconds = time.perf_counter() - state["t0"]
                out_path.write_bytes(orjson.dumps({"events": total, "seconds": seconds, "late": state["late"],
                                                   "duplicates": state["duplicates"],
                                                   "dead_letters": state["dead_letters"]}))  # fmt: skip
                os.kill(os.getpid(), signal.SIGTERM)

    return app


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    build_app().main()
