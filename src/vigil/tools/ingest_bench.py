"""Ingest benchmark: HL7 messages/s accepted end to end (frame in -> broker acks=all -> ACK out) with 1, 10 and
100 concurrent MLLP senders, and FHIR Observations/s (single POSTs and Bundles).

``python -m vigil.tools.ingest_bench [--seconds 5] [--obx 6]``: starts the embedded broker unless
``KAFKA_BOOTSTRAP_SERVERS`` is set, creates the topics under a fresh prefix, runs the listeners in this process
and the load generator in a child process (so the clients do not share the listeners' event loop), and prints
one JSON line per scenario. Each sender waits for the ACK before sending its next message (as MLLP senders do),
so throughput = senders / latency; latency percentiles are per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import time
import uuid
from typing import Any

__all__ = ["main"]

_OBX = [
    "OBX|{i}|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.4.147842|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F",
    "OBX|{i}|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||F",
    "OBX|{i}|NM|151562^MDC_RESP_RATE^MDC|1.14.1.151562|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F",
    "OBX|{i}|NM|150344^MDC_TEMP^MDC|1.2.1.150344|37.1|268192^MDC_DIM_DEGC^MDC|||||F",
    "OBX|{i}|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.1.9.150021|121|266016^MDC_DIM_MMHG^MDC|||||F",
    "OBX|{i}|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.1.9.150022|79|266016^MDC_DIM_MMHG^MDC|||||F",
]


def _oru(sender: int, n: int, obx: int) -> bytes:
    segs = [f"MSH|^~\\&|BENCH{sender}|ICU|VIGIL|H|20260101120000+0000||ORU^R01^ORU_R01|{sender}-{n}|P|2.6",
            f"PID|||MRN{sender:04d}", "OBR|1|||182777000^monitoring of patient^SCT|||20260101120000+0000"]  # fmt: skip
    segs += [_OBX[k % len(_OBX)].format(i=k + 1, hr=60 + n % 40) for k in range(obx)]
    return ("\r".join(segs) + "\r").encode()


def _observation(sender: int, n: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "identifier": [{"system": "urn:bench",
            "value": f"{sender}-{n}"}], "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"identifier": {"value": f"MRN{sender:04d}"}}, "effectiveDateTime": "2026-01-01T12:00:00Z",
            "valueQuantity": {"value": 60 + n % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}  # fmt: skip


async def _hl7_sender(port: int, sender: int, until: float, obx: int, lat: list[float]) -> int:
    from vigil.ingest.mllp import Frame, Framer, frame

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framer, n = Framer(), 0
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(frame(_oru(sender, n, obx)))
            got: list[Frame] = []
            while not got:
                data = await reader.read(65536)
                if not data:
                    return n
                got = [x for x in framer.feed(data) if isinstance(x, Frame)]
            if b"MSA|AA" not in got[0].data:
                msg = f"unexpected ACK: {got[0].data[:200]!r}"
                raise RuntimeError(msg)
            lat.append(time.perf_counter() - t0)
            n += 1
    finally:
        writer.close()
    return n


async def _fhir_sender(url: str, sender: int, until: float, bundle: int, lat: list[float]) -> int:
    import aiohttp

    n = 0
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < until:
            if bundle:
                body: Any = {"resourceType": "Bundle", "type": "batch", "entry": [
                    {"resource": _observation(sender, n + k)} for k in range(bundle)]}  # fmt: skip
                target = url
            else:
                body, target = _observation(sender, n), url + "/Observation"
            t0 = time.perf_counter()
            async with http.post(target, json=body) as r:
                await r.read()
                if r.status != (200 if bundle else 201):  # a batch answers 200 + per-entry statuses (FHIR REST)
                    msg = f"HTTP {r.status}"
                    raise RuntimeError(msg)
            lat.append(time.perf_counter() - t0)
            n += bundle or 1
    return n


def _load(kind: str, target: Any, senders: int, seconds: float, extra: int, out: Any) -> None:
    """Child process: run ``senders`` concurrent clients for ``seconds``; put the result on ``out``."""

    async def run() -> dict[str, Any]:
        lat: list[float] = []
        until = time.perf_counter() + seconds
        t0 = time.perf_counter()
        if kind == "hl7":
            counts = await asyncio.gather(*(_hl7_sender(target, i, until, extra, lat) for i in range(senders)))
        else:
            counts = await asyncio.gather(*(_fhir_sender(target, i, until, extra, lat) for i in range(senders)))
        wall = time.perf_counter() - t0
        lat.sort()
        pct = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {"items": sum(counts), "requests": len(lat), "seconds": round(wall, 3),
                "p50_ms": pct(0.5), "p99_ms": pct(0.99)}  # fmt: skip

    out.put(asyncio.run(run()))


async def _scenario(kind: str, target: Any, senders: int, seconds: float, extra: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_load, args=(kind, target, senders, seconds, extra, q), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    res: dict[str, Any] = await loop.run_in_executor(None, q.get, True, seconds + 120)
    await loop.run_in_executor(None, proc.join, 30)
    res["per_s"] = round(res["items"] / res["seconds"], 1)
    return res


async def _bench(bootstrap: str, seconds: float, obx: int) -> list[dict[str, Any]]:
    from vigil.catalog import create_topics, load_catalog
    from vigil.config import load_settings
    from vigil.ingest.server_fhir import FhirServer
    from vigil.ingest.server_hl7 import Hl7Listener

    s = load_settings(None, topic_prefix=f"bench{uuid.uuid4().hex[:8]}-", kafka={"bootstrap_servers": bootstrap},
                      ingest={"hl7_port": 0, "fhir_port": 0}, time_window={"mode": "replay"},
                      dev_mode=True)  # fmt: skip  # the synthetic messages are dated 2026-01-01
    await create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix, None)
    hl7_listener = await Hl7Listener(s).start()
    fhir = await FhirServer(s).start()
    rows = []
    try:
        for senders in (1, 10, 100):
            r = await _scenario("hl7", hl7_listener.port, senders, seconds, obx)
            rows.append({"scenario": f"hl7 ORU^R01 ({obx} OBX), {senders} senders", "unit": "messages/s", **r,
                         "events_per_s": round(r["per_s"] * obx, 1)})  # fmt: skip
        url = f"http://127.0.0.1:{fhir.port}/fhir"
        for senders, bundle in ((1, 0), (10, 0), (10, 20)):
            r = await _scenario("fhir", url, senders, seconds, bundle)
            what = f"Bundle of {bundle}" if bundle else "single Observation"
            rows.append({"scenario": f"fhir {what}, {senders} clients", "unit": "Observations/s", **r})
    finally:
        await hl7_listener.stop()
        await fhir.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one JSON line per scenario (plus the machine)."""
    ap = argparse.ArgumentParser(prog="python -m vigil.tools.ingest_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario")
    ap.add_argument("--obx", type=int, default=6, help="OBX segments per HL7 message")
    args = ap.parse_args(argv)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),  # noqa: T201
                      "python": platform.python_version()}))  # fmt: skip
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        rows = asyncio.run(_bench(bootstrap, args.seconds, args.obx))
    else:
        from vigil.broker import EmbeddedBroker

        with EmbeddedBroker() as b:
            rows = asyncio.run(_bench(b.bootstrap, args.seconds, args.obx))
    for row in rows:
        print(json.dumps(row))  # noqa: T201


if __name__ == "__main__":
    main()
