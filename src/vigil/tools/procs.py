"""Running ``vigil worker`` as a child process (demo, tests, benchmarks): start, wait ready, stop cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vigil.broker import _die_with_parent, free_port
from vigil.config import Settings

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """A ``vigil worker`` subprocess configured from ``settings`` through the environment (time window: replay
    mode unless ``settings.time_window.mode`` was set explicitly)."""

    def __init__(self, settings: Settings, log_path: Path | None = None, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.web_port = free_port()
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers or "",
            "VIGIL_TOPIC_PREFIX": s.topic_prefix,
            "VIGIL_GROUP_ID": s.group_id,
            "VIGIL_WEB_PORT": str(self.web_port),
            "VIGIL_MODELS_DIR": str(s.models_dir),
            "VIGIL_SCORING__MODE": s.scoring.mode,
            "VIGIL_SCORING__MIN_INTERVAL_S": str(s.scoring.min_interval_s),
            "VIGIL_MAX_BATCH": str(s.max_batch),
            "VIGIL_LOG_LEVEL": s.log_level,
            "VIGIL_LOG_FORMAT": s.log_format,
            "PYTHONUNBUFFERED": "1",
        }
        if s.dev_mode:  # the demo, tests and benchmarks: the development pseudonym key is allowed
            env["VIGIL_DEV_MODE"] = "1"
        # plausible event times (vigil.timewindow): these workers run the demo, tests and benchmarks on replayed
        # history (dated 2026-01-01 on), so replay mode unless the settings chose a mode explicitly
        tw = s.time_window
        mode = tw.mode if "mode" in tw.model_fields_set else "replay"
        env.update({"VIGIL_TIME_WINDOW__MODE": mode, "VIGIL_TIME_WINDOW__MAX_FUTURE_S": str(tw.max_future_s),
                    "VIGIL_TIME_WINDOW__MAX_PAST_S": str(tw.max_past_s),
                    "VIGIL_TIME_WINDOW__ADMIT_MARGIN_S": str(tw.admit_margin_s)})  # fmt: skip
        if tw.replay_shift_s is not None:
            env["VIGIL_TIME_WINDOW__REPLAY_SHIFT_S"] = str(tw.replay_shift_s)
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vigil", "worker"], env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - never leave an orphaned worker behind
        )
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as r:  # noqa: S310
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the worker owns partitions (``/readyz``) — raises if it died or timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                msg = f"worker exited with code {self.proc.returncode} before it was ready (log: {self.log_path})"
                raise RuntimeError(msg)
            try:
                status, body = self.get("/readyz")
                if status == 200 and json.loads(body).get("ready"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        msg = f"worker not ready after {timeout_s}s (log: {self.log_path})"
        raise TimeoutError(msg)

    def metrics_text(self) -> str:
        return self.get("/metrics")[1].decode()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean exit (commit, leave group); SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
