"""HL7 ADT over MLLP, bed association, plausible times and PHI-free dead letters at the HL7 listener.

Real sockets on loopback, the session's embedded broker, and (for the done-when test) a real worker process.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from datetime import UTC, datetime

import hl7
import orjson
import pytest

from vigil import records
from vigil.config import TimeWindowSettings
from vigil.ingest.ack import ack_code, ack_errors
from vigil.ingest.census import BedCensus
from vigil.ingest.events import patient_key
from vigil.ingest.hl7_adt import parse_adt
from vigil.ingest.hl7_deadletter import project
from vigil.ingest.mllp import exchange as mllp_exchange
from vigil.ingest.mllp import frame
from vigil.ingest.server_hl7 import Hl7Listener
from vigil.kafka_io import TopicTail, produce_many, read_at_least, read_topic

KEY = "test-pseudonym-key"  # conftest.INGEST_KEY

REPLAY = TimeWindowSettings(mode="replay")


async def exchange(port: int, chunks: list[bytes], n_acks: int = 1, timeout: float = 15.0) -> list[hl7.Message]:
    """Send ``chunks`` (with a pause between them, so they arrive as separate reads) and read ``n_acks`` ACKs."""
    got = await mllp_exchange("127.0.0.1", port, chunks, n_acks, timeout=timeout, pause=0.0)
    return [hl7.parse(a.decode()) for a in got]


msa, errs = ack_code, ack_errors

HR = "OBX|{n}|NM|147842^MDC_ECG_HEART_RATE^MDC||{v}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{t}"
TEMP = "OBX|{n}|NM|150344^MDC_TEMP^MDC||{v}|268192^MDC_DIM_DEGC^MDC|||||F|||{t}"
RR = "OBX|{n}|NM|151562^MDC_RESP_RATE^MDC||{v}|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F|||{t}"


def adt(trigger: str, control: str, when: str, loc: str, mrn: str = "MRN-ADT-1", visit: str = "V-1",
        admit: str = "20260101120000+0000", prior: str = "", cls: str = "I") -> bytes:  # fmt: skip
    """One ADT message: EVN-2 = ``when``, PV1-3 = ``loc`` (ward^room^bed), PV1-6 prior location, PV1-44 admit."""
    pv1 = ["PV1", "1", cls, loc, "", "", prior] + [""] * 12 + [visit] + [""] * 24 + [admit]
    segs = [f"MSH|^~\\&|ADTSYS|HOSP|VIGIL|H|{when}||ADT^{trigger}^ADT_A01|{control}|P|2.5",
            f"EVN|{trigger}|{when}", f"PID|1||{mrn}^^^H^MR||DOE^JANE||19550302|F|||1 MAIN ST^^TOWN||555-0100",
            "|".join(pv1)]  # fmt: skip
    return ("\r".join(segs) + "\r").encode()


def bed_oru(control: str, loc: str, obx: list[str], pid: str = "") -> bytes:
    """An ORU^R01 from a monitor that identifies the bed (PV1-3) and sends PID-3 empty (or ``pid``)."""
    segs = [f"MSH|^~\\&|GW|ICU|VIGIL|H|20260101120000+0000||ORU^R01^ORU_R01|{control}|P|2.6",
            f"PID|||{pid}", f"PV1||I|{loc}", "OBR|1|||182777000^monitoring of patient^SCT", *obx]  # fmt: skip
    return ("\r".join(segs) + "\r").encode()


def vitals(t: str, hr: int = 88, temp: float = 37.1, rr: int = 16) -> list[str]:
    return [HR.format(n=1, v=hr, t=t), TEMP.format(n=2, v=temp, t=t), RR.format(n=3, v=rr, t=t)]


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("trigger", "kind", "cancels"),
    [("A01", "admit", None), ("A04", "admit", None), ("A02", "transfer", None), ("A03", "discharge", None),
     ("A08", "transfer", None), ("A11", "discharge", "admit"), ("A12", "transfer", "transfer"),
     ("A13", "admit", "discharge")],
)  # fmt: skip
def test_each_adt_trigger_maps_onto_the_adt_schema(trigger: str, kind: str, cancels: str | None) -> None:
    import jsonschema

    from vigil.catalog import schema_for
    from vigil.config import load_settings

    text = adt(trigger, "C-" + trigger, "20260101130000+0000", "ICU-A^R1^B3", prior="ICU-B^R9^B9").decode()
    p = parse_adt(text, secret=KEY, zone=None, window=REPLAY, ward_units={"ICU-A": "MICU"})
    assert p.ack_code == "AA" and p.event is not None and p.adt is not None
    d = orjson.loads(p.event.value)
    jsonschema.Draft202012Validator(schema_for("adt", load_settings(None).streams_dir)).validate(d)
    assert (d["kind"], d.get("cancels"), d["trigger"]) == (kind, cancels, trigger)
    assert (d["ward"], d["room"], d["bed"], d["patient_class"]) == ("ICU-A", "R1", "B3", "I")
    assert d["patient"] == patient_key("MRN-ADT-1", "V-1", KEY) and d["time"] == "2026-01-01T13:00:00+00:00"
    assert "MRN-ADT-1" not in p.event.value.decode() and "19550302" not in p.event.value.decode()
    if kind == "admit":  # demographics: age in whole years, never the birth date; the unit from ward_units
        assert (d["age"], d["sex"], d["unit"], d["admit_time"]) == (70, "F", "MICU", "2026-01-01T12:00:00+00:00")
    else:
        assert "age" not in d and "sex" not in d
    assert records.decode(p.event.value, "adt", p.event.key) == p.adt  # the worker's decoder accepts it


def test_adt_rejections_and_ignored_events() -> None:
    ok = adt("A01", "C-1", "20260101130000+0000", "ICU^1^2").decode()
    no_pid = ok.replace("PID|1||MRN-ADT-1^^^H^MR|", "PID|1|||")
    p = parse_adt(no_pid, secret=KEY, zone=None, window=REPLAY)
    assert (p.ack_code, p.reject.reason, p.reject.field) == ("AR", "missing_field", "PID-3")  # type: ignore[union-attr]
    naive = ok.replace("EVN|A01|20260101130000+0000", "EVN|A01|20260101130000")
    p = parse_adt(naive, secret=KEY, zone=None, window=REPLAY)
    assert (p.ack_code, p.reject.reason) == ("AE", "naive_timestamp")  # type: ignore[union-attr]
    future = ok.replace("EVN|A01|20260101130000+0000", "EVN|A01|99991231235959+0000")
    p = parse_adt(future, secret=KEY, zone=None, window=TimeWindowSettings())
    assert (p.ack_code, p.reject.reason) == ("AE", "time_out_of_range")  # type: ignore[union-attr]
    a31 = ok.replace("ADT^A01^ADT_A01", "ADT^A31^ADT_A05")
    p = parse_adt(a31, secret=KEY, zone=None, window=REPLAY)
    assert (p.ack_code, p.ignored, p.event) == ("AA", "adt_event", None)


def test_census_follows_moves_in_event_time_and_late_events() -> None:
    def ev(p: str, kind: str, t: float, ward: str | None = None, bed: str | None = None) -> records.AdtEvent:
        return records.AdtEvent(p, "s", int(t), t, kind, ward, bed, None, None, None, None, None)

    c = BedCensus()
    c.apply(ev("a", "admit", 100, "W", "1"), "R1")
    c.apply(ev("a", "transfer", 200, "W", "2"), "R1")
    c.apply(ev("b", "admit", 250, "W", "1"), "R1")
    c.apply(ev("a", "transfer", 260, "W", None))  # an A08 without a bed moves nobody
    c.apply(ev("b", "discharge", 400))
    assert [c.occupant("W", "R1", "1", t) for t in (50, 150, 220, 300, 450)] == [None, "a", None, "b", None]
    assert [c.occupant("W", "", "2", t) for t in (150, 300)] == [None, "a"]  # no room from the monitor: unique
    assert c.apply(ev("b", "discharge", 400)) is False  # the same event twice (own + topic) counts once
    c.apply(ev("c", "admit", 500, "W", "1"), "R1")
    c.apply(ev("d", "admit", 500, "W", "1"), "R7")  # another room, same bed id: ambiguous without a room
    assert c.occupant("W", "", "1", 600) is None and c.occupant("W", "R7", "1", 600) == "d"


def test_projection_keeps_only_the_allow_list() -> None:
    raw = (b"MSH|^~\\&|GW|ICU|||20260101||ORU^R01|DOE JANE|P|2.6\rPID|||MRN-9||DOE^JANE||19550302\r"
           b"NTE|1||call 555-0100\rPV1||I|ICU^1^4|||||||||||||||V-9\r"
           b"OBX|1|ST|8867-4^Heart rate^LN||DOE JANE|/min|||||F|||20260101\r"
           b"OBX|2|NM|8867-4^HR^LN||88|/min|||||F")  # fmt: skip
    text = project(raw).decode()
    for planted in ("MRN-9", "DOE", "JANE", "19550302", "555-0100", "V-9", "call", "Heart rate"):
        assert planted not in text
    p = orjson.loads(text)
    assert p["segments"] == ["MSH", "PID", "NTE", "PV1", "OBX", "OBX"] and p["msh"]["control_id"] == "<8 chars>"
    assert [o.get("value") for o in p["obx"]] == [None, "88"] and p["pv1"] == {"class": "I", "ward": "ICU",
                                                                                "room": "1", "bed": "4"}


# ------------------------------------------------------------------------------------------------ listener
def _env(ingest_env, **ingest):  # type: ignore[no-untyped-def]
    s = ingest_env(**ingest)
    s.time_window = REPLAY
    return s


def test_bed_association_over_mllp_with_census_from_own_adt_and_the_adt_topic(ingest_env, caplog) -> None:  # type: ignore[no-untyped-def]
    s = _env(ingest_env)
    other = patient_key("MRN-OTHER-FEED", None, KEY)  # admitted by another feed, straight onto the adt topic
    before = records.encode_adt(patient=other, source="adt-other", seq=1, time=datetime(2026, 1, 1, 11, tzinfo=UTC),
                                kind="admit", ward="ICU-C", bed="9")  # fmt: skip
    after = records.encode_adt(patient=other, source="adt-other", seq=2, time=datetime(2026, 1, 1, 12, tzinfo=UTC),
                               kind="transfer", ward="ICU-D", bed="1")  # fmt: skip
    asyncio.run(produce_many(s, s.topic("adt"), [(other.encode(), before)]))
    me = patient_key("MRN-ADT-1", "V-1", KEY)
    caplog.set_level(logging.INFO, logger="vigil")

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            acks = await exchange(listener.port, [
                frame(adt("A01", "A-1", "20260101120000+0000", "ICU-A^R1^B3")),
                frame(bed_oru("O-1", "ICU-A^R1^B3", vitals("20260101121000+0000"))),
                frame(bed_oru("O-2", "ICU-A^^B3", vitals("20260101121500+0000"))),  # no room: unique bed
                frame(bed_oru("O-3", "ICU-A^R1^B3", vitals("20260101115000+0000"))),  # before the admit: empty
                frame(bed_oru("O-4", "ICU-Z^R1^B3", vitals("20260101121000+0000"))),  # a bed nobody was in
                frame(bed_oru("O-5", "ICU-C^^9", vitals("20260101113000+0000"))),  # other feed's ADT (catch-up)
            ], n_acks=6)  # fmt: skip
            assert [msa(a) for a in acks] == ["AA", "AA", "AA", "AE", "AE", "AA"]
            assert all("unknown or empty bed" in errs(a)[0] and "PV1^1^3" in errs(a)[0] for a in acks[3:5])
            await produce_many(s, s.topic("adt"), [(other.encode(), after)])  # while the listener runs
            deadline = time.monotonic() + 20
            while listener.census.occupant("ICU-D", "", "1", datetime(2026, 1, 1, 13, tzinfo=UTC).timestamp()) \
                    is None and time.monotonic() < deadline:  # fmt: skip
                await asyncio.sleep(0.05)
            (ack,) = await exchange(listener.port, [frame(bed_oru("O-6", "ICU-D^^1", vitals("20260101130000+0000")))])
            assert msa(ack) == "AA"
            got = await read_at_least(s, s.topic("vitals"), 12)
            dead = await read_at_least(s, s.topic("dead-letter"), 2)
        finally:
            await listener.stop()
        assert [r.key.decode() for r in got] == [me] * 6 + [other] * 6
        assert sorted(orjson.loads(r.value)["reason"] for r in dead) == ["unknown_bed", "unknown_bed"]
        assert listener.census.occupant("ICU-A", "R1", "B3", datetime(2026, 1, 1, 13, tzinfo=UTC).timestamp()) == me

    asyncio.run(main())
    start_lines = [r.getMessage() for r in caplog.records if "site_timezone" in r.getMessage()]
    assert len(start_lines) == 1 and "not set" in start_lines[0]


def test_bed_association_off_and_site_timezone_hint_in_every_ae(ingest_env, caplog) -> None:  # type: ignore[no-untyped-def]
    s = _env(ingest_env, bed_association=False)
    caplog.set_level(logging.INFO, logger="vigil")

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            acks = await exchange(listener.port, [
                frame(adt("A01", "A-1", "20260101120000+0000", "ICU-A^R1^B3")),
                frame(bed_oru("O-1", "ICU-A^R1^B3", vitals("20260101121000+0000"))),
                frame(bed_oru("O-2", "ICU-A^R1^B3", vitals("20260101121000"), pid="MRN-TZ")),  # naive times
                frame(adt("A02", "A-2", "20260101130000", "ICU-B^R1^B1")),  # naive ADT time
            ], n_acks=4)  # fmt: skip
        finally:
            await listener.stop()
        assert [msa(a) for a in acks] == ["AA", "AR", "AE", "AE"]
        assert "bed association is off" in errs(acks[1])[0]
        assert len(errs(acks[2])) == 3 and all("site_timezone" in e for e in errs(acks[2]) + errs(acks[3]))

    asyncio.run(main())
    assert any("bed association is off" in r.getMessage() for r in caplog.records)
    assert sum("ingest.site_timezone is not set" in r.getMessage() for r in caplog.records) == 1


def test_far_future_times_get_AE_and_a_dead_letter(ingest_env) -> None:  # type: ignore[no-untyped-def]
    s = ingest_env()  # the live window (default)
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")

    async def main() -> None:
        listener = await Hl7Listener(s).start()
        try:
            acks = await exchange(listener.port, [
                frame(bed_oru("O-1", "X^^1", [HR.format(n=1, v=80, t=now),
                                             HR.format(n=2, v=81, t="99991231235959+0000")], pid="MRN-T")),
                frame(bed_oru("O-2", "X^^1", [HR.format(n=1, v=80, t="99991231235959+0000")], pid="MRN-T")),
                frame(adt("A01", "A-1", "99991231235959+0000", "ICU-A^R1^B3")),
            ], n_acks=3)  # fmt: skip
            dead = await read_at_least(s, s.topic("dead-letter"), 3)
            got = await read_at_least(s, s.topic("vitals"), 1)
        finally:
            await listener.stop()
        assert [msa(a) for a in acks] == ["AE", "AE", "AE"]
        assert "OBX^2^14" in errs(acks[0])[0] and "after the clock" in errs(acks[0])[0]
        assert "EVN^1^2" in errs(acks[2])[0]
        assert [orjson.loads(r.value)["reason"] for r in dead] == ["time_out_of_range"] * 3
        assert len(got) == 1  # only the plausible OBX was published
        assert len(await read_topic(s, s.topic("adt"), quiet_s=0.5)) == 0

    asyncio.run(main())


def test_adt_when_the_broker_does_not_acknowledge_gets_AR_and_changes_no_census(ingest_env, caplog) -> None:  # type: ignore[no-untyped-def]
    from vigil.ingest.publish import Publisher

    class DownPublisher(Publisher):
        async def send(self, recs):  # type: ignore[no-untyped-def]
            raise TimeoutError("broker down")

    s = _env(ingest_env)
    caplog.set_level(logging.INFO, logger="vigil")

    async def main() -> None:
        listener = await Hl7Listener(s, publisher=DownPublisher(s)).start()
        try:
            (ack,) = await exchange(listener.port, [frame(adt("A01", "MRN-ADT-1", "20260101120000+0000", "W^1^2"))])
        finally:
            await listener.stop()
        assert msa(ack) == "AR" and "207^" in errs(ack)[0] and "resend" in errs(ack)[0]
        assert listener.census.occupant("W", "1", "2", datetime(2026, 1, 1, 13, tzinfo=UTC).timestamp()) is None

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(lines) == 1 and "MRN-ADT-1" not in lines[0] and "<9 chars>" in lines[0]  # MSH-10 = the MRN


PLANTED = ("MRN-PLANT-4711", "PLANTSURNAME", "PLANTGIVEN", "555-867-5309", "19470815", "V-PLANT-9")


def planted_messages() -> list[bytes]:
    """Rejected messages of several kinds, each with the planted identifiers in every segment it has."""
    mrn, sur, giv, tel, dob, visit = PLANTED
    pid = f"PID|1||{mrn}^^^H^MR~{tel}||{sur}^{giv}||{dob}|F|||1 {sur} ST^^TOWN||{tel}"
    nk1 = f"NK1|1|{sur}^{giv}|SPO||{tel}"
    pv1 = f"PV1|1|I|ICU-P^R1^B1||||{sur}^{giv}^DR|||||||||||||{visit}"
    nte = f"NTE|1||patient {giv} {sur} born {dob} tel {tel} mrn {mrn}"
    obr = f"OBR|1|{mrn}|{visit}|182777000^monitoring {sur}^SCT|||20260101120000+0000"
    obx_bad = [f"OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{sur}|264864|||||F",  # a name as a value: not a number
               f"OBX|2|ST|8867-4^{giv}^LN||{tel} {dob}|/min|||||F|||20260101120000+0000",
               f"OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC||{dob}|264864|||||F|||20260101120000+0000",
               "OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC||88|264864|||||F|||99991231235959+0000"]
    msh = "MSH|^~\\&|MON|ICU|VIGIL|H|20260101120000+0000||{t}|{c}|P|2.6"
    return [
        ("\r".join([msh.format(t="ORU^R01", c="P-1"), pid, nk1, pv1, nte, obr, *obx_bad]) + "\r").encode(),  # AE
        ("\r".join([msh.format(t="ORU^R01", c="P-2"), f"PID|||^^^H^MR||{sur}^{giv}||{dob}", pv1, nte, obr,
                    obx_bad[0]]) + "\r").encode(),  # no PID-3, unknown bed -> AE  # fmt: skip
        ("\r".join([msh.format(t="ORU^R01", c=mrn), pid, nk1, pv1, nte, obx_bad[0]]) + "\r").encode(),  # MRN as id
        ("\r".join([msh.format(t="MDM^T02", c="P-4"), pid, nk1, pv1, nte]) + "\r").encode(),  # unsupported type
        ("\r".join([msh.format(t="ADT^A01", c="P-5"), "EVN|A01|20260101120000", pid, nk1, pv1, nte]) + "\r").encode(),
        ("\r".join([msh.format(t="ADT^A03", c="P-6"), "EVN|A03|99991231235959+0000", pid, nk1, pv1]) + "\r").encode(),
        ("\r".join([msh.format(t="ADT^A02", c="P-7"), "EVN|A02|20260101120000+0000",
                    f"PID|1||||{sur}^{giv}||{dob}", nk1, pv1]) + "\r").encode(),  # fmt: skip
        ("\r".join([msh.format(t="ORU^R01", c="P-8"), f"PID|||\\{mrn}\\X||{sur}||\\{dob}", obx_bad[0]])
         + "\r").encode(),  # bad escapes around the MRN: python-hl7 would log the value  # fmt: skip
        f"MSH|^~\\&|MON|ICU\rPID|||{mrn}||{sur}^{giv}||{dob}|||||{tel}\rgarbage {{{{".encode(),  # unparseable
        f"{mrn} {sur} {tel} outside any frame".encode(),  # garbage between frames (not framed below)
    ]


def test_no_planted_identifier_reaches_any_topic_or_the_log(ingest_env, caplog) -> None:  # type: ignore[no-untyped-def]
    """Rejected messages of several kinds, identifiers planted in every segment: the dead letters are allow-list
    projections, and no topic with the test prefix nor the listener's log holds any of them."""
    from aiokafka.admin import AIOKafkaAdminClient

    s = ingest_env()
    s.time_window = REPLAY  # 2026-01-01 is plausible, 9999 is not
    caplog.set_level(logging.DEBUG)  # every logger (vigil, python-hl7, aiokafka)
    msgs = planted_messages()

    async def main() -> list[bytes]:
        listener = await Hl7Listener(s).start()
        try:
            payload = b"".join(frame(m) for m in msgs[:-1]) + msgs[-1] + frame(msgs[0])
            acks = await exchange(listener.port, [payload], n_acks=len(msgs))
            assert [msa(a) for a in acks] == ["AE", "AE", "AE", "AR", "AE", "AE", "AR", "AE", "AR", "AE"]
            await read_at_least(s, s.topic("dead-letter"), 15)
        finally:
            await listener.stop()
        admin = AIOKafkaAdminClient(**s.kafka.client_kwargs())
        await admin.start()
        try:
            topics = sorted(t for t in await admin.list_topics() if t.startswith(s.topic_prefix))
        finally:
            await admin.close()
        assert s.topic("dead-letter") in topics and s.topic("vitals") in topics
        blobs = []
        for t in topics:
            for r in await read_topic(s, t, quiet_s=0.5):
                blobs += [r.value or b"", r.key or b""]
                if t == s.topic("dead-letter"):
                    d = orjson.loads(r.value)
                    blobs.append(base64.b64decode(d["raw_b64"]) if d["raw_b64"] else b"")
                    raw = orjson.loads(blobs[-1]) if blobs[-1] else {}
                    assert raw.get("format") == "hl7v2-allowlist/1"
        return blobs

    blobs = asyncio.run(main())
    assert len(blobs) >= 3 * 15
    text = b"\n".join(blobs).decode("utf-8", "replace") + "\n".join(r.getMessage() for r in caplog.records)
    found = [p for p in (*PLANTED, "1947-08-15") if p in text]
    assert found == []


