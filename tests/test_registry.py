"""The registry commands and the promotion gate, on a copy of models/ with real ONNX candidates.

Candidates: a copy of the serving model (identical metrics: passes), a graph that negates its score and
a constant-score graph built with onnx.helper (worse: refused with both models' numbers), a wrong
feature-schema hash and an unreadable ONNX file (refused by the scorer), a copy without its own demand
calibration (refused unless --no-demand-check). Gate data: the bundled sample.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator
from onnx import TensorProto, helper, numpy_helper

from vigil.catalog import schema_for
from vigil.cli import cli
from vigil.config import REPO_ROOT, Settings
from vigil.demand.calibration import CALIBRATION_FILE, Calibration
from vigil.errors import ModelError
from vigil.gate import GateResult, run_gate
from vigil.kafka_io import read_topic
from vigil.registry import ACTIONS, HISTORY_FILE, Registry, served_stack, update_event

NAME = "sepsis-mlp"
MARGINS = {"margin_utility": 0.01, "margin_auroc": 0.01}


# ------------------------------------------------------------------------------------------ helpers
def _negated(onnx_path: Path) -> bytes:
    """The real model with its output replaced by 1 - p (a ranking turned upside down)."""
    model = onnx.load(str(onnx_path))
    g = model.graph
    out = g.output[0]
    g.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "gate_test_one"))
    g.node.append(helper.make_node("Sub", ["gate_test_one", out.name], ["negated"]))
    new_out = onnx.ValueInfoProto()
    new_out.CopyFrom(out)
    new_out.name = "negated"
    del g.output[:]
    g.output.append(new_out)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _constant(value: float, n_features: int) -> bytes:
    """A graph reading ``features`` [B, F] that returns ``value`` for every row (0 * sum(x) + value)."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(value, np.float32), "value"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "value"], ["probability"]),
    ]
    graph = helper.make_graph(nodes, "constant", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _add_version(
    reg: Registry, version: str, onnx_bytes: bytes | None = None, *, demand: bool = True, **card_changes: Any
) -> str:
    """Register ``NAME:version`` as a copy of the serving model, with another ONNX file or card fields; with
    ``demand`` (default) it gets its own demand calibration (a synthetic one naming it), else none."""
    base = reg.get(NAME)
    target = reg.root / NAME / version
    shutil.copytree(base.path, target)
    card = json.loads((target / "card.json").read_text())
    card.pop("canary", None)  # a changed graph would (rightly) fail the canary check before the metrics
    card.update(version=version, **card_changes)
    (target / "card.json").write_text(json.dumps(card))
    if onnx_bytes is not None:
        (target / "model.onnx").write_bytes(onnx_bytes)
    (target / CALIBRATION_FILE).unlink(missing_ok=True)  # the base version's file names the base version
    if demand:
        Calibration.synthetic(model=NAME, version=version).save(target / CALIBRATION_FILE)
    return f"{NAME}:{version}"


def _vigil(reg: Registry, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"VIGIL_MODELS_DIR": str(reg.root)})


def _gate(reg: Registry, spec: str, data: Path, **kw: Any) -> GateResult:
    return run_gate(reg, spec, data, **{**MARGINS, **kw})


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    """A copy of the repository's models/ (no history) with a second version: a copy of the serving one."""
    root = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", root, ignore=shutil.ignore_patterns(HISTORY_FILE, ".*"))
    (root / "serving.json").write_text(json.dumps({NAME: "1"}))  # the MLP line serving: gate it against v1
    registry = Registry(root)
    _add_version(registry, "900")
    return registry


# ------------------------------------------------------------------------------------------ list/show
def test_list_marks_the_serving_version_and_prints_card_metrics(reg: Registry) -> None:
    base = reg.serving()[NAME]
    res = _vigil(reg, "models", "list")
    assert res.exit_code == 0, res.output
    lines = {tuple(line.split()[:3]): line for line in res.stdout.splitlines()[1:]}
    assert (NAME, base, "*") in lines and (NAME, "900") in {k[:2] for k in lines}
    card = reg.get(NAME).card
    assert f"{card['metrics']['validation']['utility']:.4f}" in lines[(NAME, base, "*")]
    rows = json.loads(_vigil(reg, "models", "list", "--json").stdout)
    mine = {r["version"]: r for r in rows if r["name"] == NAME}
    assert mine[base]["serving"] and not mine["900"]["serving"]
    assert mine["900"]["validation"]["auroc"] == card["metrics"]["validation"]["auroc"]


