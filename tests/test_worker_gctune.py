"""The worker's garbage-collector settings (vigil.worker.gctune), checked in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import gc, json
from vigil.worker import gctune
before = gc.get_threshold()
first, second = gctune.tune(), gctune.tune()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "first": first, "second": second}))
"""


def test_tune_freezes_the_start_up_heap_and_raises_the_young_threshold_once() -> None:
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True,
                       env=os.environ.copy())  # fmt: skip
    got = json.loads(r.stdout.strip().splitlines()[-1])
    from vigil.worker.gctune import GEN0_THRESHOLD

    assert got["before"][0] < GEN0_THRESHOLD
    assert got["after"] == [GEN0_THRESHOLD, got["before"][1], got["before"][2]]
    assert got["frozen"] > 1000  # the modules imported so far
    assert (got["first"], got["second"]) == (True, False)
