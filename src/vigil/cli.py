"""The ``vigil`` command line: one subcommand per job (click)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

import click

from vigil.config import Settings, load_settings

__all__ = ["main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


@click.group()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML/JSON settings file (environment variables VIGIL_* override it).")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--topic-prefix", default=None, help="Prefix for every catalogue topic.")
@click.option("--log-level", default=None)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, bootstrap: str | None, topic_prefix: str | None,
        log_level: str | None) -> None:  # fmt: skip
    """vigil: real-time clinical deterioration monitoring on Kafka."""
    overrides: dict[str, object] = {}
    if bootstrap:
        overrides["kafka"] = {"bootstrap_servers": bootstrap}
    if topic_prefix is not None:
        overrides["topic_prefix"] = topic_prefix
    settings = load_settings(config_path, **overrides)
    if log_level:
        settings.log_level = log_level
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = {"settings": settings}


@cli.command()
@click.option("--port", type=int, default=0, help="Loopback port (0 = a free one).")
def broker(port: int) -> None:
    """Start the embedded Kafka-protocol broker (Tansu) and print its address; Ctrl-C stops it."""
    from vigil.broker import EmbeddedBroker

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))  # before the address is printed
    b = EmbeddedBroker(port=port or None).start()
    click.echo(b.bootstrap, nl=True)
    sys.stdout.flush()
    try:
        while not stop["now"]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@cli.group()
def topics() -> None:
    """The topic catalogue (streams/topics.yaml)."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Override the catalogue's partition counts.")
@click.pass_context
def topics_create(ctx: click.Context, partitions: int | None) -> None:
    """Create every catalogue topic (idempotent)."""
    from vigil.catalog import create_topics, load_catalog

    s = _settings(ctx)
    made = asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix, partitions))
    click.echo("\n".join(made))


@topics.command("docs")
@click.pass_context
def topics_docs(ctx: click.Context) -> None:
    """Print the catalogue as Markdown (docs/topics.md)."""
    from vigil.catalog import load_catalog, render_markdown

    s = _settings(ctx)
    click.echo(render_markdown(load_catalog(s.streams_dir), s.streams_dir))


@cli.command()
@click.option("--group", default=None, help="Consumer group (workers in one group split the partitions).")
@click.option("--web-port", type=int, default=None, help="Port of /metrics, /healthz (0 = a free one).")
@click.pass_context
def worker(ctx: click.Context, group: str | None, web_port: int | None) -> None:
    """Run a streaming worker until SIGTERM/SIGINT."""
    from vigil.worker.app import run_worker

    s = _settings(ctx)
    if group:
        s.group_id = group
    if web_port is not None:
        s.web_port = web_port
    run_worker(s, loglevel=s.log_level.lower())


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--speed", type=float, default=None,
              help="Event-time seconds per wall second (default: as fast as possible).")
@click.option("--limit", type=int, default=None, help="Replay at most this many stays.")
@click.pass_context
def replay(ctx: click.Context, path: Path, speed: float | None, limit: int | None) -> None:
    """Publish PhysioNet stays (.psv directory, .tar.gz or .parquet) as bedside events."""
    from vigil.replay import replay as run_replay

    stats = asyncio.run(run_replay(_settings(ctx), path, speed=speed, limit=limit))
    click.echo(json.dumps(stats.as_dict() if hasattr(stats, "as_dict") else stats.__dict__, default=str))


@cli.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Data to replay (default: the bundled sample).")
@click.option("--limit", type=int, default=None)
@click.option("--workers", type=int, default=1, help="Worker processes in the consumer group.")
@click.pass_context
def demo(ctx: click.Context, data: Path | None, limit: int | None, workers: int) -> None:
    """End to end on the embedded broker: replay the sample, run the worker, print alerts, then SUMMARY."""
    from vigil.demo import run_demo

    code = run_demo(_settings(ctx), data=data, limit=limit, workers=workers)
    sys.exit(code)


@cli.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              default=Path("../shared/data/physionet2019/setA.parquet"), show_default=True,
              help="Parquet file, .psv directory or .tar.gz of PhysioNet stays.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option("--family", type=click.Choice(["logreg", "mlp", "tcn", "all"]), default="all", show_default=True,
              help="Model family; all = logreg, mlp and tcn on the same featurized split.")