def test_show_summarises_the_card_and_prints_it_as_json(reg: Registry) -> None:
    res = _vigil(reg, "models", "show", NAME)
    assert res.exit_code == 0, res.output
    card = reg.get(NAME).card
    for text in ("(serving)", "threshold:", card["feature_schema"]["hash"], "intended use:", "limitations:",
                 "validation", "model.onnx"):  # fmt: skip
        assert text in res.stdout, text
    assert json.loads(_vigil(reg, "models", "show", f"{NAME}:900", "--json").stdout)["version"] == "900"
    evaluation = {
        "test": {
            "model": {"auroc": 0.81, "utility": 0.4},
            "data": {"file": "setA.parquet", "split": "test", "stays": 3051},
            "subgroups": {"sex": {"female": {"stays": 1400, "auroc": 0.8123}}},
        },
        "other": {"layout": {"n": 3}},
    }
    _add_version(reg, "910", evaluation=evaluation)
    shown = _vigil(reg, "models", "show", f"{NAME}:910").stdout
    assert "evaluation" in shown and "sex female" in shown and "0.8123" in shown and "layout:" in shown
    missing = _vigil(reg, "models", "show", f"{NAME}:404")
    assert missing.exit_code == 1 and "not found" in missing.output


# ------------------------------------------------------------------------------------------ promote
def test_promoting_an_identical_copy_passes_and_records_it(reg: Registry, sample_path: Path) -> None:
    base = reg.serving()[NAME]
    res = _vigil(reg, "models", "promote", f"{NAME}:900", "--data", str(sample_path), "--no-notify")
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.stdout and f"promoted {NAME}: {base} -> 900" in res.stdout
    assert reg.serving()[NAME] == "900"
    assert not list(reg.root.glob(".serving.json*"))  # the temporary file was renamed into place
    [entry] = reg.history(NAME)
    assert (entry["action"], entry["from_version"], entry["to_version"], entry["forced"]) == (
        "promote", base, "900", False)  # fmt: skip
    gate = entry["gate"]
    assert gate["candidate_metrics"]["utility"] == gate["serving_metrics"]["utility"]
    assert gate["data"]["stays"] == 200 and gate["data"]["subset"] == "all rows"
    again = _vigil(reg, "models", "promote", f"{NAME}:900", "--data", str(sample_path), "--no-notify")
    assert again.exit_code == 0 and "already serving" in again.stdout and len(reg.history(NAME)) == 1


def test_a_worse_candidate_is_refused_with_both_models_numbers(reg: Registry, sample_path: Path) -> None:
    spec = _add_version(reg, "901", _negated(reg.get(NAME).onnx_path))
    before = reg.serving()
    res = _vigil(reg, "models", "promote", spec, "--data", str(sample_path), "--no-notify")
    assert res.exit_code == 1
    assert f"{spec} not promoted" in res.stderr and "REFUSED" in res.stderr
    assert spec in res.stderr and f"{NAME}:{before[NAME]}" in res.stderr  # both models, with their numbers
    assert "utility" in res.stderr and "AUROC" in res.stderr and "< serving" in res.stderr
    assert reg.serving() == before and reg.history() == []


def test_a_constant_score_is_refused_on_both_metrics(reg: Registry, sample_path: Path) -> None:
    spec = _add_version(reg, "902", _constant(0.3, reg.get(NAME).card["input"]["n_features"]))
    result = _gate(reg, spec, sample_path)
    assert not result.passed and len(result.reasons) == 2
    assert result.candidate_metrics is not None and result.candidate_metrics.auroc == 0.5
    assert result.candidate_metrics.utility == 0.0  # never above its threshold: no alerts, no utility
    assert result.rows == 7555 and result.stays == 200


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"feature_schema": "bad-hash"}, "feature schema"),
        ({"onnx": b"not an onnx file"}, "cannot load"),
        ({"onnx": "nan"}, "canary"),
    ],
)
def test_models_the_scorer_refuses_are_refused(
    reg: Registry, sample_path: Path, change: dict[str, Any], expected: str
) -> None:
    card: dict[str, Any] = {}
    if "feature_schema" in change:
        card["feature_schema"] = {**reg.get(NAME).card["feature_schema"], "hash": "sha256:" + "0" * 64}
    blob = change.get("onnx")
    if blob == "nan":
        blob = _constant(float("nan"), reg.get(NAME).card["input"]["n_features"])
    spec = _add_version(reg, "903", blob, **card)
    result = _gate(reg, spec, sample_path)
    assert not result.passed and expected in result.reasons[0] and result.candidate_metrics is None
    forced = _gate(reg, spec, sample_path, force=True)  # --force skips metrics, never the load checks
    assert not forced.passed


