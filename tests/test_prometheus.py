"""Dashboards and Prometheus rules checked for real: a live worker fed by `vigil replay`, scraped by a real
Prometheus (Debian's ``prometheus`` package, installed by ``make install-prometheus``), and every PromQL
expression of every dashboard panel and every rule evaluated through the HTTP API; promtool checks the
config, the rules (and their unit tests) and the worker's /metrics; the panels are drawn to PNG.

Empty results: a panel query or recording rule must return at least one series. An alerting rule's
expression is empty while it does not fire, so it is evaluated with each comparison against a number
turned into a ``bool`` comparison (``x > 0.25`` -> ``x > bool 0.25``): the same expression, every selector
and join in it, must then return series (0 or 1 per series).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vigil.broker import free_port
from vigil.config import REPO_ROOT, Settings, load_settings
from vigil.physionet import iter_stays
from vigil.replay import DEFAULT_BASE, replay_sync
from vigil.tools import dashboards_render as dr
from vigil.tools.procs import WorkerProcess

pytestmark = pytest.mark.broker

PROM_DIR = REPO_ROOT / "dashboards" / "prometheus"
STAYS = 40
CHUNK = 5  # stays per replay call
# Declared in vigil.metrics but not yet incremented by the engine: a query that is empty only because of
# one of these is reported as xfail (with the reason) instead of passing silently. Remove once wired.
BAD = [  # dead letters and invalid events need bad input
    ("vitals", b"{not json"),
    ("vitals", b'{"v":1,"source":"t","seq":2,"patient":"pt-x","time":"2026-01-01T00:00:00+00:00",'
               b'"system":"LOINC","code":"0000-0","value":80,"unit":"/min"}'),
]  # fmt: skip


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: run `make install-prometheus` (Debian's prometheus package)")
    return path


@dataclass
class Live:
    url: str
    worker: WorkerProcess
    settings: Settings
    start: float
    metrics_text: str
    logs: dict[str, Path]


# A bedside gateway's messages: accepted (AA), partly invalid (AE: dead letters) and not HL7 at all (AR). The
# patient's MRN and name must appear in no log (the listener runs at DEBUG).
MRN, NAME = "MRN-LIVE-93817", "PRIVATE^PATIENTNAME"


def _oru(control: str, obx: list[str]) -> bytes:
    segs = [f"MSH|^~\\&|MON|ICU|VIGIL|H|20260101120000+0000||ORU^R01^ORU_R01|{control}|P|2.6",
            f"PID|||{MRN}^^^H^MR||{NAME}", "PV1||I|ICU^1^4" + "|" * 16 + "V-LIVE-1",
            "OBR|1|||182777000^monitoring of patient^SCT|||20260101120000+0000", *obx]  # fmt: skip
    return "\r".join(segs).encode() + b"\r"


async def _hl7_traffic(port: int) -> None:
    from vigil.ingest.mllp import Framer, frame

    hr = "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{v}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F"
    msgs = [_oru("LIVE-OK", [hr.format(v=88)]),
            _oru("LIVE-AE", [hr.format(v=90), "OBX|2|NM|150344^MDC_TEMP^MDC||370|268192^MDC_DIM_DEGC^MDC|||||F"]),
            f"not HL7, but it names {MRN}".encode()]  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        framer, acks = Framer(), []
        for m in msgs:
            writer.write(frame(m))
            await writer.drain()
            while len(acks) < msgs.index(m) + 1:
                data = await asyncio.wait_for(reader.read(65536), 15)
                assert data, "the listener closed the connection"
                acks += framer.feed(data)
    finally:
        writer.close()


class _Receiver:
    """The clinical endpoint: 400 to the first alert (permanent: dead-lettered), 503 once to the next (retried),
    then 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.calls = 0
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                me.calls += 1
                self.send_response(400 if me.calls == 1 else 503 if me.calls == 2 else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> _Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(pred, timeout_s: float, what: str, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{tail}")


def _has(url: str, promql: str) -> bool:
    res = dr.query(url, promql)
    return res.get("status") == "success" and bool(res["data"]["result"])


async def _acknowledge_first_alert(s: Settings) -> None:
    """A nurse acknowledges the first raised alert 20 min (event time) after it: acknowledgement times exist."""
    from datetime import datetime

    import orjson

    from vigil.kafka_io import TopicTail, produce_many

    tail = await TopicTail(s, s.topic("alerts")).start()
    try:
        recs = await tail.wait_for(lambda r: any(orjson.loads(x.value)["event"] == "raised" for x in r), 60)
    finally:
        await tail.stop()
    a = next(orjson.loads(x.value) for x in recs if orjson.loads(x.value)["event"] == "raised")
    at = (datetime.fromisoformat(a["time"]) + timedelta(hours=1, minutes=20)).isoformat()
    ack = {"v": 1, "alert_id": a["alert_id"], "patient": a["patient"], "by": "rn-1", "at": at, "action": "acknowledged"}
    await produce_many(s, s.topic("alert-acks"), [(a["patient"].encode(), orjson.dumps(ack))])


@pytest.fixture(scope="module")
def live(broker: str, sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from vigil.catalog import create_topics, load_catalog
    from vigil.kafka_io import produce_many

    prometheus = _tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    tag = uuid.uuid4().hex[:10]
    s = load_settings(None, topic_prefix=f"t{tag}-", group_id=f"g{tag}", kafka={"bootstrap_servers": broker},
                      web_port=0)  # fmt: skip
    asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix, 2))
    wlog = tmp / "worker.log"
    budget = {"VIGIL_ALERTS__BUDGET__ENABLED": "true", "VIGIL_ALERTS__BUDGET__MIN_LEVEL": "0.1",
              "VIGIL_ALERTS__BUDGET__MAX_LEVEL": "0.9", "VIGIL_ALERTS__BUDGET__MIN_PATIENT_DAYS": "1"}  # its panel
    worker = WorkerProcess(s, log_path=wlog, extra_env={"VIGIL_DRIFT__MIN_ROWS": "50", **budget}).start()
    demand_port = free_port()  # the resource-demand job, scraped as job vigil-demand
    demand_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "VIGIL_TOPIC_PREFIX": s.topic_prefix,
                  "VIGIL_DEMAND__BEDS": json.dumps({"ICU-GEN": 14, "ICU-MED": 14, "ICU-SURG": 14})}  # fmt: skip
    dlog = tmp / "demand.log"
    demand = subprocess.Popen([sys.executable, "-m", "vigil", "demand", "run", "--metrics-port", str(demand_port)],
                              env=demand_env, stdout=dlog.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    # an HL7 listener (scraped as vigil-ingest) and the alert webhook forwarder (vigil-webhook) to a receiver
    # that refuses the first alert for good (dead-lettered), fails the next attempt once (retried), then accepts
    common = ["--log-format", "json", "--log-level", "DEBUG", "--bootstrap", broker, "--topic-prefix", s.topic_prefix]
    ingest_port, webhook_port = free_port(), free_port()
    ilog, hlog = tmp / "ingest.log", tmp / "webhook.log"
    ingest = subprocess.Popen([sys.executable, "-m", "vigil", *common, "ingest", "hl7", "--port", "0",
                               "--metrics-port", str(ingest_port)], env={**os.environ, "VIGIL_PSEUDONYM_KEY": "k"},
                              stdout=subprocess.PIPE, stderr=ilog.open("wb"), text=True)  # fmt: skip
    receiver = _Receiver().start()
    hook_env = {**os.environ, "VIGIL_WEBHOOK__SECRET": "live-secret", "VIGIL_WEBHOOK__BACKOFF_BASE_S": "0.05",
                "VIGIL_WEBHOOK__BACKOFF_MAX_S": "0.2"}  # fmt: skip
    webhook = subprocess.Popen([sys.executable, "-m", "vigil", *common, "alerts", "webhook", receiver.url, "--name",
                                "live", "--from-beginning", "--metrics-port", str(webhook_port)], env=hook_env,
                               stdout=subprocess.DEVNULL, stderr=hlog.open("wb"))  # fmt: skip
    port = free_port()

    def job(name: str, target_port: int) -> dict:  # type: ignore[type-arg]
        return {"job_name": name, "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}

    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted((PROM_DIR / "rules").glob("*.yml"))],
        "scrape_configs": [job("vigil-worker", worker.web_port), job("vigil-demand", demand_port),
                           job("vigil-ingest", ingest_port), job("vigil-webhook", webhook_port)],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    plog = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=plog.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        worker.wait_ready()
        start = time.time()
        _wait(lambda: _has(url, 'up{job="vigil-worker"} == 1'), 30, "Prometheus to scrape the worker", plog)
        stays = list(iter_stays(sample_path, limit=STAYS))
        for k in range(0, STAYS, CHUNK):  # in chunks, a few scrapes apart: rates and quantiles need >= 2 points
            replay_sync(s, sample_path, stays=stays[k:k + CHUNK], base=DEFAULT_BASE + timedelta(days=3 * k))
            time.sleep(1.5)

        async def bad() -> None:
            for stream, raw in BAD:
                await produce_many(s, s.topic(stream), [(b"pt-x", raw)])

        asyncio.run(bad())
        asyncio.run(_acknowledge_first_alert(s))
        mllp = ingest.stdout.readline().strip()  # type: ignore[union-attr]
        asyncio.run(_hl7_traffic(int(mllp.rsplit(":", 1)[1])))
        _wait(lambda: _has(url, "vigil_webhook_dead_lettered_total") and _has(url, "vigil_webhook_retries_total")
              and _has(url, "vigil_webhook_delivered_total > 0") and _has(url, "vigil_ingest_dead_letters_total"),
              60, "alert deliveries (one dead-lettered, one retried) and ingest dead letters", hlog)  # fmt: skip
        _wait(lambda: _has(url, "sum(vigil_scores_total) > 500") and _has(url, "vigil_drift_psi")
              and _has(url, "vigil_dead_letters_total") and _has(url, "vigil_alert_ack_seconds_count > 0"), 60,
              "scores, drift PSI, dead letters and an acknowledgement", wlog)  # fmt: skip
        _wait(lambda: _has(url, "vigil:e2e_latency_seconds:p99") and _has(url, "vigil:dead_letter_ratio:rate5m"),
              20, "the recording rules", plog)  # fmt: skip
        _wait(lambda: _has(url, "vigil_demand_expected") and _has(url, "vigil_demand_ward_free_beds"), 60,
              "resource-demand forecasts", dlog)  # fmt: skip
        time.sleep(3)  # a few more scrapes after the last output
        yield Live(url, worker, s, start, worker.metrics_text(), {"ingest": ilog, "webhook": hlog, "worker": wlog})
    finally:
        for p in (ingest, webhook):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        receiver.stop()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        worker.stop()
        demand.terminate()
        try:
            demand.wait(10)
        except subprocess.TimeoutExpired:
            demand.kill()


def _check_nonempty(live: Live, promql: str, what: str) -> None:
    res = dr.query(live.url, promql)
    assert res.get("status") == "success", f"{what}: invalid PromQL {promql!r}: {res.get('error')}"
    if not res["data"]["result"]:
        pytest.fail(f"{what}: no series for {promql!r}")


# -- promtool -----------------------------------------------------------------------------------------


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_promtool_check_config_and_rules() -> None:
    r = _promtool("check", "config", str(REPO_ROOT / "dashboards" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    rules = sorted(str(p) for p in (PROM_DIR / "rules").glob("*.yml"))
    assert rules
    r = _promtool("check", "rules", *rules)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests_cover_every_alert_firing_and_not() -> None:
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    r = _promtool("test", "rules", *map(str, tests))
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = {r["alert"] for r in dr.rule_exprs() if "alert" in r}
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for t in yaml.safe_load(path.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - firing == set(), f"alerts without a firing case: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"alerts without a non-firing case: {sorted(alerts - quiet)}"


def test_metrics_endpoint_passes_promtool_check_metrics(live: Live) -> None:
    r = _promtool("check", "metrics", stdin=live.metrics_text)
    assert r.returncode == 0, r.stdout + r.stderr


# -- every expression returns data from the live worker -----------------------------------------------

QUERIES = dr.panel_queries()
RULES = dr.rule_exprs()


@pytest.mark.parametrize("q", QUERIES, ids=[f"{q.dashboard}:{q.panel}:{q.ref}" for q in QUERIES])
def test_dashboard_query_returns_data(live: Live, q: dr.PanelQuery) -> None:
    _check_nonempty(live, q.promql, f"{q.dashboard} / {q.panel} / {q.ref}")


@pytest.mark.parametrize("v", dr.variable_queries(), ids=lambda v: f"{v[0]}:${v[1]}")
def test_dashboard_variable_returns_values(live: Live, v: tuple[str, str, str]) -> None:
    _check_nonempty(live, v[2], f"{v[0]} variable ${v[1]}")


def booleanise(expr: str) -> str:
    """``x > 0.25`` -> ``x > bool 0.25`` (comparisons with a number only; label matchers are untouched).

    >>> booleanise('(a > 1000) and (b{x!="1"} == 0) or c <= -1e-3')
    '(a > bool 1000) and (b{x!="1"} == bool 0) or c <= bool -1e-3'
    """
    return re.sub(r"(==|!=|>=|<=|>|<)(\s*)(?!bool\b)(?=[-+]?[0-9.])", r"\1 bool\2", expr)


@pytest.mark.parametrize("rule", RULES, ids=[r.get("record") or r.get("alert") for r in RULES])
def test_rule_returns_data(live: Live, rule: dict) -> None:  # type: ignore[type-arg]
    name = rule.get("record") or rule["alert"]
    expr = rule["expr"] if "record" in rule else booleanise(rule["expr"])
    _check_nonempty(live, expr, f"rule {name}")
    if "record" in rule:  # and Prometheus evaluated it into a series of its own
        _check_nonempty(live, name, f"recorded series {name}")


# -- static: names ------------------------------------------------------------------------------------


def _code_metric_names() -> set[str]:
    """Every sample name the code can export: every ``*Metrics`` class of the metrics modules, a child each."""
    import vigil.metrics
    import vigil.subscribers.metrics

    sets = [cls(CollectorRegistry()).registry  # WorkerMetrics, WebhookMetrics, DemandMetrics, ...
            for mod in (vigil.metrics, vigil.subscribers.metrics) for cls in vars(mod).values()
            if isinstance(cls, type) and cls.__name__.endswith("Metrics") and cls.__module__ == mod.__name__]
    names: set[str] = set()
    for reg in sets:
        for c in list(reg._collector_to_names):  # noqa: SLF001 - every collector, labelled or not
            if isinstance(c, Counter | Gauge | Histogram) and c._labelnames:  # noqa: SLF001
                c.labels(*["x"] * len(c._labelnames))  # noqa: SLF001
        for fam in reg.collect():
            names |= {s.name for s in fam.samples}
    return names


def test_every_metric_in_dashboards_and_rules_exists_in_the_code() -> None:
    known = _code_metric_names()
    recorded = {r["record"] for r in RULES if "record" in r}
    used: dict[str, set[str]] = {}
    for q in QUERIES:
        for m in re.findall(r"\bvigil[_:][A-Za-z0-9_:]+", q.expr):
            used.setdefault(m, set()).add(q.dashboard)
    for _d, _v, promql in dr.variable_queries():
        for m in re.findall(r"\bvigil[_:][A-Za-z0-9_:]+", promql):
            used.setdefault(m, set()).add(_d)
    for r in RULES:
        for m in re.findall(r"\bvigil[_:][A-Za-z0-9_:]+", r["expr"]):
            used.setdefault(m, set()).add(r["file"])
    assert used
    missing = {m: sorted(w) for m, w in used.items() if m not in known and m not in recorded}
    assert not missing, f"metric names that nothing exports: {missing}"


def test_grafana_files_are_provisionable() -> None:
    g = REPO_ROOT / "dashboards" / "grafana"
    prov = yaml.safe_load((g / "provisioning.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
    ds = yaml.safe_load((g / "datasources.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["uid"]
    uids = set()
    for path in sorted(g.glob("*.json")):
        d = json.loads(path.read_text())
        uids.add(d["uid"])
        var = {v["name"]: v for v in d["templating"]["list"]}
        assert var["datasource"]["type"] == "datasource" and var["datasource"]["current"]["value"] == ds["uid"]
        for p in d["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (path.name, p["title"])
            assert p["targets"], (path.name, p["title"])
    assert {"vigil-clinical", "vigil-pipeline", "vigil-model", "vigil-ward"} <= uids


# -- a look: the panels drawn from the same live queries ----------------------------------------------


def test_render_dashboards_to_png(live: Live, tmp_path: Path) -> None:
    out = Path(os.environ.get("VIGIL_DASHBOARD_PNG_DIR") or tmp_path)
    written = dr.render(live.url, out, live.start, time.time(), step=1.0)
    assert {p.name for p in written} == {f"{p.stem}.png" for p in dr.DASHBOARDS.glob("*.json")}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000, p


# -- logs: one format, no patient data ----------------------------------------------------------------


def test_live_logs_are_one_json_format_and_carry_no_patient_data(live: Live) -> None:
    """The listener (DEBUG) and the forwarder ran with --log-format json: every line is one JSON record, Faust's
    and aiohttp's included; neither they nor the worker wrote the MRN or the name of the HL7 messages."""
    for name in ("ingest", "webhook"):
        lines = [ln for ln in live.logs[name].read_text().splitlines() if ln.strip()]
        assert lines, name
        recs = [json.loads(ln) for ln in lines]  # raises on a line in another format
        assert all({"time", "level", "logger", "message"} <= set(r) for r in recs), name
    assert any(r["logger"].startswith("vigil.ingest") for r in map(json.loads, live.logs["ingest"].read_text()
                                                                    .splitlines()))  # fmt: skip
    for name, path in live.logs.items():
        text = path.read_text()
        assert MRN not in text and "PATIENTNAME" not in text, name
