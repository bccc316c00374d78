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
    host = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", spec).split(":", 1)[0]
    if not host.startswith((".", "/")):
        return None  # a named volume
    return (DOCKER / host).resolve()


def test_the_stack_has_every_service_the_deployment_needs() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "topics", "worker-cpu", "worker-gpu", "trainer", "prometheus", "grafana", "alertmanager",
            "alerts-webhook", "demand", "ingest-hl7", "ingest-fhir"} <= set(services)
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
    prom_svc = COMPOSE["services"]["prometheus"]
    assert "--config.file=/etc/vigil-dashboards/prometheus.yml" in prom_svc["command"]
    assert "../dashboards:/etc/vigil-dashboards:ro" in prom_svc["volumes"]
    assert not (DOCKER / "prometheus.compose.yml").exists()  # one Prometheus configuration, not two
    prom = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    for pattern in prom.get("rule_files", []):  # relative to the config file
        assert list((ROOT / "dashboards").glob(pattern)), f"no rule file matches {pattern}"
    ds = yaml.safe_load((DOCKER / "grafana-datasource.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert list((ROOT / "dashboards" / "grafana").glob("*.json"))


def _metrics_port(svc: dict) -> int | None:  # type: ignore[type-arg]
    entry = svc.get("entrypoint") or []
    return int(entry[entry.index("--metrics-port") + 1]) if "--metrics-port" in entry else None


def test_prometheus_finds_every_vigil_service_by_dns_on_the_port_it_serves() -> None:
    """DNS service discovery (a compose service name resolves to all its replicas): `--scale worker-cpu=3` is
    scraped three times; every target is a service of the stack on the port that service serves."""
    prom = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    services = COMPOSE["services"]
    found: dict[str, set[tuple[str, int]]] = {}
    for job in prom["scrape_configs"]:
        if job["job_name"].startswith("vigil-"):
            assert "static_configs" not in job, job["job_name"]  # static targets break under --scale
            for sd in job["dns_sd_configs"]:
                assert sd["type"] == "A"
                found.setdefault(job["job_name"], set()).update((n, sd["port"]) for n in sd["names"])
    assert found["vigil-worker"] == {("worker-cpu", 6066), ("worker-gpu", 6066)}
    for job, targets in found.items():
        for name, port in targets:
            assert name in services, (job, name)
            want = _metrics_port(services[name]) or 6066
            assert port == want, (job, name, port, want)
    scraped = {n for t in found.values() for n, _ in t}
    for name, svc in services.items():  # every long-running vigil service that has metrics is scraped
        serves = name.startswith("worker-") or _metrics_port(svc) is not None
        if svc.get("image", "").startswith("vigil-worker") and svc.get("restart") == "unless-stopped" and serves:
            assert name in scraped, name
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_each_service_checks_its_own_health_endpoint() -> None:
    services = COMPOSE["services"]
    for name, svc in services.items():
        if not svc.get("image", "").startswith("vigil-worker"):
            continue
        hc = svc.get("healthcheck")
        assert hc is not None, f"{name} would inherit the image's check on 6066"
        if svc.get("restart") == "no":  # one-shot jobs: no health check
            assert hc == {"disable": True}, name
            continue
        test = " ".join(hc["test"])
        port = _metrics_port(svc)
        if name == "api":
            assert "127.0.0.1:8090/healthz" in test and svc["entrypoint"][-2:] == ["--port", "8090"]
        elif port is None:
            assert "127.0.0.1:6066/healthz" in test, name  # a worker: /healthz on its web port
        else:
            assert f"127.0.0.1:{port}/metrics" in test and "6066" not in test, name
    for name in ("prometheus", "alertmanager", "grafana", "kafka"):
        assert services[name]["healthcheck"]["test"], name


def test_gpu_worker_is_optional_and_models_are_one_shared_volume() -> None:
    services = COMPOSE["services"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in services["worker-cpu"]
    assert "models" in COMPOSE["volumes"]
    for name in ("worker-cpu", "worker-gpu", "demand", "trainer"):
        assert "models:/app/models" in services[name]["volumes"], name
    # the trainer's default data file exists in its default mount
    trainer = services["trainer"]
    mount = next(v for v in trainer["volumes"] if v.endswith(":/data:ro"))
    host = _host_path(mount)
    data_arg = trainer["command"][trainer["command"].index("--data") + 1]
    default_file = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", data_arg).removeprefix("/data/")
    assert host is not None and (host / default_file).is_file(), (host, default_file)


def test_alertmanager_routes_pages_to_a_documented_receiver() -> None:
    am = yaml.safe_load((DOCKER / "alertmanager.yml").read_text())
    names = {r["name"] for r in am["receivers"]}
    assert am["route"]["receiver"] in names
    routes = {tuple(r["matchers"]): r["receiver"] for r in am["route"]["routes"]}
    assert routes[('severity="page"',)] == "oncall-page" and "oncall-page" in names
    rules = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "rules" / "vigil.yml").read_text())
    severities = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert "page" in severities
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert "oncall-page" in doc and "alertmanager.yml" in doc
    assert "./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in COMPOSE["services"]["alertmanager"]["volumes"]
    assert "alerts-webhook" in COMPOSE["services"]


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