def test_force_needs_a_reason_and_is_recorded(reg: Registry, sample_path: Path) -> None:
    spec = _add_version(reg, "904", _negated(reg.get(NAME).onnx_path))
    args = ["models", "promote", spec, "--data", str(sample_path), "--no-notify", "--force"]
    res = _vigil(reg, *args)
    assert res.exit_code == 2 and "--force needs --reason" in res.output
    res = _vigil(reg, *args, "--reason", "clinical safety review signed off the inverted scale")
    assert res.exit_code == 0, res.output
    assert reg.serving()[NAME] == "904"
    [entry] = reg.history(NAME)
    assert entry["forced"] is True and entry["reason"].startswith("clinical safety")
    assert any(n.startswith("forced past: utility") for n in entry["gate"]["notes"])


def test_first_promotion_checks_only_that_the_model_loads_and_scores(reg: Registry, sample_path: Path) -> None:
    (reg.root / "serving.json").write_text(json.dumps({k: v for k, v in reg.serving().items() if k != NAME}))
    bad = _add_version(reg, "905", _constant(float("nan"), reg.get(f"{NAME}:900").card["input"]["n_features"]))
    assert not _gate(reg, bad, sample_path).passed
    result = _gate(reg, f"{NAME}:900", sample_path)
    assert result.passed and result.serving is None and result.serving_metrics is None
    assert any("no serving version" in n for n in result.notes)
    res = _vigil(reg, "models", "promote", f"{NAME}:900", "--data", str(sample_path), "--no-notify")
    assert res.exit_code == 0, res.output
    assert reg.serving()[NAME] == "900" and reg.history(NAME)[0]["from_version"] is None


def test_the_training_file_gives_its_validation_split_with_the_candidate_seed(
    reg: Registry, sample_path: Path, tmp_path: Path
) -> None:
    from vigil.training.data import load_training_frame

    source = reg.get(NAME).card["training"]["source_file"]
    data = tmp_path / source  # the sample under the training file's name: the gate cuts the split
    load_training_frame(sample_path).to_parquet(data)
    spec = _add_version(reg, "906", training={**reg.get(NAME).card["training"],
                                              "split": {"seed": 8, "by": "patient"}})  # fmt: skip
    result = _gate(reg, spec, data)
    assert result.data is not None and result.data.subset == "validation split (seed 8)"
    assert result.stays == 30 and result.rows < 7555
    assert any("split seeds differ" in n for n in result.notes)


# ------------------------------------------------------------------------------------------ demand calibration
def test_promote_refuses_a_candidate_without_its_demand_calibration(reg: Registry, sample_path: Path) -> None:
    spec = _add_version(reg, "920", demand=False)
    before = reg.serving()
    args = ["models", "promote", spec, "--data", str(sample_path), "--no-notify"]
    res = _vigil(reg, *args)
    assert res.exit_code == 1 and f"{spec} not promoted" in res.stderr and "REFUSED" in res.stderr
    assert "has no demand calibration" in res.stderr and f"vigil demand calibrate --model {spec}" in res.stderr
    assert reg.serving() == before and reg.history() == []
    forced = _vigil(reg, *args, "--force", "--reason", "metrics reviewed")  # --force skips only the metrics
    assert forced.exit_code == 1 and f"vigil demand calibrate --model {spec}" in forced.stderr
    assert reg.serving() == before
    res = _vigil(reg, *args, "--no-demand-check")
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.stdout and "--no-demand-check" in res.stdout and reg.serving()[NAME] == "920"
    [entry] = reg.history(NAME)
    assert entry["forced"] is False and any("demand calibration check skipped" in n for n in entry["gate"]["notes"])