@click.option("--name", default=None, help="Registry name (default sepsis-<family>; one family only).")
@click.option("--version", "version", default=None, help="Version to write (default: next free).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=2048, show_default=True)
@click.option("--patience", type=int, default=4, show_default=True)
@click.option("--filters", type=int, default=64, show_default=True, help="TCN width (128-256 on a GPU).")
@click.option("--members", type=int, default=1, show_default=True,
              help="Train N copies (seeds seed..seed+N-1) and export their mean as one model.")
@click.option("--max-stays", type=int, default=None, help="Use only the first N stays (smoke runs).")
@click.option("--on-drift", is_flag=True,
              help="First wait for a drift event on model-drift (published by the workers), then train.")
@click.option("--drift-model", default=None, help="With --on-drift: only events of this model name.")
@click.option("--drift-timeout", type=float, default=None, help="With --on-drift: give up after S seconds.")
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, family: str, name: str | None, version: str | None, seed: int,
          epochs: int, batch_size: int, patience: int, filters: int, members: int, max_stays: int | None,
          on_drift: bool, drift_model: str | None, drift_timeout: float | None) -> None:  # fmt: skip
    """Train, export (ONNX, parity-checked) and register sepsis models (needs the [train] extra).

    Registered versions do not serve until promoted: `vigil models promote NAME:VERSION`.
    """
    if on_drift:
        from vigil.training.trigger import wait_for_drift_sync

        event = wait_for_drift_sync(_settings(ctx), model=drift_model, timeout_s=drift_timeout)
        if event is None:
            raise click.ClickException(f"no drift event within {drift_timeout} s; nothing trained")
        click.echo(json.dumps({"drift": event}))
    try:
        from vigil.training.models import FAMILIES, Hyper
        from vigil.training.trainer import prepare, train_family
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise click.ClickException(f"training needs the [train] extra: pip install -e '.[train]' ({exc})") from exc
    families = list(FAMILIES) if family == "all" else [family]
    if name and len(families) > 1:
        raise click.UsageError("--name needs a single --family")
    ds = prepare(data, seed=seed, max_stays=max_stays, with_sequence="tcn" in families)
    for fam in families:
        path = train_family(ds, fam, out, name=name, version=version, epochs=epochs, batch_size=batch_size,
                            patience=patience, hyper=Hyper(filters=filters), members=members)  # fmt: skip
        card = json.loads((path / "card.json").read_text())
        summary = {"model": f"{card['name']}:{card['version']}", "path": str(path), "threshold": card["threshold"],
                   "validation": card["metrics"]["validation"], "test": card["metrics"]["test"],
                   "duration_s": card["training"]["duration_s"]}  # fmt: skip
        click.echo(json.dumps(summary))


@cli.command()
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="PhysioNet data: a .psv directory, a .tar.gz or a .parquet.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Directory for <stay>.psv files.")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the serving model).")
@click.option("--limit", type=int, default=None)
@click.pass_context
def predict(ctx: click.Context, input_path: Path, output: Path, model: str | None, limit: int | None) -> None:
    """Challenge-format predictions (PredictedProbability|PredictedLabel) by the worker's code path."""
    from vigil.predict import predict_dir

    n = predict_dir(_settings(ctx), input_path, output, model=model, limit=limit)
    click.echo(f"wrote {n} prediction files to {output}")


@cli.command()
@click.option("--model", default=None, help="NAME[:VERSION] (default: the first serving model).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Parquet, .psv directory or .tar.gz of PhysioNet stays (default: set A in ../shared/data).")
@click.option("--split", type=click.Choice(["test", "validation", "train", "all"]), default=None,
              help="Split of the model's training file (default test); other data is evaluated whole (all).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default reports/<name>-<version>-<split>/).")
@click.option("--update-card", is_flag=True, help="Record the metrics in the model card under evaluation.<split>.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N stays of the selection.")
@click.option("--policy-sweep", is_flag=True,
              help="Also replay a grid of model-risk alert rules: trade-off PNG and the rule to choose "
                   "(run on --split validation).")
