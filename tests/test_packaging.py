"""vigil installed from its wheel, run outside any checkout: the defaults need no source tree.

The wheel is built from a copy of the sources (``pip wheel --no-build-isolation``, offline), unpacked into a
folder and imported from there by a fresh interpreter whose working directory is an empty folder: the topic
catalogue and schemas come from the package data, the registry default is ``./models`` of the working
directory (missing: a clear error), and ``vigil topics docs`` prints what it prints in the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import vigil
from vigil.catalog import load_catalog, schema_for
from vigil.config import load_settings
from vigil.errors import ModelError
from vigil.registry import Registry

s = load_settings(None)
catalog = load_catalog(s.streams_dir)
try:
    Registry(s.models_dir).get("sepsis-mlp")
    error = None
except ModelError as exc:
    error = str(exc)
print(json.dumps({"package": vigil.__file__, "streams_dir": str(s.streams_dir), "models_dir": str(s.models_dir),
                  "gate_data": str(s.registry.gate_data), "topics": sorted(catalog),
                  "scores_required": schema_for("scores", s.streams_dir).get("required"), "registry_error": error,
                  "tools_loaded": sorted(m for m in sys.modules if m.startswith("vigil.tools"))}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's contents, unpacked (a pure-Python wheel installs by unpacking)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = tmp / "build"
    (build / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, build / name)
    shutil.copytree(REPO / "src" / "vigil", build / "src" / "vigil", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(REPO / "streams", build / "streams")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), str(build)], check=True, capture_output=True, timeout=240)  # fmt: skip
    wheel = next((tmp / "dist").glob("vigil-*.whl"))
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "KAFKA_"))}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_ships_the_topic_catalogue_as_package_data(installed: Path) -> None:
    shipped = sorted(p.relative_to(installed / "vigil" / "streams").as_posix()
                     for p in (installed / "vigil" / "streams").rglob("*") if p.is_file())  # fmt: skip
    expected = sorted(p.relative_to(REPO / "streams").as_posix() for p in (REPO / "streams").rglob("*") if p.is_file())
    assert shipped == expected and "topics.yaml" in shipped
    for rel in expected:  # the same bytes as the checkout's streams/ (the one copy that is edited)
        assert (installed / "vigil" / "streams" / rel).read_bytes() == (REPO / "streams" / rel).read_bytes(), rel


def test_installed_vigil_runs_outside_a_checkout(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _run(installed, elsewhere, "-c", PROBE)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).parent == installed / "vigil"  # the unpacked wheel, not the checkout
    assert Path(out["streams_dir"]) == installed / "vigil" / "streams"
    assert out["models_dir"] == "models" and out["gate_data"] == "../shared/data/physionet2019/setA.parquet"
    assert {"vitals", "labs", "adt", "scores", "alerts", "model-updates"} <= set(out["topics"])
    assert "score_id" in out["scores_required"]
    assert out["registry_error"] is not None and "model registry models is not a folder" in out["registry_error"]
    assert "VIGIL_MODELS_DIR" in out["registry_error"] and str(elsewhere) in out["registry_error"]
    assert out["tools_loaded"] == []


def test_installed_topics_docs_match_the_checkout(installed: Path, tmp_path: Path) -> None:
    here = _run(REPO / "src", REPO, "-m", "vigil", "topics", "docs")
    there = _run(installed, tmp_path, "-m", "vigil", "topics", "docs")
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert there.stdout == here.stdout and "| `vitals` |" in there.stdout


def test_missing_default_data_is_a_clear_error(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "-m", "vigil", "evaluate")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: ")
    assert "model registry models is not a folder" in done.stderr  # the registry comes first
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    done = _run(installed, tmp_path, "-m", "vigil", "evaluate")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "no --data given and the default data ../shared/data/physionet2019/setA.parquet" in done.stderr


def test_installed_demo_without_the_checkout_sample_names_the_fix(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "-m", "vigil", "demo")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "the bundled sample is in a vigil checkout): pass --data PATH" in done.stderr
