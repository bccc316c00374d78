"""`vigil demo` end to end (small): its own embedded broker and worker, ends with a SUMMARY line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def test_demo_ends_with_a_summary_of_what_crossed_the_broker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.run([sys.executable, "-m", "vigil", "demo", "--limit", "12"], env=env, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("SUMMARY ")
    summary = json.loads(last.removeprefix("SUMMARY "))
    assert summary["scores"] == summary["rows_expected"] > 0
    assert summary["events"] > summary["scores"] and summary["dead_letters"] >= 5
    assert {"malformed_json", "missing_field", "unknown_code", "implausible_value", "naive_timestamp"} <= set(
        summary["dead_letter_reasons"])  # fmt: skip
    assert summary["late_events"] == 0 and summary["metrics_endpoint_ok"]
    assert summary["hl7_bed_association"] == ["AA", "AA", "AA", "AE"]  # ADT^A01, 2 bed ORU, 1 ORU for an empty bed
    for key in ("alerts", "events_per_s", "latency_p50_s", "latency_p99_s"):
        assert summary[key] is not None
    # the demand job's round: every ward x resource x horizon of the default settings
    assert summary["demand_wards"] and summary["demand_rounds"] >= 1
    assert summary["demand_forecasts"] >= len(summary["demand_wards"]) * 2 * 3
    checked = summary["demand_verified_review_12h"]  # the live check of the review forecasts ran
    assert checked["forecasts"] > 0 and 0.0 <= checked["inside_90"] <= 1.0 and 0.0 <= checked["mass_90"] <= 1.0