def test_promote_refuses_a_demand_calibration_of_another_version(reg: Registry, sample_path: Path) -> None:
    spec = _add_version(reg, "921")
    Calibration.synthetic(model=NAME, version="900").save(reg.root / NAME / "921" / CALIBRATION_FILE)  # copied
    res = _vigil(reg, "models", "promote", spec, "--data", str(sample_path), "--no-notify")
    assert res.exit_code == 1 and "REFUSED" in res.stderr
    assert f"calibrates {NAME}:900, not {spec}" in res.stderr and f"vigil demand calibrate --model {spec}" in res.stderr
    result = _gate(reg, spec, sample_path)  # the metrics pass: the calibration is the only reason
    assert not result.passed and len(result.reasons) == 1 and "calibrates" in result.reasons[0]
    assert result.candidate_metrics is not None and result.serving_metrics is not None
    (reg.root / NAME / "921" / CALIBRATION_FILE).write_text("{}")  # unreadable: refused too
    assert "cannot be read" in _gate(reg, spec, sample_path).reasons[0]
    assert _gate(reg, spec, sample_path, demand_check=False).passed


def test_rollback_to_a_version_without_demand_calibration_warns(reg: Registry, sample_path: Path) -> None:
    base = reg.serving()[NAME]
    (reg.root / NAME / base / CALIBRATION_FILE).unlink(missing_ok=True)
    res = _vigil(reg, "models", "promote", f"{NAME}:900", "--data", str(sample_path), "--no-notify")
    assert res.exit_code == 0, res.output
    res = _vigil(reg, "models", "rollback", NAME, "--no-notify")
    assert res.exit_code == 0, res.output
    assert reg.serving()[NAME] == base and "warning" in res.stderr
    assert f"vigil demand calibrate --model {NAME}:{base}" in res.stderr


