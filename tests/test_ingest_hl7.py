"""HL7 v2 over MLLP, end to end: real socket -> listener -> embedded broker -> topics (tests/data/hl7/README.md)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import hl7
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vigil.errors import REASONS
from vigil.ingest.ack import ack_code, ack_errors
from vigil.ingest.events import patient_key
from vigil.ingest.mllp import exchange as mllp_exchange
from vigil.ingest.mllp import frame
from vigil.ingest.publish import Publisher
from vigil.ingest.server_hl7 import Hl7Listener
from vigil.kafka_io import read_at_least
from vigil.metrics import IngestMetrics

pytestmark = pytest.mark.broker
DATA = Path(__file__).parent / "data" / "hl7"
KEY = "test-pseudonym-key"  # conftest.INGEST_KEY: the key the ingest_env settings use


@pytest.fixture
def ingest_env(ingest_env):  # type: ignore[no-untyped-def]
    """conftest's ``ingest_env`` with ``time_window.mode=replay``: these messages are dated 2026-01-01 and
    would otherwise be refused as implausible (time_out_of_range) by the live window."""
    from vigil.config import TimeWindowSettings

    def make(**ingest: object):  # type: ignore[no-untyped-def]
        s = ingest_env(**ingest)
        s.time_window = TimeWindowSettings(mode="replay")
        return s

    return make


async def exchange(port: int, chunks: list[bytes], n_acks: int = 1, timeout: float = 15.0) -> list[hl7.Message]:
    """Send ``chunks`` (with a pause between them, so they arrive as separate reads) and read ``n_acks`` ACKs."""
    got = await mllp_exchange("127.0.0.1", port, chunks, n_acks, timeout=timeout, pause=0.005)
    return [hl7.parse(a.decode()) for a in got]


msa, errs = ack_code, ack_errors


def oru(control: str, obx: list[str], pid: str = "MRN-77", visit: str = "V-1") -> bytes:
    segs = [f"MSH|^~\\&|MON|ICU|VIGIL|H|20260101120000+0000||ORU^R01^ORU_R01|{control}|P|2.6",
            f"PID|||{pid}^^^H^MR||DOE^JANE", "PV1||I|ICU^1^4" + "|" * 16 + visit,
            "OBR|1|||182777000^monitoring of patient^SCT|||20260101120000+0000", *obx]  # fmt: skip
    return "\r".join(segs).encode() + b"\r"


def test_public_samples_through_the_socket(ingest_env, conforms) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env(site_timezone="UTC")
    names = ["comen_pcd01.hl7", "mindray_egateway_pcd01.hl7", "openmrs_lis_glucose.hl7",
             "python_hl7_sample_oru.hl7", "python_hl7_sample_adt_a04.hl7"]  # fmt: skip

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            payload = b"".join(frame((DATA / n).read_bytes()) for n in names)
            acks = await exchange(listener.port, [payload], n_acks=len(names))
            # Mindray: PID-3 empty, bed ICU^^5 with no ADT for it -> AE unknown bed; the ADT^A04 is accepted
            assert [msa(a) for a in acks] == ["AA", "AE", "AA", "AA", "AA"]
            assert [str(a.extract_field("MSA", 1, 2, 1, 1)) for a in acks] == [
                "202506100151270003", "23545", "MSG00005", "CNTRL-3456", "12334456778890"]
            assert "PV1^1^3" in errs(acks[1])[0] and "unknown or empty bed" in errs(acks[1])[0]
            vitals = await read_at_least(s, s.topic("vitals"), 8)
            labs = await read_at_least(s, s.topic("labs"), 1)
            dead = await read_at_least(s, s.topic("dead-letter"), 1)
            adt = await read_at_least(s, s.topic("adt"), 1)
        finally:
            await listener.stop()
        comen = patient_key("10006", None, KEY).encode()
        assert len(vitals) == 8 and {r.key for r in vitals} == {comen}
        codes = sorted(orjson.loads(r.value)["code"] for r in vitals)
        assert codes == ["149522", "150021", "150022", "150023", "150344", "150456", "150456", "151562"]
        assert len({orjson.loads(r.value)["seq"] for r in vitals}) == 8
        lab = orjson.loads(labs[0].value)
        assert (lab["code"], lab["value"], lab["time"]) == ("2345-7", 95.0, "2026-07-01T12:00:00+00:00")
        assert labs[0].key == patient_key("100GEJ", None, KEY).encode()
        assert len(dead) == 1
        d = orjson.loads(dead[0].value)
        raw = base64.b64decode(d["raw_b64"]).decode()
        assert d["source_topic"] == "hl7-mllp" and d["reason"] == "unknown_bed" and "JOHN SMITH" not in raw
        assert orjson.loads(raw)["pv1"] == {"class": "I", "ward": "ICU", "bed": "5"}
        a = orjson.loads(adt[0].value)
        assert (a["kind"], a["trigger"], a["patient_class"], a["time"]) == ("admit", "A04", "O",
                                                                            "2006-07-05T00:00:00+00:00")
        assert adt[0].key == patient_key("0000112234", None, KEY).encode()
        assert "age" not in a and a["sex"] == "U"  # PID-7 10131113 (year 1013) is no plausible age; PID-8 "1"
        assert listener.stats.counts["ignored_unmapped_code"] == 7
        conforms(s, {"vitals": vitals, "labs": labs, "dead-letter": dead, "adt": adt})

    asyncio.run(main())


def test_partly_invalid_message_gets_AE_and_resend_is_idempotent(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env()
    obx = ["OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.4.147842|88|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F",
           "OBX|2|NM|150344^MDC_TEMP^MDC|1.2.1.150344|370|268192^MDC_DIM_DEGC^MDC|||||F",
           "OBX|3|NM|151562^MDC_RESP_RATE^MDC||18|264928|||||F|||20260101120500",
           "OBX|4|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||abc|262688|||||F"]  # fmt: skip
    msg = oru("C-1", obx)

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            (ack,) = await exchange(listener.port, [frame(msg)])
            (again,) = await exchange(listener.port, [frame(msg)])
            vitals = await read_at_least(s, s.topic("vitals"), 2)
            dead = await read_at_least(s, s.topic("dead-letter"), 6)
        finally:
            await listener.stop()
        assert msa(ack) == msa(again) == "AE"
        e = errs(ack)
        assert len(e) == 3 and "OBX^2^5" in e[0] and "OBX^3^14" in e[1] and "OBX^4^5" in e[2]
        assert "plausible range" in e[0] and "UTC offset" in e[1] and "not a number" in e[2]
        v = [orjson.loads(r.value) for r in vitals]
        assert [x["code"] for x in v] == ["147842", "147842"] and v[0]["seq"] == v[1]["seq"]  # same event id
        assert {orjson.loads(r.value)["reason"] for r in dead} == {"implausible_value", "naive_timestamp", "bad_type"}
        assert all(r.key == patient_key("MRN-77", "V-1", KEY).encode() for r in dead + vitals)

    asyncio.run(main())


def test_partial_frames_garbage_and_concurrent_senders(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env()
    hr = "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{v}|264864|||||F"

    async def sender(i: int, port: int) -> str:
        raw = b"garbage\r\n" + frame(oru(f"K-{i}", [hr.format(v=60 + i)], pid=f"P{i}")) + b"\r\n"
        step = 1 + i % 7
        chunks = [raw[k : k + step] for k in range(0, len(raw), step)] if i % 3 == 0 else [raw]
        (ack,) = await exchange(port, chunks)
        return msa(ack)

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            codes = await asyncio.gather(*(sender(i, listener.port) for i in range(30)))
            vitals = await read_at_least(s, s.topic("vitals"), 30)
        finally:
            await listener.stop()
        assert codes == ["AA"] * 30
        assert sorted(orjson.loads(r.value)["value"] for r in vitals) == [60.0 + i for i in range(30)]
        assert listener.stats.counts["garbage_chunks"] == 30  # one per run of garbage

    asyncio.run(main())


def test_oversize_disconnect_and_broker_failure(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env(max_message_bytes=2048, read_timeout_s=5)
    ok = oru("OK-1", ["OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||70|264864|||||F"])
    big = oru("BIG-1", ["OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||70|264864|||||F"] * 60)

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            acks = await exchange(listener.port, [frame(big), frame(ok)], n_acks=2)
            assert [msa(a) for a in acks] == ["AR", "AA"]
            assert str(acks[0].extract_field("MSA", 1, 2, 1, 1)) == "BIG-1" and "104^" in errs(acks[0])[0]
            # a sender that disconnects mid-message: nothing published, the listener keeps serving
            _, w = await asyncio.open_connection("127.0.0.1", listener.port)
            w.write(frame(oru("HALF-1", ["OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||99|264864|||||F"]))[:150])
            await w.drain()
            w.close()
            (ack,) = await exchange(listener.port, [frame(ok)])
            assert msa(ack) == "AA"
            vitals = await read_at_least(s, s.topic("vitals"), 2)
            assert [orjson.loads(r.value)["value"] for r in vitals] == [70.0, 70.0]
            for _ in range(50):
                if listener.stats.counts["disconnects_mid_message"]:
                    break
                await asyncio.sleep(0.05)
            assert listener.stats.counts["disconnects_mid_message"] == 1
        finally:
            await listener.stop()

        class DownPublisher(Publisher):
            async def send(self, recs):  # type: ignore[no-untyped-def]
                raise TimeoutError("broker down")

        down = await Hl7Listener(s, publisher=DownPublisher(s)).start()
        try:
            (ack,) = await exchange(down.port, [frame(ok)])
        finally:
            await down.stop()
        assert msa(ack) == "AR" and "207^" in errs(ack)[0] and "resend" in errs(ack)[0]

    asyncio.run(main())


def test_monitor_vitals_reach_the_patients_scores_through_the_worker(ingest_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A gateway's ORU^R01 messages, hour after hour, over MLLP: AA each time, and a running worker scores the
    (pseudonymised) patient's hourly rows from them."""
    from vigil.tools.procs import WorkerProcess

    s = ingest_env()
    patient = patient_key("MRN-E2E", "V-9", KEY)
    hours = [(88, 371, 16), (104, 384, 22), (118, 391, 27), (126, 393, 30), (92, 372, 17)]

    def message(h: int, hr: int, temp: int, rr: int) -> bytes:
        t = f"20260101{12 + h:02d}0000+0000"  # one message per hour from 12:00 UTC
        obx = [f"OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{t}",
               f"OBX|2|NM|150344^MDC_TEMP^MDC||{temp / 10:.1f}|268192^MDC_DIM_DEGC^MDC|||||F|||{t}",
               f"OBX|3|NM|151562^MDC_RESP_RATE^MDC||{rr}|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F|||{t}"]  # fmt: skip
        return oru(f"E2E-{h}", obx, pid="MRN-E2E", visit="V-9")

    with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
        w.wait_ready()

        async def main() -> list:  # type: ignore[type-arg]
            listener = await Hl7Listener(s).start()
            try:
                acks = await exchange(listener.port, [frame(message(h, *v)) for h, v in enumerate(hours)],
                                      n_acks=len(hours))  # fmt: skip
                assert [msa(a) for a in acks] == ["AA"] * len(hours)
                return await read_at_least(s, s.topic("scores"), len(hours) - 1, timeout_s=60)
            finally:
                await listener.stop()

        scores = [orjson.loads(r.value) for r in asyncio.run(main())]
        assert w.stop() == 0
    assert {d["patient"] for d in scores} == {patient} and "MRN-E2E" not in str(scores)
    rows = sorted(d["row"] for d in scores)
    assert rows[: len(hours) - 1] == list(range(len(hours) - 1))  # rows 0..3 closed and scored (row 4 still open)
    news2 = {d["row"]: d["news2"]["total"] for d in scores}
    assert news2[3] > news2[0]  # the deterioration written in the messages is in the scores


