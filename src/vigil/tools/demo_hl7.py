"""The demo's HL7 step: an ADT^A01 and ORU^R01 without PID-3 for the same bed, over MLLP to a real listener.

A gateway that does not know the patient sends only the bed (PV1-3); the listener's bed census (from the
A01 it just accepted) attributes the observations to the admitted patient (``AA``); an ORU for a bed nobody
occupies is answered ``AE`` (``unknown_bed``) and dead-lettered. Times are the current clock (the live
plausible-time window accepts them); the two ORU fall in the patient's first hour, so no row is closed and
the demo's score count is unchanged.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from vigil.config import Settings
from vigil.ingest.events import patient_key
from vigil.ingest.mllp import Framer, frame
from vigil.ingest.server_hl7 import Hl7Listener

__all__ = ["bed_association_demo"]


def _messages(now: datetime) -> list[bytes]:
    t = lambda m: (now + timedelta(minutes=m)).strftime("%Y%m%d%H%M%S+0000")  # noqa: E731
    hr = "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{v}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{t}"
    msh = "MSH|^~\\&|{app}|DEMO|VIGIL|H|{t}||{type}|{c}|P|2.6"
    adt = [msh.format(app="ADT", t=t(0), type="ADT^A01^ADT_A01", c="DEMO-A01"), f"EVN|A01|{t(0)}",
           "PID|1||DEMO-MRN-1^^^H^MR||DEMO^PATIENT||19600101|F", "PV1|1|I|DEMO-ICU^1^4"]  # fmt: skip

    def oru(c: str, bed: str, v: int, m: int) -> str:
        return "\r".join([msh.format(app="GW", t=t(m), type="ORU^R01^ORU_R01", c=c), "PID|||", f"PV1||I|{bed}",
                          hr.format(v=v, t=t(m))])  # fmt: skip

    return [("\r".join(adt) + "\r").encode()] + [
        (oru(*a) + "\r").encode()
        for a in (
            ("DEMO-O1", "DEMO-ICU^1^4", 92, 1),
            ("DEMO-O2", "DEMO-ICU^^4", 95, 2),
            ("DEMO-O3", "DEMO-ICU^1^9", 80, 2),
        )
    ]


async def bed_association_demo(settings: Settings) -> dict[str, Any]:
    """Send the messages; the ACK codes and the patient the bed ORU were attributed to (a pseudonym)."""
    listener = await Hl7Listener(settings).start(port=0)
    try:
        reader, writer = await asyncio.open_connection(settings.ingest.host, listener.port)
        framer, codes = Framer(), []
        try:
            for m in _messages(datetime.now(UTC).replace(microsecond=0)):
                writer.write(frame(m))
                await writer.drain()
                got: list[str] = []
                while not got:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                    if not data:
                        break
                    got = [f.data.decode().split("\rMSA|")[1].split("|")[0] for f in framer.feed(data)]
                codes += got
        finally:
            writer.close()
    finally:
        await listener.stop()
    admitted = patient_key("DEMO-MRN-1", None, settings.pseudonym_key.get_secret_value())
    return {"acks": codes, "patient": admitted, "events": listener.stats.counts.get("events", 0)}