# ------------------------------------------------------------------------------------------ rollback
def test_rollback_returns_to_the_previous_version(reg: Registry, sample_path: Path) -> None:
    base = reg.serving()[NAME]
    assert _vigil(reg, "models", "rollback", NAME, "--no-notify").exit_code == 1  # no history yet
    _add_version(reg, "907")
    for v in ("900", "907"):
        res = _vigil(reg, "models", "promote", f"{NAME}:{v}", "--data", str(sample_path), "--no-notify")
        assert res.exit_code == 0, res.output
    res = _vigil(reg, "models", "rollback", NAME, "--no-notify", "--reason", "alert storm on ward 3")
    assert res.exit_code == 0, res.output
    assert reg.serving()[NAME] == "900" and f"rolled back {NAME}: 907 -> 900" in res.stdout
    assert _vigil(reg, "models", "rollback", NAME, "--no-notify").exit_code == 0
    assert reg.serving()[NAME] == base
    last = reg.history(NAME)[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("rollback", "900", base)
    spec = _add_version(reg, "908", feature_schema={"hash": "sha256:" + "1" * 64, "names": []})
    res = _vigil(reg, "models", "rollback", NAME, "--to", spec.split(":")[1], "--no-notify")
    assert res.exit_code == 1 and "cannot roll back" in res.stderr and reg.serving()[NAME] == base


def test_history_is_a_stack_and_a_stale_switch_changes_nothing(reg: Registry) -> None:
    base = reg.serving()[NAME]
    promote = [{"action": "promote", "from_version": "1", "to_version": "2"},
               {"action": "promote", "from_version": "2", "to_version": "1"}]  # fmt: skip
    assert served_stack(promote) == ["1", "2", "1"]
    assert served_stack([*promote, {"action": "rollback", "from_version": "1", "to_version": "2"}]) == ["1", "2"]
    with pytest.raises(ModelError, match="changed"):
        reg.switch(NAME, "900", "promote", expect_from="not-" + base)
    assert reg.serving()[NAME] == base and reg.history() == []
    reg.switch(NAME, "900", "promote", expect_from=base)
    assert reg.previous_version(NAME) == base
    assert (reg.root / "serving.json").read_text().endswith('"900"}\n')


def test_model_update_events_follow_the_topic_schema() -> None:
    validator = Draft202012Validator(schema_for("model-updates", REPO_ROOT / "streams"))
    for action in ACTIONS:
        event = update_event(NAME, "2", action, from_version="1", reason="why", forced=False)
        assert not [e.message for e in validator.iter_errors(event)], action
    assert not list(validator.iter_errors(update_event(NAME, "1", "promote")))  # first promotion: from null
    with pytest.raises(ValueError, match="action"):
        update_event(NAME, "2", "delete")


def test_an_unreachable_broker_is_reported_after_the_registry_changed(reg: Registry, sample_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = CliRunner().invoke(
        cli, ["--bootstrap", f"127.0.0.1:{port}", "models", "promote", f"{NAME}:900", "--data", str(sample_path)],
        env={"VIGIL_MODELS_DIR": str(reg.root), "VIGIL_REGISTRY__NOTIFY_TIMEOUT_S": "5"},
    )  # fmt: skip
    assert res.exit_code == 1 and "were not told" in res.stderr and "--notify" in res.stderr
    assert reg.serving()[NAME] == "900" and len(reg.history(NAME)) == 1


# ------------------------------------------------------------------------------------------ broker
@pytest.mark.broker
def test_promote_notifies_running_workers_on_model_updates(
    reg: Registry, sample_path: Path, settings_factory: Callable[..., Settings],
    topics_factory: Callable[..., list[str]],
) -> None:  # fmt: skip
    s = settings_factory(models_dir=reg.root)
    topics_factory(s)
    base = reg.serving()[NAME]
    res = _vigil(reg, "--bootstrap", str(s.kafka.bootstrap_servers), "--topic-prefix", s.topic_prefix,
                 "models", "promote", f"{NAME}:900", "--data", str(sample_path))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"published promote {NAME}:900 to {s.topic('model-updates')}" in res.stdout
    res = _vigil(reg, "--bootstrap", str(s.kafka.bootstrap_servers), "--topic-prefix", s.topic_prefix,
                 "models", "rollback", NAME, "--notify")  # fmt: skip
    assert res.exit_code == 0, res.output
    records = asyncio.run(read_topic(s, s.topic("model-updates"), quiet_s=0.5, timeout_s=20))
    events = [(r.key, orjson.loads(r.value)) for r in records]
    assert [(k, e["action"], e["version"], e["from_version"]) for k, e in events] == [
        (NAME.encode(), "promote", "900", base), (NAME.encode(), "rollback", base, "900")]  # fmt: skip
    assert all(e["v"] == 1 and e["name"] == NAME for _, e in events)


def test_rollback_of_a_line_that_took_over_hands_back_to_the_line_it_replaced(tmp_path: Path) -> None:
    """The shipped history: sepsis-mlp 1 -> 2, sepsis-tcn:1 replaced sepsis-mlp:2, sepsis-gbm:1 replaced
    sepsis-tcn:1. Rolling back a line with no earlier version of its own returns the line it replaced, and
    rolling that back undoes it; the stacks never mix one line's versions with another's."""
    root = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", root)
    entries = [json.loads(line) for line in (root / HISTORY_FILE).read_text().splitlines()]
    assert [(e["name"], e.get("replaces")) for e in entries[:3]] == [
        ("sepsis-mlp", None), ("sepsis-tcn", "sepsis-mlp"), ("sepsis-gbm", "sepsis-tcn")]  # fmt: skip
    (root / HISTORY_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries[:3]))
    (root / "serving.json").write_text(json.dumps({"sepsis-gbm": "1"}))
    reg = Registry(root)
    assert served_stack(reg.history("sepsis-tcn")) == ["1"]  # not the MLP's "2"
    assert reg.previous_version("sepsis-gbm") is None and reg.replaced_line("sepsis-gbm") == ("sepsis-tcn", "1")

    res = _vigil(reg, "models", "rollback", "sepsis-gbm", "--no-notify", "--reason", "test")
    assert res.exit_code == 0, res.output
    assert reg.serving() == {"sepsis-tcn": "1"} and "sepsis-gbm:1 -> sepsis-tcn:1" in res.stdout
    last = reg.history()[-1]
    assert (last["name"], last["action"], last["to_version"], last["replaces"]) == (
        "sepsis-tcn", "rollback", "1", "sepsis-gbm")  # fmt: skip
    assert update_event("sepsis-tcn", "1", "rollback", from_version="1", replaces="sepsis-gbm")["replaces"]

    res = _vigil(reg, "models", "rollback", "sepsis-tcn", "--no-notify")  # undo: back to the trees
    assert res.exit_code == 0, res.output
    assert reg.serving() == {"sepsis-gbm": "1"}

    (root / HISTORY_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries[:2]))
    (root / "serving.json").write_text(json.dumps({"sepsis-tcn": "1"}))
    res = _vigil(reg, "models", "rollback", "sepsis-tcn", "--no-notify")
    assert res.exit_code == 0, res.output
    assert reg.serving() == {"sepsis-mlp": "2"}
