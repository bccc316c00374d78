"""The edge's doors, with real sockets and certificates made here (the ``cryptography`` package):
TLS and mutual TLS for MLLP, HTTPS + bearer tokens for FHIR, connection limits, per-message deadlines,
the partial-frame memory budget, the development-key refusal, and exact bind addresses."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import hl7
import orjson
import pytest

from vigil.config import Settings, TimeWindowSettings
from vigil.ingest.mllp import Framer, frame
from vigil.ingest.security import hash_token
from vigil.ingest.server_fhir import FhirServer
from vigil.ingest.server_hl7 import Hl7Listener
from vigil.tools.procs import WorkerProcess

pytestmark = pytest.mark.broker
TOKEN = "tok-" + "a1b2c3d4" * 4


# ----------------------------------------------------------------------------------------------- helpers
def make_pki(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 / localhost, a client certificate (both signed by the CA), and
    a second, untrusted CA's client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (tmp / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))  # fmt: skip
        (tmp / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def ca(stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(name(stem))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))  # fmt: skip
        write(stem, key, cert)
        return key, cert

    def leaf(stem: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(issuer[1].subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))  # fmt: skip
        if server:
            import ipaddress

            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)  # fmt: skip
        write(stem, key, b.sign(issuer[0], hashes.SHA256()))

    root, rogue = ca("ca"), ca("rogue-ca")
    leaf("server", root, server=True)
    leaf("client", root, server=False)
    leaf("rogue-client", rogue, server=False)
    return {p.stem + p.suffix: p for p in tmp.iterdir()}


def client_ctx(pki: dict[str, Path], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    if cert:
        ctx.load_cert_chain(str(pki[f"{cert}.pem"]), str(pki[f"{cert}.key"]))
    return ctx


def oru(control: str, hr: int = 80) -> bytes:
    segs = [f"MSH|^~\\&|MON|ICU|VIGIL|H|20260101120000+0000||ORU^R01^ORU_R01|{control}|P|2.6",
            "PID|||MRN-TLS-1^^^H^MR||DOE^JANE", "PV1||I|ICU^1^4",
            "OBR|1|||182777000^monitoring of patient^SCT|||20260101120000+0000",
            f"OBX|1|NM|8867-4^Heart rate^LN||{hr}|/min|||||F|||20260101120000+0000"]  # fmt: skip
    return "\r".join(segs).encode() + b"\r"


def heart_rate(mrn: str = "MRN-TLS-2") -> dict:  # type: ignore[type-arg]
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"identifier": {"value": mrn}}, "effectiveDateTime": "2026-01-01T12:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}  # fmt: skip


def replay_env(ingest_env, **ingest: object) -> Settings:  # type: ignore[no-untyped-def]
    s = ingest_env(**ingest)
    s.time_window = TimeWindowSettings(mode="replay")  # the test messages are dated 2026-01-01
    return s


async def send_mllp(port: int, data: bytes, ctx: ssl.SSLContext | None) -> bytes:
    """Send ``data`` and read until the first ACK or EOF (b'' = refused / closed without an answer)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None), 10)
    try:
        writer.write(data)
        await writer.drain()
        framer = Framer()
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                return b""
            frames = framer.feed(chunk)
            if frames:
                return frames[0].data  # type: ignore[union-attr]
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------- MLLP
def test_mllp_tls_refuses_plain_text_and_unknown_clients(ingest_env, tmp_path, all_records) -> None:  # type: ignore[no-untyped-def]
    """Mutual TLS: a plain-text sender and a TLS client without (or with an untrusted) certificate are refused
    and publish nothing; a client with a certificate of the site's CA gets AA and its one event is published."""
    pki = make_pki(tmp_path)
    s = replay_env(ingest_env, tls={"certfile": pki["server.pem"], "keyfile": pki["server.key"],
                                    "client_cafile": pki["ca.pem"]})  # fmt: skip

    async def main() -> tuple[list[object], dict[str, list[bytes]]]:
        listener = await Hl7Listener(s).start()
        outcomes: list[object] = []
        try:
            try:
                outcomes.append(await send_mllp(listener.port, frame(oru("PLAIN-1")), None))
            except (ConnectionError, OSError) as exc:
                outcomes.append(type(exc).__name__)
            for cert in (None, "rogue-client"):
                try:
                    outcomes.append(await send_mllp(listener.port, frame(oru(f"TLS-{cert}")), client_ctx(pki, cert)))
                except (ConnectionError, OSError, ssl.SSLError) as exc:
                    outcomes.append(type(exc).__name__)
            ack = await send_mllp(listener.port, frame(oru("MTLS-OK")), client_ctx(pki, "client"))
            outcomes.append(str(hl7.parse(ack.decode()).extract_field("MSA", 1, 1, 1, 1)))
        finally:
            await listener.stop()
        return outcomes, await all_records(s)

    outcomes, topics = asyncio.run(main())
    assert outcomes[0] in (b"", "ConnectionResetError", "BrokenPipeError"), outcomes  # no ACK to plain text
    assert all(o in (b"", "SSLError", "ConnectionResetError", "SSLCertVerificationError", "BrokenPipeError")
               for o in outcomes[1:3]), outcomes  # fmt: skip
    assert outcomes[3] == "AA"
    assert len(topics[s.topic("vitals")]) == 1  # only the mutually authenticated sender's event
    assert sum(len(v) for v in topics.values()) == 1  # nothing else anywhere (no dead letter either)


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value,union-attr]


