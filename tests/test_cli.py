"""The `vigil` command line: subcommands exist, `vigil broker` serves on loopback, docs render."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from vigil import __version__
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


def _vigil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_version() -> None:
    res = _vigil("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"vigil {__version__}"


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["--log-level", "LOUD", "topics", "docs"], {}, 2, "Invalid value for '--log-level': 'LOUD'"),
        (["--log-format", "xml", "topics", "docs"], {}, 2, "Invalid value for '--log-format'"),
        (["topics", "dcs"], {}, 2, "No such command 'dcs'"),
        (["alerts", "tail", "--type", "modelrisk"], {}, 2, "Invalid value for '--type': 'modelrisk'"),
        (["topics", "docs"], {"VIGIL_LOG_LEVEL": "loud"}, 1, "log_level: Input should be"),
        (["topics", "docs"], {"VIGIL_SCORING__MODEE": "row"}, 1, "scoring.modee (did you mean scoring.mode?)"),
        (["models", "show", "no-such-model:1"], {}, 1, "model 'no-such-model:1' not found"),
        (["api", "--port", "0"], {"VIGIL_API__TOKENS_SHA256": "[]"}, 1, "vigil api needs at least one token"),
    ],
)
def test_every_user_error_is_one_line_and_a_non_zero_exit(args, env, code, needle) -> None:
    res = _vigil(*args, env=env)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_config_typo_is_refused_on_the_command_line(tmp_path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("alerts:\n  model_risk:\n    raise_att: 0.9\n")
    res = CliRunner().invoke(cli, ["--config", str(cfg), "topics", "docs"])
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: {cfg}: unknown setting alerts.model_risk.raise_att "
                                  "(did you mean alerts.model_risk.raise_at?)")


def test_log_format_json_applies_to_every_logger(tmp_path) -> None:
    code = ("import logging, sys; from vigil.cli import cli; "
            "cli.main(['--log-format', 'json', 'topics', 'docs'], standalone_mode=False); "
            "logging.getLogger('faust.worker').warning('from faust'); logging.getLogger('vigil.x').info('from vigil')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    recs = [json.loads(line) for line in res.stderr.splitlines()]
    assert [(r["logger"], r["level"], r["message"]) for r in recs] == [
        ("faust.worker", "WARNING", "from faust"), ("vigil.x", "INFO", "from vigil")]


def test_an_unreachable_broker_is_one_error_line_not_a_traceback() -> None:
    res = _vigil("--bootstrap", "127.0.0.1:1", "topics", "create")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(errors) == 1 and "KafkaConnectionError" in errors[0] and "Unable to bootstrap" in errors[0]