@click.option("--budget", type=float, default=0.2, show_default=True,
              help="Alerts per patient-day allowed when choosing a rule in --policy-sweep.")
@click.option("--demand", is_flag=True,
              help="Instead: the resource-demand backtest (the same as `vigil demand backtest` with its defaults).")
@click.pass_context
def evaluate(ctx: click.Context, model: str | None, data: Path | None, split: str | None, out: Path | None,
             update_card: bool, limit: int | None, policy_sweep: bool, budget: float,
             demand: bool) -> None:  # fmt: skip
    """Clinical evaluation at the card's threshold: utility, AUROC/AUPRC, calibration, alert burden, lead time,
    subgroups and NEWS2/qSOFA/SIRS comparators; writes report.md, metrics.json and PNGs."""
    from vigil.errors import VigilError
    from vigil.evaluation.report import DEFAULT_DATA, run_evaluation
    from vigil.registry import Registry

    if demand:
        ctx.invoke(demand_backtest, model=model, data=data, split=split or "test", calibration_path=None,
                   out=out or Path("docs/demand"), concurrency=20, every_h=6, warmup_h=96, baseline_windows=4)
        return
    s = _settings(ctx)
    try:
        reg = Registry(s.models_dir)
        ref = reg.get(model or next(iter(reg.serving()), ""))
        _, folder, summary = run_evaluation(ref, data or DEFAULT_DATA, policy=s.alerts, split=split, out=out,
                                            limit=limit, card=update_card, policy_sweep=policy_sweep,
                                            budget=budget)  # fmt: skip
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({**summary, "report": str(folder / "report.md")}))


@cli.group()
def ingest() -> None:
    """Bedside-monitor and lab feeds at the edge: HL7 v2 over MLLP, FHIR R4 Observations (docs/ingest.md)."""


def _run_ingest(serve: object) -> None:
    try:
        asyncio.run(serve)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass


@ingest.command("hl7")
@click.option("--port", type=int, default=None, help="MLLP port (default ingest.hl7_port; 0 = a free one).")
@click.pass_context
def ingest_hl7(ctx: click.Context, port: int | None) -> None:
    """MLLP listener for ORU^R01: events to vitals/labs, HL7 ACK after the broker's acks; Ctrl-C stops it."""
    from vigil.ingest.server_hl7 import serve_hl7

    _run_ingest(serve_hl7(_settings(ctx), port))


@ingest.command("fhir")
@click.option("--port", type=int, default=None, help="HTTP port (default ingest.fhir_port; 0 = a free one).")
@click.pass_context
def ingest_fhir(ctx: click.Context, port: int | None) -> None:
    """FHIR R4 server: POST /fhir/Observation and POST /fhir (Bundle); Ctrl-C stops it."""
    from vigil.ingest.server_fhir import serve_fhir

    _run_ingest(serve_fhir(_settings(ctx), port))


@cli.group()
def alerts() -> None:
    """Alert subscribers: a live terminal view (tail) and a signed, at-least-once webhook forwarder."""


@alerts.command("tail")
@click.option("--ward", "wards", multiple=True, help="Only this ward (repeatable; case-insensitive).")
@click.option("--severity", "severities", multiple=True, help="Only this severity: low, medium, high, emergency.")
@click.option("--type", "types", multiple=True, help="Only this alert type, e.g. model_risk, news2_emergency.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained alert (default: new alerts).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many alerts.")
@click.option("--json", "as_json", is_flag=True, help="Print each alert's raw JSON (one per line).")
@click.pass_context
def alerts_tail(ctx: click.Context, wards: tuple[str, ...], severities: tuple[str, ...], types: tuple[str, ...],
                from_beginning: bool, limit: int | None, as_json: bool) -> None:  # fmt: skip
    """Follow the alerts topic: one line per alert (time, severity, type, ward/bed, patient pseudonym prefix,
    score vs threshold, NEWS2, message). Ctrl-C or SIGTERM stops it."""
    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.tail import AlertFilter, tail_alerts

    s, flt = _settings(ctx), AlertFilter.of(wards, severities, types)

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    async def follow(stop: asyncio.Event) -> int:
        return await tail_alerts(s, flt=flt, from_beginning=from_beginning, limit=limit, as_json=as_json, out=echo,
                                 stop=stop)  # fmt: skip

    with _VigilErrorsAsClick():
        asyncio.run(run_until_signalled(follow))