# ---------------------------------------------------------------------------------------------------- metrics
HL7_OUTCOMES = {"AA", "AE", "AR", "published", "rejected", "ignored"}


def labels_are_fixed(registry: CollectorRegistry, outcomes: set[str]) -> None:
    """Every label of every sample is protocol / outcome / reason (or a histogram's le) from its fixed set."""
    allowed = {"protocol": {"hl7", "fhir"}, "outcome": outcomes, "reason": {*REASONS, "other"}}
    for fam in registry.collect():
        for sample in fam.samples:
            for k, v in sample.labels.items():
                assert k == "le" or v in allowed[k], f"{sample.name}: label {k}={v!r} outside the fixed set"


def test_metrics_count_outcomes_and_carry_no_identifiers(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env()
    hr, t = "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{v}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F", "MDC_TEMP^MDC"
    pid, visit = "MRN-PRIV-4711", "V-PRIV-9"
    ok = oru("CTRL-PRIV-OK", [hr.format(v=88), f"OBX|2|NM|150344^{t}||37.0|268192^MDC_DIM_DEGC^MDC|||||F",
                              "OBX|3|NM|151562^MDC_RESP_RATE^MDC||18|264928|||||X"], pid=pid, visit=visit)  # fmt: skip
    one_bad = oru("CTRL-PRIV-AE", [hr.format(v=90), f"OBX|2|NM|150344^{t}||370|268192^MDC_DIM_DEGC^MDC|||||F"],
                  pid=pid, visit=visit)  # fmt: skip
    junk = f"this is not HL7 but mentions {pid}".encode()
    metrics = IngestMetrics(CollectorRegistry())
    reg = metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, {"protocol": "hl7", **labels})

    async def main() -> None:
        listener = await Hl7Listener(s, metrics=metrics).start()
        try:
            assert value("vigil_ingest_up") == 1
            acks = await exchange(listener.port, [frame(ok), frame(one_bad), frame(junk)], n_acks=3)
            assert [msa(a) for a in acks] == ["AA", "AE", "AR"]
            for _ in range(100):  # the listener closes its side after the sender did
                if value("vigil_ingest_connections") == 0:
                    break
                await asyncio.sleep(0.02)
            assert value("vigil_ingest_connections") == 0
        finally:
            await listener.stop()
        assert value("vigil_ingest_up") == 0

    asyncio.run(main())
    assert {c: value("vigil_ingest_messages_total", outcome=c) for c in ("AA", "AE", "AR")} == \
        {"AA": 1, "AE": 1, "AR": 1}  # fmt: skip
    assert {o: value("vigil_ingest_observations_total", outcome=o) for o in ("published", "rejected", "ignored")} \
        == {"published": 3, "rejected": 1, "ignored": 1}  # fmt: skip
    assert value("vigil_ingest_dead_letters_total", reason="implausible_value") == 1
    assert value("vigil_ingest_dead_letters_total", reason="bad_type") == 1
    assert value("vigil_ingest_message_seconds_count") == 3 and value("vigil_ingest_message_seconds_sum") > 0
    text = generate_latest(reg).decode()
    for secret in (pid, visit, "DOE", "JANE", "CTRL-PRIV", patient_key(pid, visit, KEY), "not HL7"):
        assert secret not in text
    labels_are_fixed(reg, HL7_OUTCOMES)


