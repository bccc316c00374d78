"""The package's layering (docs/architecture.md), enforced: what the worker imports, and no import cycles.

The static graph is read with ``ast`` from ``src/vigil``: every ``import`` and ``from ... import`` statement,
at module level, inside functions and under ``if TYPE_CHECKING`` alike (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import vigil

SRC = Path(vigil.__file__).resolve().parent
SERVING_ROOTS = ("vigil.worker.engine", "vigil.worker.app", "vigil.scoring")
# packages serving must never load: the offline side (training, evaluation, the demand job and its fitting) and
# the trainer's frameworks
FORBIDDEN_IN_SERVING = ("vigil.demand", "vigil.evaluation", "vigil.training", "vigil.onboarding", "tensorflow",
                        "lightgbm")  # fmt: skip


def _modules() -> dict[str, tuple[Path, bool]]:
    out: dict[str, tuple[Path, bool]] = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> the vigil modules it imports`` (a name imported from a package that is a submodule counts as
    that submodule; anything else as the deepest vigil module named)."""
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m:
                    targets.add(name)
        edges[m] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)) is not None:
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)) is not None:
            return found
    return None


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_the_package() -> None:
    edges = import_graph()
    assert len(edges) > 100 and "vigil.worker.engine" in edges  # the walk saw the package
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_serving_does_not_depend_on_offline_packages_statically() -> None:
    """Every module the worker could ever import (lazy imports included) stays out of demand/evaluation/training."""
    edges = import_graph()
    parent: dict[str, str] = {}
    seen: set[str] = set()
    todo = list(SERVING_ROOTS)
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        for w in sorted(edges[v]):
            if w not in seen:
                parent.setdefault(w, v)
                todo.append(w)
    bad = []
    for m in sorted(seen):
        if m.startswith(FORBIDDEN_IN_SERVING):
            chain = [m]
            while chain[-1] in parent:
                chain.append(parent[chain[-1]])
            bad.append(" <- ".join(chain))
    assert not bad, "serving reaches offline code:\n" + "\n".join(bad)


def test_worker_process_loads_no_offline_module() -> None:
    """A fresh interpreter that imports the worker and quotes an onset probability (the path that used to pull in
    the demand package) has no demand, evaluation, training, TensorFlow or LightGBM module loaded."""
    code = (
        "import json, sys\n"
        "import vigil.worker.engine, vigil.worker.app, vigil.scoring\n"
        "from vigil.config import REPO_ROOT\n"
        "from vigil.registry import Registry\n"
        "from vigil.scoring import Scorer\n"
        "ref = Registry(REPO_ROOT / 'models').serving_refs()[0]\n"
        "p = Scorer(ref).onset_probability(0.5)\n"
        "print(json.dumps({'onset': p, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["onset"] is not None and 0.0 <= out["onset"] <= 1.0  # the calibrated map was read
    assert "vigil.onset" in out["modules"] and "vigil.worker.batch" in out["modules"]
    loaded = [m for m in out["modules"] if m.startswith(FORBIDDEN_IN_SERVING)]
    assert loaded == []


# The shared layer (docs/architecture.md): typed records, configuration, the model card and registry, features,
# scoring, the alerting stage. It imports only itself, never the edge, the worker, the subscribers, the API, the
# demand job or the offline packages.
SHARED = frozenset({
    "vigil", "vigil.errors", "vigil.config", "vigil.config_sections", "vigil.budget", "vigil.settings_check",
    "vigil.variables", "vigil.data",
    "vigil.units", "vigil.codes", "vigil.deadletters", "vigil.records", "vigil.card", "vigil.registry", "vigil.onset",
    "vigil.registry_view",
    "vigil.features", "vigil.news2", "vigil.scoring", "vigil.alerts", "vigil.levels", "vigil.metrics",
    "vigil.timewindow", "vigil.timeparse", "vigil.privacy", "vigil.logs", "vigil.state", "vigil.explain", "vigil.drift",
    "vigil.alerting", "vigil.alerting.state", "vigil.alerting.rules", "vigil.alerting.stage",
    "vigil.abstain",
})  # fmt: skip


def test_the_shared_layer_imports_only_itself() -> None:
    edges = import_graph()
    assert SHARED <= set(edges)
    upward = sorted(f"{m} -> {t}" for m in SHARED for t in edges[m] if t not in SHARED)
    assert upward == [], "the shared layer imports up: " + ", ".join(upward)


# The tools (benchmarks, the demo, the dashboards renderer, the worker-process helper) work on a checkout; the
# runtime never imports them. Only the command that runs the demo dispatches to them, inside the command.
TOOLS_DISPATCH = frozenset({"vigil.commands.demo"})


def _module_level_imports(path: Path) -> set[str]:
    """Absolute module names imported by the module's top-level statements (not inside a function)."""
    out: set[str] = set()
    todo = list(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.ClassDef):
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return out


def test_the_runtime_never_imports_the_tools() -> None:
    edges = import_graph()
    tools = {m for m in edges if m == "vigil.tools" or m.startswith("vigil.tools.")}
    assert {"vigil.tools.bench", "vigil.tools.demo", "vigil.tools.procs"} <= tools  # the walk saw them
    importers = sorted(m for m, ts in edges.items() if m not in tools and ts & tools)
    assert set(importers) <= TOOLS_DISPATCH, f"runtime modules import vigil.tools: {importers}"
    mods = _modules()
    eager = sorted(f"{m} -> {t}" for m in TOOLS_DISPATCH if m in mods
                   for t in _module_level_imports(mods[m][0]) if t.startswith("vigil.tools"))  # fmt: skip
    assert eager == [], f"the command must import the tools lazily (inside the command): {eager}"


KAFKA_CLIENTS = ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient")


def _kafka_client_sites(path: Path) -> list[str]:
    """Calls that construct an aiokafka client, and imports of confluent_kafka, in one module (read with ast)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in KAFKA_CLIENTS:
                out.append(f"{name}() line {node.lineno}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [f"import {m} line {node.lineno}" for m in mods if m.split(".")[0] == "confluent_kafka"]
    return out


def test_kafka_clients_are_built_only_in_kafka_io() -> None:
    """One Kafka module: no other module constructs an aiokafka client or imports confluent_kafka."""
    assert _kafka_client_sites(SRC / "kafka_io.py")  # the check sees the factory's own constructors
    found = sorted(f"{m}: {site}" for m, (path, _) in _modules().items() if m != "vigil.kafka_io"
                   for site in _kafka_client_sites(path))  # fmt: skip
    assert found == [], "Kafka clients built outside vigil.kafka_io: " + ", ".join(found)