@alerts.command("webhook")
@click.argument("url")
@click.option("--group", default=None,
              help="Consumer group (default: webhook.group_prefix + destination name). A restart with the same "
                   "group resumes at the first alert not yet delivered or dead-lettered.")
@click.option("--name", default=None, help="Destination name for metric labels and the default group "
                                           "(default: the URL's host and a hash of the URL).")
@click.option("--secret-env", default=None, metavar="VAR",
              help="Environment variable holding the HMAC secret (default: VIGIL_WEBHOOK__SECRET).")
@click.option("--from-beginning", is_flag=True,
              help="A group with no committed offsets starts at the oldest retained alert (default: new alerts).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus /metrics on 127.0.0.1:PORT.")
@click.pass_context
def alerts_webhook(ctx: click.Context, url: str, group: str | None, name: str | None, secret_env: str | None,
                   from_beginning: bool, metrics_port: int | None) -> None:  # fmt: skip
    """POST every alert to URL: exact JSON bytes, Idempotency-Key, HMAC-SHA256 X-Vigil-Signature; retries with
    backoff (VIGIL_WEBHOOK__MAX_ATTEMPTS, __BACKOFF_BASE_S, __BACKOFF_MAX_S, __TIMEOUT_S), then the
    alerts-webhook-dead-letter topic. Ctrl-C or SIGTERM stops it; the alert in progress is retried on restart."""
    import os

    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.webhook import WebhookForwarder

    s = _settings(ctx)
    if secret_env:
        secret = os.environ.get(secret_env, "")
    else:
        secret = s.webhook.secret.get_secret_value() if s.webhook.secret else ""
    if not secret:
        raise click.ClickException(f"no webhook secret: set {secret_env or 'VIGIL_WEBHOOK__SECRET'} (the HMAC key "
                                   "receivers verify X-Vigil-Signature with)")  # fmt: skip
    with _VigilErrorsAsClick():
        fwd = WebhookForwarder(s, url, secret=secret, name=name, group_id=group, from_beginning=from_beginning)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, addr=s.web_host, registry=fwd.metrics.registry)
            click.echo(f"metrics on http://{s.web_host}:{server.server_port}/metrics", err=True)
        asyncio.run(run_until_signalled(fwd.run))


@cli.group()
def demand() -> None:
    """Resource demand per ward (sepsis bundles, critical-care reviews): the streaming job, its calibration and
    its backtest (vigil.demand)."""


@demand.command("run")
@click.option("--model", default=None, help="NAME[:VERSION] whose scores count (default: demand.model, else the "
                                            "first serving model).")
@click.option("--calibration", "calibration_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration file (default: demand.calibration_file, else the model folder's "
                                 "demand_calibration.json).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus /metrics on 127.0.0.1:PORT.")
@click.option("--emit-history", is_flag=True, help="Also emit the forecasts of the retained history (a backfill).")
@click.pass_context
def demand_run(ctx: click.Context, model: str | None, calibration_path: Path | None, metrics_port: int | None,
               emit_history: bool) -> None:  # fmt: skip
    """Read adt and scores; every demand.interval_min minutes of event time write one forecast per ward x resource
    x horizon (expected count, 50/90/95% intervals, P(demand > capacity)) and capacity alerts to resource-demand.
    Ctrl-C or SIGTERM stops it."""
    from vigil.demand.job import DemandJob, load_job_calibration
    from vigil.subscribers.runner import run_until_signalled

    s = _settings(ctx)
    with _VigilErrorsAsClick():
        job = DemandJob(s, load_job_calibration(s, model, calibration_path), emit_history=emit_history)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, addr=s.web_host, registry=job.metrics.registry)
            click.echo(f"metrics on http://{s.web_host}:{server.server_port}/metrics", err=True)
        n = asyncio.run(run_until_signalled(job.run))
    click.echo(json.dumps({"records": n}), err=True)