def test_ingest_hl7_command_serves_metrics(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """`vigil ingest hl7 --port 0 --metrics-port 0` as a process: ACKs over MLLP, counts on /metrics."""
    s = ingest_env()
    env = {**os.environ, "VIGIL_PSEUDONYM_KEY": KEY, "VIGIL_TIME_WINDOW__MODE": "replay"}
    cmd = [sys.executable, "-m", "vigil", "--bootstrap", s.kafka.bootstrap_servers or "", "--topic-prefix",
           s.topic_prefix, "ingest", "hl7", "--port", "0", "--metrics-port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, metrics_port = time.monotonic() + 30, None
        while metrics_port is None and time.monotonic() < deadline:
            m = re.search(r"127\.0\.0\.1:(\d+)/metrics", proc.stderr.readline())  # type: ignore[union-attr]
            metrics_port = int(m.group(1)) if m else None
        assert metrics_port, "no metrics address printed"
        m = re.fullmatch(r"127\.0\.0\.1:(\d+)", proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert m, "no MLLP address printed"
        msg = oru("CLI-1", ["OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||77|264864|||||F"], pid="MRN-CLI-5")
        (ack,) = asyncio.run(exchange(int(m.group(1)), [frame(msg)]))
        assert msa(ack) == "AA"
        # the handler records its timing after the ACK is on the wire: read /metrics until it has (bounded)
        until, text = time.monotonic() + 10, ""
        while time.monotonic() < until and 'vigil_ingest_message_seconds_count{protocol="hl7"} 1.0' not in text:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()  # noqa: S310
            time.sleep(0.05)
        assert 'vigil_ingest_messages_total{outcome="AA",protocol="hl7"} 1.0' in text
        assert 'vigil_ingest_observations_total{outcome="published",protocol="hl7"} 1.0' in text
        assert 'vigil_ingest_up{protocol="hl7"} 1.0' in text
        assert 'vigil_ingest_message_seconds_count{protocol="hl7"} 1.0' in text
        assert "MRN-CLI-5" not in text and "CLI-1" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0
