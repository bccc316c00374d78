"""Property-based fuzzing (hypothesis) of the MLLP framer, the ORU and FHIR mappers, and the live listener."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import hl7
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.ingest.ack import build_ack
from vigil.ingest.fhir import map_observation
from vigil.ingest.hl7_oru import parse_oru
from vigil.ingest.mllp import CR, EB, SB, Frame, Framer, Garbage, Oversize, frame
from vigil.ingest.server_fhir import FhirServer
from vigil.ingest.server_hl7 import Hl7Listener

LIMIT = 2048
body = st.binary(max_size=300).map(lambda b: b.replace(SB, b"").replace(EB, b"") or b"x")
noise = st.binary(max_size=40).map(lambda b: b.replace(SB, b""))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=20))
def test_framer_never_raises_and_stays_bounded(data: bytes, cuts: list[int]) -> None:
    f = Framer(max_bytes=LIMIT)
    out = []
    for chunk in split(data, cuts):
        out += f.feed(chunk)
        assert f.pending <= LIMIT + 1
    assert all(isinstance(x, Frame | Garbage | Oversize) for x in out)
    assert all(len(x.data) <= LIMIT for x in out if isinstance(x, Frame))


@given(st.lists(st.tuples(noise, body), min_size=1, max_size=8), st.lists(st.integers(min_value=0), max_size=30))
def test_framer_recovers_every_message_across_any_split(parts: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(n + frame(m) for n, m in parts)
    f = Framer(max_bytes=LIMIT)
    out = [x for chunk in split(stream, cuts) for x in f.feed(chunk)]
    assert [x.data for x in out if isinstance(x, Frame)] == [m for _, m in parts]
    assert not f.in_frame


@given(st.text(max_size=400), st.booleans())
def test_oru_parser_never_raises_and_always_acks(text: str, with_msh: bool) -> None:
    raw = (("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.6\r" if with_msh else "") + text).encode("utf-8", "replace")
    p = parse_oru(raw, secret="k", max_obx=50)
    assert p.ack_code in ("AA", "AE", "AR")
    ack = build_ack(p.message, p.ack_code, p.control_id, [("OBX^1^5", "102", text[:50])], app="V", facility="F")
    parsed = hl7.parse(ack.decode())
    assert str(parsed.extract_field("MSA", 1, 1, 1, 1)) == p.ack_code


obx_field = st.text(alphabet=st.characters(blacklist_characters="|\r\n"), max_size=20)


@given(st.lists(st.tuples(obx_field, obx_field, obx_field, obx_field, obx_field), max_size=6))
def test_oru_obx_fuzz_classifies_every_segment(rows: list[tuple[str, str, str, str, str]]) -> None:
    segs = ["MSH|^~\\&|A|B|C|D|20260101120000+0000||ORU^R01|9|P|2.6", "PID|||MRN-1"]
    segs += [f"OBX|{i}|{t}|{c}^X^MDC||{v}|{u}|||||F|||{ts}" for i, (t, c, v, u, ts) in enumerate(rows, 1)]
    p = parse_oru("\r".join(segs).encode("utf-8", "replace"), secret="k")
    assert p.ack_code in ("AA", "AE")
    assert len(p.events) + len(p.errors) + sum(p.ignored.values()) == len(rows)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_val = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=3), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["resourceType", "status", "code", "subject", "effectiveDateTime",
                                        "valueQuantity", "component", "id"]), json_val, max_size=8))
def test_fhir_mapper_never_raises(d: dict) -> None:  # type: ignore[type-arg]
    d.setdefault("resourceType", "Observation")
    res = map_observation(d, secret="k", zone=None)
    assert (res.invalid is None) == bool(res.events)


# ------------------------------------------------------------------------------------- the live listener
@pytest.fixture(scope="module")
def servers(broker: str) -> Iterator[tuple[Hl7Listener, FhirServer]]:  # type: ignore[no-untyped-def]
    """One MLLP listener and one FHIR server on a background event loop for the whole module (hypothesis
    runs many examples against them)."""
    import uuid

    from vigil.catalog import create_topics, load_catalog
    from vigil.config import load_settings

    s = load_settings(None, topic_prefix=f"t{uuid.uuid4().hex[:10]}-", kafka={"bootstrap_servers": broker},
                      ingest={"hl7_port": 0, "fhir_port": 0, "max_message_bytes": LIMIT, "read_timeout_s": 3},
                      time_window={"mode": "replay"})  # VALID is dated 2026-01-01  # fmt: skip
    asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix, 1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Hl7Listener, FhirServer]:
        return await Hl7Listener(s).start(), await FhirServer(s).start()

    hl7_listener, fhir = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield hl7_listener, fhir
    asyncio.run_coroutine_threadsafe(hl7_listener.stop(), loop).result(30)
    asyncio.run_coroutine_threadsafe(fhir.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def live(servers: tuple[Hl7Listener, FhirServer]) -> int:
    return servers[0].port


def acks_for(port: int, payload: bytes, expect: int, timeout: float = 10.0) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        f, got = Framer(), []
        while len(got) < expect:
            data = sock.recv(65536)
            if not data:
                break
            got += [x.data for x in f.feed(data) if isinstance(x, Frame)]
        return got


VALID = frame(b"MSH|^~\\&|M|F|V|H|20260101120000+0000||ORU^R01|OK|P|2.6\rPID|||MRN-9\r"
              b"OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||80|264864|||||F\r")  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise, st.lists(st.binary(min_size=1, max_size=500).map(lambda b: b.replace(SB, b"").replace(EB, b"")),
                       max_size=3))  # fmt: skip
def test_listener_answers_every_frame_of_garbage_and_keeps_serving(
    servers: tuple[Hl7Listener, FhirServer], pre: bytes, bodies: list[bytes]
) -> None:
    listener = servers[0]
    before = listener.stats.counts["dead_letters"]
    bodies = [b or b"?" for b in bodies]
    payload = pre + b"".join(frame(b) for b in bodies) + VALID
    acks = acks_for(listener.port, payload, expect=len(bodies) + 1)
    assert len(acks) == len(bodies) + 1  # one answer per frame, none hung
    codes = [str(hl7.parse(a.decode()).extract_field("MSA", 1, 1, 1, 1)) for a in acks]
    assert all(c in ("AA", "AE", "AR") for c in codes)
    assert codes[-1] == "AA"  # the connection still serves a valid message after the garbage
    rejected = sum(c != "AA" for c in codes)
    assert listener.stats.counts["dead_letters"] - before >= rejected  # every rejection was dead-lettered


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_val, st.dictionaries(st.sampled_from(["resourceType", "type", "entry", "status", "code",
                                                            "subject", "valueQuantity"]), json_val, max_size=6)),
       st.sampled_from(["/fhir", "/fhir/Observation"]))  # fmt: skip
def test_fhir_server_answers_any_json(servers: tuple[Hl7Listener, FhirServer], body: object, path: str) -> None:
    fhir = servers[1]
    dl_before = fhir.stats.counts["dead_letters"]
    req = urllib.request.Request(f"http://127.0.0.1:{fhir.port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/fhir+json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback test server
            status, answer = r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, orjson.loads(exc.read())
    assert status in (200, 201, 400, 413, 422)
    if status >= 400:
        assert answer["resourceType"] == "OperationOutcome" and answer["issue"][0]["diagnostics"]
    if status != 201:  # every rejected input (whole request or a batch entry) was dead-lettered
        assert fhir.stats.counts["dead_letters"] > dl_before


def test_listener_survives_half_frames_and_idle_clients(live: int) -> None:
    idle = socket.create_connection(("127.0.0.1", live), timeout=10)
    half = socket.create_connection(("127.0.0.1", live), timeout=10)
    half.sendall(SB + b"MSH|^~\\&|partial")
    half.close()
    assert len(acks_for(live, VALID + SB + b"x" * (LIMIT + 10) + EB + CR + VALID, expect=3)) == 3
    idle.settimeout(10)
    assert idle.recv(10) == b""  # closed by the listener after read_timeout_s
    idle.close()