@demand.command("calibrate")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the first serving model).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="The model's training file (default: set A in ../shared/data); its validation split is used.")
@click.option("--horizon", "horizons", type=click.IntRange(min=1), multiple=True,
              help="Horizon in hours (repeatable; default 6, 12, 24).")
@click.option("--min-bin-rows", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: the model folder's demand_calibration.json).")
@click.pass_context
def demand_calibrate(ctx: click.Context, model: str | None, data: Path | None, horizons: tuple[int, ...],
                     min_bin_rows: int, out: Path | None) -> None:  # fmt: skip
    """Fit the score -> P(sepsis onset within h) and NEWS2 -> P(NEWS2 >= 7 within h) maps on the validation split."""
    from vigil.demand.calibration import CALIBRATION_FILE
    from vigil.demand.fitting import DEFAULT_HORIZONS, fit_calibration, score_split
    from vigil.evaluation.selection import DEFAULT_DATA
    from vigil.registry import Registry

    s = _settings(ctx)
    with _VigilErrorsAsClick():
        reg = Registry(s.models_dir)
        ref = reg.get(model or next(iter(reg.serving()), ""))
        rows = score_split(ref, data or DEFAULT_DATA, "validation")
        seed = ((ref.card.get("training") or {}).get("split") or {}).get("seed")
        cal = fit_calibration(rows, ref, horizons or DEFAULT_HORIZONS, min_bin_rows, seed=seed)
        path = cal.save(out or ref.path / CALIBRATION_FILE)
    check = cal.meta["in_sample_reliability"]

    def per(key: str) -> dict[str, dict[str, float]]:
        return {n: {h: round(v[key], 4) for h, v in c.items()} for n, c in check.items()}

    click.echo(json.dumps({"calibration": str(path), "model": f"{ref.name}:{ref.version}",
                           "base_rates": per("observed"), "in_sample_ece": per("ece")}))


@demand.command("backtest")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the first serving model).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="The model's training file (default: set A in ../shared/data).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True)
@click.option("--calibration", "calibration_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration file (default: the model folder's demand_calibration.json).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/demand"),
              show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=20, show_default=True,
              help="Patients present per simulated ward.")
@click.option("--every-h", type=click.IntRange(min=1), default=6, show_default=True, help="Hours between forecasts.")
@click.option("--warmup-h", type=click.IntRange(min=0), default=96, show_default=True)
@click.option("--baseline-windows", type=click.IntRange(min=1), default=4, show_default=True,
              help="Previous windows averaged by the rolling-average baseline.")
@click.pass_context
def demand_backtest(ctx: click.Context, model: str | None, data: Path | None, split: str,
                    calibration_path: Path | None, out: Path, concurrency: int, every_h: int, warmup_h: int,
                    baseline_windows: int) -> None:  # fmt: skip
    """Replay held-out stays as concurrent wards and compare the forecasts with what happened: interval coverage,
    MAE against a rolling average, calibration plots; writes report.md, metrics.json and PNGs to --out."""
    from vigil.demand.backtest import BacktestConfig
    from vigil.demand.job import load_job_calibration
    from vigil.demand.report import run_backtest
    from vigil.evaluation.selection import DEFAULT_DATA
    from vigil.registry import Registry

    s = _settings(ctx)
    d = s.demand
    with _VigilErrorsAsClick():
        reg = Registry(s.models_dir)
        ref = reg.get(model or d.model or next(iter(reg.serving()), ""))
        cal = load_job_calibration(s, f"{ref.name}:{ref.version}", calibration_path)
        cfg = BacktestConfig(concurrency=concurrency, every_h=every_h, warmup_h=warmup_h,
                             baseline_windows=baseline_windows, horizons=tuple(d.horizons_h), levels=tuple(d.levels),
                             exact_max=d.exact_max)  # fmt: skip
        summary = run_backtest(ref, data or DEFAULT_DATA, cal, d.resources, split=split, out=out, cfg=cfg)
    click.echo(json.dumps(summary))


@cli.group()
def models() -> None:
    """The model registry (models/): list and show versions, promote through the gate, roll back."""


