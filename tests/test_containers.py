"""The container stack, checked without a Docker engine (none runs on the project's machines): the compose
file's structure, every path the images copy and the stack mounts, non-root users, health checks, pinned
bases, TensorFlow only in the trainer image, a GPU reservation for the GPU worker. Building and running the
images is unverified here — the README says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def _host_path(spec: str) -> Path | None:
    """The host side of a compose bind mount, relative to docker/ (``${VAR:-default}`` -> default)."""
    host = spec.split(":", 1)[0]
    host = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", host)
    if not host.startswith((".", "/")):
        return None  # a named volume
    return (DOCKER / host).resolve()


def test_the_stack_has_every_service_the_deployment_needs() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "topics", "worker-cpu", "worker-gpu", "trainer", "prometheus", "grafana"} <= set(services)
    env = services["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env  # KRaft, no ZooKeeper
    assert services["topics"]["entrypoint"] == ["vigil", "topics", "create"]
    for w in ("worker-cpu", "worker-gpu"):
        assert services[w]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert services[w]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "jobs" in services["trainer"]["profiles"]
    for name, svc in services.items():  # published ports stay on loopback
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_build_file_and_mounted_path_exists() -> None:
    for name, svc in COMPOSE["services"].items():
        if "build" in svc:
            ctx = (DOCKER / svc["build"]["context"]).resolve()
            assert ctx == ROOT and (ctx / svc["build"]["dockerfile"]).is_file(), name
        for vol in svc.get("volumes", []):
            host = _host_path(vol)
            assert host is None or host.exists(), (name, vol)


def test_pulled_images_are_pinned() -> None:
    for name, svc in COMPOSE["services"].items():
        if "build" not in svc:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_existing_paths_run_as_non_root_and_check_health(dockerfile: Path) -> None:
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    base = next(ln.split()[1] for ln in lines if ln.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest"), base
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), dockerfile.name
    assert any(ln.startswith("HEALTHCHECK") for ln in lines), dockerfile.name
    text = dockerfile.read_text()
    if dockerfile.name == "Dockerfile.trainer":
        assert '".[train]"' in text
    else:  # TensorFlow never in a serving image
        assert "[train]" not in text and "tensorflow" not in text.lower()
        assert "VIGIL_WEB_HOST=0.0.0.0" in text and "/healthz" in text
    if dockerfile.name == "Dockerfile.worker-gpu":
        assert "nvidia/cuda" in base and "onnxruntime-gpu" in text


def test_prometheus_and_grafana_are_provisioned_from_dashboards() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus.compose.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert set(targets) == {"worker-cpu:6066", "worker-gpu:6066"}
    assert prom["scrape_configs"][1]["static_configs"][0]["targets"] == ["demand:9464"]
    assert "demand" in COMPOSE["services"]
    ingest = prom["scrape_configs"][2]["static_configs"][0]["targets"]
    for target in ingest:  # each ingest target is a compose service serving its metrics on that port
        service, port = target.split(":")
        assert ["--metrics-port", port] == COMPOSE["services"][service]["entrypoint"][-2:]
    for pattern in prom.get("rule_files", []):
        local = ROOT / "dashboards" / Path(pattern).relative_to("/etc/vigil-dashboards")
        assert list(local.parent.glob(local.name)), f"no rule file matches {pattern}"
    ds = yaml.safe_load((DOCKER / "grafana-datasource.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert list((ROOT / "dashboards" / "grafana").glob("*.json"))


def test_the_model_dashboards_alert_rate_line_is_the_serving_cards() -> None:
    """The red line of the alert-rate panel is the serving model's validated row-level alert rate (its card's test
    split): a promotion that changes the model must move it too."""
    import json

    from vigil.registry import Registry

    refs = Registry(ROOT / "models").serving_refs()
    want = {round(float(r.card["metrics"]["test"]["alert_rate"]), 4) for r in refs}
    board = json.loads((ROOT / "dashboards" / "grafana" / "model.json").read_text())
    panel = next(p for p in board["panels"] if "row-level alert rate" in p.get("description", ""))
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {round(float(s["value"]), 4) for s in steps if s["value"] is not None} == want
    assert all(f"{r.name} v{r.version}" in panel["description"] for r in refs)
