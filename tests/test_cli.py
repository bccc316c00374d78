"""The `vigil` command line: subcommands exist, `vigil broker` serves on loopback, docs render."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from click.testing import CliRunner

from vigil.cli import cli


def test_help_lists_every_job() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for cmd in ("broker", "worker", "replay", "demo", "topics", "train", "predict", "evaluate", "models", "alerts"):
        assert cmd in out


def test_topics_docs_renders_the_catalogue() -> None:
    res = CliRunner().invoke(cli, ["topics", "docs"])
    assert res.exit_code == 0 and "| `vitals` |" in res.output and "`dead-letter`" in res.output


def test_broker_command_prints_a_loopback_address_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "vigil", "broker"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        host, port = line.rsplit(":", 1)
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the broker child went away with it
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            time.sleep(0.1)
        except OSError:
            break
    else:
        raise AssertionError("broker still listening after vigil broker stopped")