class _VigilErrorsAsClick:
    """Context manager: a vigil error (model, data, registry, publishing) becomes a click error, so the
    command prints one clear message and exits 1 instead of a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from vigil.errors import VigilError

        if isinstance(exc, VigilError):
            raise click.ClickException(str(exc)) from exc


def _models_root(ctx: click.Context) -> Path:
    root = Path(_settings(ctx).models_dir)
    if not root.is_dir():
        raise click.ClickException(f"model registry {root} not found (VIGIL_MODELS_DIR)")
    return root


def _models_notify(ctx: click.Context, notify: bool | None) -> bool:
    """--notify/--no-notify, default on when a Kafka bootstrap is configured."""
    configured = bool(_settings(ctx).kafka.bootstrap_servers)
    if notify and not configured:
        raise click.UsageError("--notify needs a Kafka bootstrap (--bootstrap or KAFKA_BOOTSTRAP_SERVERS)")
    return configured if notify is None else notify


def _models_announce(ctx: click.Context, event: dict[str, object]) -> None:
    """Publish a model-updates event after the registry changed; a failure says what did and did not happen."""
    from vigil.errors import VigilError
    from vigil.registry import publish_update

    s = _settings(ctx)
    try:
        topic = publish_update(s, event, timeout_s=s.registry.notify_timeout_s)
    except VigilError as exc:
        spec = f"{event['name']}:{event['version']}"
        raise click.ClickException(
            f"{spec} is now serving (serving.json and history updated), but running workers were not told: {exc}. "
            f"Re-announce with `vigil models promote {spec} --notify` once the broker is reachable; workers that "
            "start from now on load it from serving.json."
        ) from exc
    click.echo(f"published {event['action']} {event['name']}:{event['version']} to {topic}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """One line per model version (* = serving): family, threshold, validation and test utility/AUROC."""
    from vigil.errors import ModelError
    from vigil.registry import Registry, summary_row

    reg = Registry(_models_root(ctx))
    serving = reg.serving()
    rows = []
    for name in reg.names():
        for version in reg.versions(name):
            try:
                rows.append(summary_row(reg.get(f"{name}:{version}"), serving.get(name) == version))
            except ModelError as exc:
                click.echo(f"skipping {name}:{version}: {exc}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    def num(x: object) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "-"

    click.echo(f"{'NAME':<20} {'VERSION':>7} S {'CREATED':<20} {'FAMILY':<24} {'THRESH':>6} {'VAL_UTIL':>8} "
               f"{'VAL_AUROC':>9} {'TEST_UTIL':>9} {'TEST_AUROC':>10}")  # fmt: skip
    for r in rows:
        v, t = r["validation"], r["test"]
        click.echo(f"{r['name']:<20} {r['version']:>7} {'*' if r['serving'] else ' '} {r['created_at'] or '-':<20} "
                   f"{r['family']:<24} {r['threshold']:>6g} {num(v['utility']):>8} {num(v['auroc']):>9} "
                   f"{num(t['utility']):>9} {num(t['auroc']):>10}")  # fmt: skip


@models.command("show")
@click.argument("spec", metavar="NAME[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON.")
@click.pass_context
def models_show(ctx: click.Context, spec: str, as_json: bool) -> None:
    """A readable summary of a model card (NAME alone: the serving version, else the newest)."""
    from vigil.registry import Registry, describe_card

    reg = Registry(_models_root(ctx))
    with _VigilErrorsAsClick():
        ref = reg.get(spec)
    if as_json:
        click.echo(json.dumps(ref.card, indent=2))
    else:
        click.echo(describe_card(ref, serving=reg.serving().get(ref.name) == ref.version))


@models.command("promote")
@click.argument("spec", metavar="NAME:VERSION")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Gate data (default: settings registry.gate_data, set A): its validation split if it is the "
                   "candidate's training file, else all of it.")
@click.option("--margin-utility", type=click.FloatRange(min=0), default=None,
              help="Allowed utility drop (default: settings).")
@click.option("--margin-auroc", type=click.FloatRange(min=0), default=None,
              help="Allowed AUROC drop (default: settings).")
@click.option("--force", is_flag=True, help="Skip the metric comparison (the model must still load); needs --reason.")
@click.option("--reason", default=None, help="Why (recorded in the history and the event).")
@click.option("--replaces", default=None, metavar="NAME",
              help="Another model line this one takes over from: gated against NAME's serving version, which "
                   "stops serving in the same switch (e.g. a new model family).")
@click.option("--notify/--no-notify", default=None,
              help="Publish the model-updates event so workers hot-swap (default: when Kafka is configured).")
@click.pass_context
def models_promote(ctx: click.Context, spec: str, data: Path | None, margin_utility: float | None,
                   margin_auroc: float | None, force: bool, reason: str | None, replaces: str | None,
                   notify: bool | None) -> None:  # fmt: skip
    """Promote a version through the gate: it must not be worse than the serving version on the same data."""
    from vigil.gate import run_gate
    from vigil.registry import Registry, update_event

    name, _, version = spec.partition(":")
    if not name or not version:
        raise click.UsageError(f"give NAME:VERSION, got {spec!r}")
    if force and not (reason or "").strip():
        raise click.UsageError("--force needs --reason (it is recorded in the serving history)")
    s, reg, notify = _settings(ctx), Registry(_models_root(ctx)), _models_notify(ctx, notify)
    current = reg.serving().get(name)
    if current == version:
        click.echo(f"{spec} is already serving; nothing to change")
        if notify:
            _models_announce(ctx, update_event(name, version, "promote", from_version=version, reason="re-announce"))
        return
    mu = s.registry.margin_utility if margin_utility is None else margin_utility
    ma = s.registry.margin_auroc if margin_auroc is None else margin_auroc
    with _VigilErrorsAsClick():
        result = run_gate(reg, spec, data or s.registry.gate_data, margin_utility=mu, margin_auroc=ma, force=force,
                          against=replaces)  # fmt: skip
        if not result.passed:
            raise click.ClickException(f"{spec} not promoted\n{result.report()}")
        click.echo(result.report())
        entry = reg.switch(name, version, "promote", expect_from=result.serving_version, forced=force,
                           reason=reason, gate=result.as_dict(), replaces=replaces)  # fmt: skip
    was = f"{replaces}:{entry['from_version']}" if replaces else (entry["from_version"] or "(none)")
    click.echo(f"promoted {name}: {was} -> {version} ({reg.root / 'serving.json'}; history {reg.history_path})")
    if notify:
        _models_announce(ctx, update_event(name, version, "promote", from_version=entry["from_version"],
                                           reason=reason, forced=force, replaces=replaces))  # fmt: skip


@models.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="Version to return to (default: the previous one served).")
@click.option("--reason", default=None, help="Why (recorded in the history and the event).")
@click.option("--notify/--no-notify", default=None,
              help="Publish the model-updates event so workers hot-swap (default: when Kafka is configured).")
@click.pass_context
def models_rollback(ctx: click.Context, name: str, to_version: str | None, reason: str | None,
                    notify: bool | None) -> None:  # fmt: skip
    """Return NAME to the version served before (the emergency path: no metric gate, but it must load)."""
    from vigil.errors import VigilError
    from vigil.gate import load_checked
    from vigil.registry import Registry, update_event

    reg, notify = Registry(_models_root(ctx)), _models_notify(ctx, notify)
    current = reg.serving().get(name)
    if current is None:
        raise click.ClickException(f"no version of {name} is serving: nothing to roll back")
    target = to_version or reg.previous_version(name)
    if target is None:
        raise click.ClickException(f"no earlier serving version of {name} in {reg.history_path}; name one with --to")
    if target == current:
        raise click.ClickException(f"{name}:{target} is already serving")
    try:
        load_checked(reg.get(f"{name}:{target}"))
    except VigilError as exc:
        raise click.ClickException(f"cannot roll back to {name}:{target}: {exc}") from exc
    with _VigilErrorsAsClick():
        reg.switch(name, target, "rollback", expect_from=current, reason=reason)
    click.echo(f"rolled back {name}: {current} -> {target} ({reg.root / 'serving.json'}; history {reg.history_path})")
    if notify:
        _models_announce(ctx, update_event(name, target, "rollback", from_version=current, reason=reason))


def main() -> None:
    cli(prog_name="vigil")


if __name__ == "__main__":
    main()
