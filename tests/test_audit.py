"""Emergency promotion without the gate data, and the append-only audit trail (models/audit.jsonl) of
promotions, refusals and rollbacks — through the real CLI on a copy of the registry with real ONNX models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil import audit
from vigil.cli import cli
from vigil.config import REPO_ROOT
from vigil.demand.calibration import CALIBRATION_FILE, Calibration
from vigil.registry import HISTORY_FILE, Registry

NAME = "sepsis-mlp"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", root, ignore=shutil.ignore_patterns(HISTORY_FILE, audit.AUDIT_FILE, ".*"))
    (root / "serving.json").write_text(json.dumps({NAME: "1"}))
    target = root / NAME / "901"
    shutil.copytree(root / NAME / "1", target)
    card = json.loads((target / "card.json").read_text())
    (target / "card.json").write_text(json.dumps({**card, "version": "901"}))
    (target / CALIBRATION_FILE).unlink(missing_ok=True)
    Calibration.synthetic(model=NAME, version="901").save(target / CALIBRATION_FILE)
    return root


def _vigil(root: Path, *args: str, gate_data: Path | None = None) -> tuple[int, str, str]:
    env = {"VIGIL_MODELS_DIR": str(root)}
    if gate_data is not None:
        env["VIGIL_REGISTRY__GATE_DATA"] = str(gate_data)
    res = CliRunner().invoke(cli, list(args), env=env)
    return res.exit_code, res.stdout, res.stderr


def test_forced_promotion_needs_no_gate_data_and_is_audited_with_its_reason(root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-training-data.parquet"
    code, _, err = _vigil(root, "models", "promote", f"{NAME}:901", "--no-notify", gate_data=missing)
    assert code == 1 and "not found" in err and "Traceback" not in err  # without --force: the gate needs data
    assert Registry(root).serving()[NAME] == "1"
    code, out, err = _vigil(root, "models", "promote", f"{NAME}:901", "--no-notify", "--force", "--reason",
                            "lab analyser recall: v1 mis-scores lactate", gate_data=missing)  # fmt: skip
    assert code == 0, err
    assert "forced without the metric comparison" in out and "PASSED (forced" in out
    assert Registry(root).serving()[NAME] == "901"
    [entry] = audit.read(root)
    assert (entry["action"], entry["subject"], entry["reason"]) == (
        "promote", f"{NAME}:901", "lab analyser recall: v1 mis-scores lactate")
    assert entry["details"]["forced"] is True and entry["details"]["from_version"] == "1"
    assert entry["details"]["gate"] == "skipped (forced)" and entry["actor"] and entry["prev"] is None
    code, _, err = _vigil(root, "models", "rollback", NAME, "--no-notify", "--reason", "recall withdrawn")
    assert code == 0, err
    assert Registry(root).serving()[NAME] == "1"
    entries = audit.read(root)
    assert [(e["action"], e["subject"]) for e in entries] == [("promote", f"{NAME}:901"), ("rollback", f"{NAME}:1")]
    assert entries[1]["details"]["from"] == f"{NAME}:901" and audit.verify(root) is None
    code, out, _ = _vigil(root, "models", "audit")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and "FORCED" in lines[0] and "recall withdrawn" in lines[1]


def test_an_edited_audit_trail_is_detected(root: Path) -> None:
    audit.record(root, "promote", f"{NAME}:901", reason="a", actor="x")
    audit.record(root, "rollback", f"{NAME}:1", reason="b", actor="x")
    audit.record(root, "promote", f"{NAME}:901", reason="c", actor="x")
    path = root / audit.AUDIT_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a deleted entry
    assert "line 2 does not follow line 1" in (audit.verify(root) or "")
    code, _, err = _vigil(root, "models", "audit")
    assert code == 1 and err.strip().startswith("Error: audit trail broken:") and len(err.strip().splitlines()) == 1