# ------------------------------------------------------------------------------------------------ done when
def test_adt_then_bed_orus_are_scored_in_the_right_ward_transfer_moves_discharge_closes(ingest_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Done-when of issue 19 (HL7 side): ADT^A01, then ORU without PID-3 for that bed -> AA and a running worker
    scores that patient in the admitting ward; ADT^A02 moves the ward; ADT^A03 closes the stay (its last row is
    scored at the discharge, and the bed is empty afterwards)."""
    from vigil.tools.procs import WorkerProcess

    s = _env(ingest_env)
    me = patient_key("MRN-ADT-1", "V-1", KEY)
    t = "20260101{:02d}{:02d}00+0000".format
    extra = {"VIGIL_TIME_WINDOW__MODE": "replay", "VIGIL_STATE__DISCHARGE_GRACE_S": "0"}
    with WorkerProcess(s, log_path=tmp_path / "worker.log", extra_env=extra) as w:
        w.wait_ready()

        async def main() -> tuple[list[str], list]:  # type: ignore[type-arg]
            listener = await Hl7Listener(s).start()
            try:
                seq = [frame(adt("A01", "A-1", t(12, 0), "ICU-A^R1^B3")),
                       frame(bed_oru("O-12", "ICU-A^R1^B3", vitals(t(12, 10)))),
                       frame(bed_oru("O-13", "ICU-A^R1^B3", vitals(t(13, 10), hr=96, rr=20))),
                       frame(bed_oru("O-14", "ICU-A^R1^B3", vitals(t(14, 10), hr=104, rr=22))),
                       frame(adt("A02", "A-2", t(14, 30), "WARD-B^R2^B7", prior="ICU-A^R1^B3")),
                       frame(bed_oru("O-15a", "ICU-A^R1^B3", vitals(t(15, 10)))),  # the old bed is empty now
                       frame(bed_oru("O-15", "WARD-B^R2^B7", vitals(t(15, 10), hr=110, rr=24))),
                       frame(bed_oru("O-16", "WARD-B^R2^B7", vitals(t(16, 10), hr=112, rr=25))),
                       frame(adt("A03", "A-3", t(16, 30), "WARD-B^R2^B7")),
                       frame(bed_oru("O-17", "WARD-B^R2^B7", vitals(t(17, 10))))]  # after the discharge
                acks = await exchange(listener.port, seq, n_acks=len(seq))
                tail = await TopicTail(s, s.topic("scores")).start()
                try:
                    rows = lambda recs: {orjson.loads(r.value)["row"] for r in recs}  # noqa: E731
                    scores = await tail.wait_for(lambda recs: rows(recs) >= {0, 1, 2, 3}, timeout_s=90)
                finally:
                    await tail.stop()
            finally:
                await listener.stop()
            return [msa(a) for a in acks], scores

        codes, recs = asyncio.run(main())
        deadline, in_state = time.monotonic() + 30, None
        while in_state != 0.0 and time.monotonic() < deadline:  # the discharge closes the stay
            m = re.search(r"^vigil_patients_in_state (\S+)$", w.metrics_text(), re.MULTILINE)
            in_state = float(m.group(1)) if m else None
            time.sleep(0.2)
        text = w.metrics_text()
        assert w.stop() == 0
    assert in_state == 0.0
    by_ward = {m.group(1): float(m.group(2)) for m in re.finditer(r'^vigil_ward_events_total\{ward="([^"]+)"\} (\S+)$',
                                                                  text, re.MULTILINE)}  # fmt: skip
    assert sum(by_ward.values()) == 1 + 9 + 1 + 6 + 1  # A01, 3 ORU x 3 OBX, A02, 2 x 3, A03: all applied
    assert codes == ["AA", "AA", "AA", "AA", "AA", "AE", "AA", "AA", "AA", "AE"]
    scores = [orjson.loads(r.value) for r in recs]
    assert {d["patient"] for d in scores} == {me}
    ward = {d["row"]: d["ward"] for d in scores}
    # rows 0, 1 closed in ICU-A; row 2 (14:00-15:00) is closed after the 14:30 transfer, row 3 in WARD-B; the
    # discharge (16:30) closes the stay in row 4, which the worker does not score (it was not complete)
    assert ward == {0: "ICU-A", 1: "ICU-A", 2: "WARD-B", 3: "WARD-B"}


# ------------------------------------------------------------------------------------------------ worker
def test_worker_a13_cancel_discharge_withdraws_a_discharge_in_its_grace_period() -> None:
    """An admit (A13, cancels discharge) of the same stay (admit_time = the stay's admission) after a discharge
    that is still in its grace period keeps the stay open; an admit with another admission time does not."""
    from vigil.config import load_settings
    from vigil.worker.batch import InEvent, Processor
    from vigil.worker.engine import load_scorers

    t0, hour = datetime(2026, 1, 1, tzinfo=UTC).timestamp(), 3600.0
    s = load_settings(None, state={"discharge_grace_s": 3600, "admit_grace_s": 60})

    def adt_ev(p: str, t_h: float, kind: str, seq: int, admit_h: float = 0.0) -> InEvent:
        ev = records.AdtEvent(p, "hl7/ADT", seq, t0 + t_h * hour, kind, "W1", "3", None, t0 + admit_h * hour,
                              None, None, None)  # fmt: skip
        return InEvent(ev, "adt", 0, t0)

    def hr(p: str, t_h: float, seq: int) -> InEvent:
        return InEvent(records.Observation(p, "mon", seq, t0 + t_h * hour, 0, 80.0, "vital"), "vitals", 0, t0)

    proc = Processor(s, load_scorers(s))
    for p in ("pt-a13", "pt-new"):
        proc.process([adt_ev(p, 0, "admit", 1), hr(p, 0.5, 2), hr(p, 1.5, 3), adt_ev(p, 2.2, "discharge", 4)])
    proc.process([adt_ev("pt-a13", 2.4, "admit", 5, admit_h=0.0),  # A13: the same stay
                  adt_ev("pt-new", 2.4, "admit", 5, admit_h=2.4)])  # another admission: the discharge stands
    proc.finalize_due(now=time.time() + 2 * 3600)
    assert proc.states[0]["pt-a13"].discharged is False and proc.states[0]["pt-a13"].discharge_time is None
    assert proc.states[0]["pt-new"].discharged is True
    out = proc.process([hr("pt-a13", 3.5, 6)])
    assert [orjson.loads(v)["row"] for _, v in out.scores] == [1, 2]  # the stay goes on: rows 1, 2 closed, scored