def _start_cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "vigil", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]  # the listener prints its address
    assert line, proc.stderr.read()  # type: ignore[union-attr]
    return proc, line


def _stop_cli(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return err


def test_mllp_connection_flood_and_slow_senders_stay_in_bounds(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """`vigil ingest hl7` as a process with max_connections=40, max_buffered_bytes=8 MiB, deadline 2 s: 200
    connections each sending a 900 kB partial frame, then 20 senders at one byte per 0.2 s. Refused
    connections and cut-off senders are counted; the listener's peak RSS stays within baseline + 40 MiB (the
    budget of 8 MiB plus read buffers and allocator slack); every slow sender is disconnected."""
    s = replay_env(ingest_env)
    env = {**os.environ, "VIGIL_PSEUDONYM_KEY": "test-pseudonym-key", "VIGIL_INGEST__MAX_CONNECTIONS": "40",
           "VIGIL_INGEST__MAX_BUFFERED_BYTES": str(8 * 1_048_576), "VIGIL_INGEST__MESSAGE_DEADLINE_S": "2",
           "VIGIL_LOG_LEVEL": "INFO"}  # fmt: skip
    proc, addr = _start_cli(["--bootstrap", s.kafka.bootstrap_servers or "", "--topic-prefix", s.topic_prefix,
                             "ingest", "hl7", "--port", "0"], env)  # fmt: skip
    port = int(addr.rsplit(":", 1)[1])
    partial = b"\x0bMSH|^~\\&|FLOOD|" + b"x" * 900_000
    try:
        baseline, _ = _rss_kib(proc.pid)

        async def flood() -> None:
            async def one() -> None:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(partial)
                    await asyncio.wait_for(w.drain(), 10)
                    await asyncio.sleep(1.0)
                    w.close()
                except (ConnectionError, OSError, TimeoutError):
                    pass

            await asyncio.gather(*(one() for _ in range(200)))

        async def slow() -> list[bool]:
            async def one() -> bool:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                try:
                    w.write(b"\x0bMSH|")
                    for _ in range(150):  # 30 s of trickling at most; the deadline is 2 s
                        await asyncio.sleep(0.2)
                        if r.at_eof():
                            return True
                        try:
                            w.write(b"x")
                            await w.drain()
                        except (ConnectionError, OSError):
                            return True
                    return False
                finally:
                    w.close()

            return await asyncio.gather(*(one() for _ in range(20)))

        asyncio.run(flood())
        rss_after_flood, peak = _rss_kib(proc.pid)
        time.sleep(0.5)  # the listener sees the flood's connections close
        cut = asyncio.run(slow())
    finally:
        err = _stop_cli(proc)
    stats = re.search(r"hl7 listener stopped: (\{.*\})", err)
    assert stats, err[-2000:]
    counts = eval(stats.group(1))  # noqa: S307 - our own log line, a dict of ints
    assert all(cut), cut  # every slow sender was disconnected
    assert counts["deadline_exceeded"] >= 20
    assert counts["connections"] >= 40 + 20  # the limit's worth of the flood, and every slow sender
    assert counts.get("connections_refused", 0) > 0 and counts.get("buffer_budget_exceeded", 0) > 0
    assert peak - baseline < 40 * 1024, f"RSS {baseline} KiB -> peak {peak} KiB (after flood {rss_after_flood})"
    print(f"flood: RSS baseline {baseline / 1024:.1f} MiB, after {rss_after_flood / 1024:.1f} MiB, peak "
          f"{peak / 1024:.1f} MiB; {counts}")


# ------------------------------------------------------------------------------------------------- FHIR
def test_fhir_https_and_bearer_tokens(ingest_env, tmp_path, all_records) -> None:  # type: ignore[no-untyped-def]
    """HTTPS + hashed bearer tokens: plain HTTP gets no answer, no / a wrong token gets 401 + WWW-Authenticate
    before the body is read (a malformed body is not even dead-lettered), the metadata needs no token, and
    only the authenticated create is published."""
    pki = make_pki(tmp_path)
    s = replay_env(ingest_env, tls={"certfile": pki["server.pem"], "keyfile": pki["server.key"]},
                   fhir_token_sha256=[hash_token(TOKEN)])  # fmt: skip
    assert TOKEN not in s.model_dump_json() and hash_token(TOKEN) not in s.model_dump_json()  # SecretStr

    async def main() -> dict[str, object]:
        server = await FhirServer(s).start()
        base = f"https://localhost:{server.port}/fhir"
        got: dict[str, object] = {}
        try:
            async with aiohttp.ClientSession() as http:
                try:
                    async with http.post(f"http://127.0.0.1:{server.port}/fhir/Observation",
                                         data=orjson.dumps(heart_rate())) as r:  # fmt: skip
                        got["plain"] = r.status
                except aiohttp.ClientError as exc:
                    got["plain"] = type(exc).__name__
                ctx = client_ctx(pki)
                hdr = {"Content-Type": "application/fhir+json"}
                for name, auth in (("none", None), ("wrong", "Bearer not-the-token"), ("basic", "Basic eDp5")):
                    h = {**hdr, **({"Authorization": auth} if auth else {})}
                    async with http.post(f"{base}/Observation", data=b"{not json", headers=h, ssl=ctx) as r:
                        got[name] = (r.status, r.headers.get("WWW-Authenticate"), await r.json(content_type=None))
                async with http.get(f"{base}/metadata", ssl=ctx) as r:
                    got["metadata"] = (r.status, await r.json(content_type=None))
                h = {**hdr, "Authorization": f"Bearer {TOKEN}"}
                async with http.post(f"{base}/Observation", data=orjson.dumps(heart_rate()), headers=h, ssl=ctx) as r:
                    got["ok"] = (r.status, r.headers.get("Location"))
        finally:
            await server.stop()
        got["topics"] = await all_records(s)
        return got

    got = asyncio.run(main())
    assert isinstance(got["plain"], str), got["plain"]  # an aiohttp.ClientError: no HTTP answer to plain text
    for name in ("none", "wrong", "basic"):
        status, challenge, body = got[name]  # type: ignore[misc]
        assert status == 401 and challenge.startswith('Bearer realm="vigil-fhir"'), got[name]
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"
    assert 'error="invalid_token"' in got["wrong"][1]  # type: ignore[index]
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    status, cap = got["metadata"]  # type: ignore[misc]
    assert status == 200 and CapabilityStatement.model_validate(cap).rest[0].security.service  # type: ignore[index]
    status, location = got["ok"]  # type: ignore[misc]
    assert status == 201 and location.startswith("https://localhost:")
    topics: dict[str, list[bytes]] = got["topics"]  # type: ignore[assignment]
    assert len(topics[s.topic("vitals")]) == 1 and topics[s.topic("dead-letter")] == []
    assert sum(len(v) for v in topics.values()) == 1


def test_fhir_connection_limit_and_slow_senders(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """max_connections=3: a 4th connection gets 503 and is closed; a request trickled one header byte at a time
    is cut off after message_deadline_s (1 s) — the server's own counters say so."""
    s = replay_env(ingest_env, max_connections=3, message_deadline_s=1.0)

    async def main() -> tuple[bytes, list[bool], dict[str, int], int]:
        server = await FhirServer(s).start()
        port = server.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            for _, w in held:  # slow senders: the request line, then one byte every 0.1 s
                w.write(b"POST /fhir/Observation HTTP/1.1\r\nHost: x\r\n")
            await asyncio.sleep(0.1)
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)
            busy = await asyncio.wait_for(r4.read(), 10)
            w4.close()

            async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
                for _ in range(100):  # 10 s at most; the deadline is 1 s
                    try:
                        w.write(b"X")
                        await w.drain()
                    except (ConnectionError, OSError):
                        return True
                    await asyncio.sleep(0.1)
                    if r.at_eof() or w.transport.is_closing():
                        return True
                return False

            cut = await asyncio.gather(*(trickle(r, w) for r, w in held))
            await asyncio.sleep(0.2)
            open_after = server.open_connections
        finally:
            for _, w in held:
                w.close()
            await server.stop()
        return busy, list(cut), server.stats.as_dict(), open_after

    busy, cut, stats, open_after = asyncio.run(main())
    assert busy.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert cut == [True, True, True] and stats["deadline_exceeded"] == 3 and stats["connections_refused"] == 1
    assert open_after == 0


# ----------------------------------------------------------------------------------------- other doors
def test_development_key_is_refused_without_dev_mode(settings_factory) -> None:  # type: ignore[no-untyped-def]
    s = settings_factory()
    env = {k: v for k, v in os.environ.items() if k not in ("VIGIL_DEV_MODE", "VIGIL_PSEUDONYM_KEY")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = s.kafka.bootstrap_servers or ""
    for args in (["ingest", "fhir", "--port", "0"], ["ingest", "hl7", "--port", "0"], ["worker", "--web-port", "0"]):
        res = subprocess.run([sys.executable, "-m", "vigil", "--topic-prefix", s.topic_prefix, *args], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode != 0, (args, res.stdout[-500:], res.stderr[-500:])
        assert "public development key" in res.stderr and "VIGIL_DEV_MODE=1" in res.stderr, res.stderr[-500:]


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process ``pid`` holds (/proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # per-word little endian
            out.append((socket.inet_ntop(fam, raw), int(hexport, 16)))
    return out


def test_every_server_binds_only_the_configured_address(settings_factory, topics_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The worker (Faust web server: web_bind) and both listeners with their metrics endpoints listen on
    127.0.0.1 only — read from the kernel's socket tables, not from the processes' logs."""
    s = settings_factory(pseudonym_key="test-pseudonym-key")
    topics_factory(s, partitions=1)
    env = {**os.environ, "VIGIL_PSEUDONYM_KEY": "test-pseudonym-key"}
    common = ["--bootstrap", s.kafka.bootstrap_servers or "", "--topic-prefix", s.topic_prefix, "ingest"]
    procs = [_start_cli([*common, "hl7", "--port", "0", "--metrics-port", "0"], env)[0],
             _start_cli([*common, "fhir", "--port", "0", "--metrics-port", "0"], env)[0]]  # fmt: skip
    try:
        with WorkerProcess(s, log_path=tmp_path / "worker.log") as w:
            w.wait_ready()
            assert w.proc is not None
            found = {"worker": _listening(w.proc.pid), "hl7": _listening(procs[0].pid),
                     "fhir": _listening(procs[1].pid)}  # fmt: skip
    finally:
        for p in procs:
            _stop_cli(p)
    assert len(found["hl7"]) == 2 and len(found["fhir"]) == 2, found  # listener + metrics
    assert any(port == w.web_port for _, port in found["worker"]), found
    assert {addr for socks in found.values() for addr, _ in socks} == {"127.0.0.1"}, found


def test_model_updates_accepted_only_when_the_registry_records_them(tmp_path) -> None:
    """A worker's check on a model-updates event (Registry.update_refusal): a promotion is accepted only when
    the history records it with the gate passed, or forced with a reason; a rollback only when recorded; the
    deployed serving version of a line with no history is accepted; shadows are always allowed."""
    import shutil

    from vigil.config import REPO_ROOT
    from vigil.registry import HISTORY_FILE, Registry

    root = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", root)
    reg = Registry(root)
    assert reg.update_refusal("sepsis-mlp", "2", "promote") is None  # gate passed (shipped history)
    assert reg.update_refusal("sepsis-gbm", "1", "promote") is None
    assert "not recorded as promoted" in (reg.update_refusal("sepsis-mlp", "1", "promote") or "")
    assert reg.update_refusal("sepsis-logreg", "1", "promote") is not None  # never promoted
    reg.switch("sepsis-logreg", "1", "promote", expect_from=None, forced=True, reason="")
    assert reg.update_refusal("sepsis-logreg", "1", "promote") is not None  # forced without a reason
    reg.switch("sepsis-logreg", "1", "promote", expect_from="1", forced=True, reason="incident 42: old model")
    assert reg.update_refusal("sepsis-logreg", "1", "promote") is None
    assert reg.update_refusal("sepsis-mlp", "1", "rollback") is not None
    reg.switch("sepsis-mlp", "1", "rollback", expect_from=None, reason="drill")
    assert reg.update_refusal("sepsis-mlp", "1", "rollback") is None
    assert reg.update_refusal("sepsis-mlp", "2", "shadow") is None and reg.update_refusal("x", "9", "unshadow") is None
    (root / HISTORY_FILE).unlink()  # a fresh deployment: serving.json as shipped, no history yet
    assert reg.update_refusal("sepsis-logreg", "1", "promote") is None  # serving.json now names it
    assert reg.update_refusal("sepsis-mlp", "2", "promote") is not None


def test_fhir_request_bodies_share_one_memory_budget(ingest_env) -> None:  # type: ignore[no-untyped-def]
    """max_buffered_bytes=4096: a request whose 4000-byte body is still arriving holds its reservation; a second
    request that does not fit gets 503 + Retry-After without its body being read; once the first sender is
    gone the budget is free again."""
    s = replay_env(ingest_env, max_buffered_bytes=4096, max_message_bytes=4096)

    def head(n: int) -> bytes:
        return (f"POST /fhir/Observation HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                f"Content-Length: {n}\r\n\r\n").encode()  # fmt: skip

    async def main() -> tuple[bytes, bytes, int, int]:
        server = await FhirServer(s).start()
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
            w1.write(head(4000) + b"{")
            await w1.drain()
            for _ in range(100):  # until the first request's body is being read
                if server.budget.held:
                    break
                await asyncio.sleep(0.05)
            held = server.budget.held
            r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
            w2.write(head(200) + b" " * 200)
            busy = await asyncio.wait_for(r2.read(), 10)
            w2.close()
            w1.close()
            await asyncio.sleep(0.3)
            r3, w3 = await asyncio.open_connection("127.0.0.1", server.port)
            w3.write(head(8) + b"not json")
            later = await asyncio.wait_for(r3.read(12), 10)
            w3.close()
            await asyncio.sleep(0.1)
            return busy, later, held, server.budget.held
        finally:
            await server.stop()

    busy, later, held, after = asyncio.run(main())
    assert held == 4000
    assert busy.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in busy and b'"code":"transient"' in busy
    assert later.startswith(b"HTTP/1.1 400") and after == 0
