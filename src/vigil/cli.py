"""The ``vigil`` command line: one subcommand per job (click). The groups with several subcommands live in
:mod:`vigil.commands` (ingest, alerts, demand, models) and are registered here."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import click

from vigil import __version__
from vigil.commands.alerts import alerts as alerts_group
from vigil.commands.api import api as api_group
from vigil.commands.common import VigilGroup, settings_of
from vigil.commands.demand import demand as demand_group
from vigil.commands.demand import demand_backtest
from vigil.commands.ingest import ingest as ingest_group
from vigil.commands.models import models as models_group
from vigil.commands.onboard import onboard as onboard_command
from vigil.config import load_settings
from vigil.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

__all__ = ["main"]

_settings = settings_of


@click.group(cls=VigilGroup)
@click.version_option(__version__, "--version", "-V", prog_name="vigil", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML/JSON settings file (environment variables VIGIL_* override it).")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--topic-prefix", default=None, help="Prefix for every catalogue topic.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Log level (default: the log_level setting, INFO).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default=None,
              help="text: one line per record; json: one JSON object per line (vigil and Faust alike).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, bootstrap: str | None, topic_prefix: str | None,
        log_level: str | None, log_format: str | None) -> None:  # fmt: skip
    """vigil: real-time clinical deterioration monitoring on Kafka."""
    overrides: dict[str, object] = {}
    if bootstrap:
        overrides["kafka"] = {"bootstrap_servers": bootstrap}
    if topic_prefix is not None:
        overrides["topic_prefix"] = topic_prefix
    if log_level:
        overrides["log_level"] = log_level.upper()
    if log_format:
        overrides["log_format"] = log_format.lower()
    settings = load_settings(config_path, **overrides)
    setup_logging(settings.log_level, settings.log_format)
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
    run_worker(s, loglevel=s.log_level.lower())  # the same log format (vigil.logs.logging_config)


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
@click.option("--family", type=click.Choice(["logreg", "mlp", "tcn", "gbm", "all"]), default="all",
              show_default=True,
              help="Model family; all = logreg, mlp, tcn (Keras) and gbm (LightGBM) on the same featurized split.")
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
@click.option("--gbm-preset", type=click.Choice(["default", "transfer"]), default="default", show_default=True,
              help="LightGBM settings (gbm family): transfer = 7 leaves, >= 2000 rows per leaf, which ranked "
                   "better across set A's units at one of two splits (docs/evaluation/robustness.md).")
@click.option("--on-drift", is_flag=True,
              help="First wait for a drift event on model-drift (published by the workers), then train.")
@click.option("--drift-model", default=None, help="With --on-drift: only events of this model name.")
@click.option("--drift-timeout", type=float, default=None, help="With --on-drift: give up after S seconds.")
@click.option("--no-demand-calibration", "skip_demand", is_flag=True,
              help="Do not fit the version's demand_calibration.json (vigil demand calibrate does it later; "
                   "`vigil models promote` refuses a version without one).")
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, family: str, name: str | None, version: str | None, seed: int,
          epochs: int, batch_size: int, patience: int, filters: int, members: int, max_stays: int | None,
          gbm_preset: str, on_drift: bool, drift_model: str | None, drift_timeout: float | None,
          skip_demand: bool) -> None:  # fmt: skip
    """Train, export (ONNX, parity-checked) and register sepsis models (needs the [train] extra).

    Each registered version also gets its resource-demand calibration (demand_calibration.json, fitted on
    the validation split as `vigil demand calibrate` does) unless --no-demand-calibration. Registered
    versions do not serve until promoted: `vigil models promote NAME:VERSION`.
    """
    if on_drift:
        from vigil.training.trigger import wait_for_drift_sync

        event = wait_for_drift_sync(_settings(ctx), model=drift_model, timeout_s=drift_timeout)
        if event is None:
            raise click.ClickException(f"no drift event within {drift_timeout} s; nothing trained")
        click.echo(json.dumps({"drift": event}))
    try:
        from vigil.training.gbm import PRESETS
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
                            patience=patience, hyper=Hyper(filters=filters), members=members,
                            gbm=PRESETS[gbm_preset])  # fmt: skip
        card = json.loads((path / "card.json").read_text())
        spec = f"{card['name']}:{card['version']}"
        calibration = None if skip_demand else _train_demand(ctx, path, spec, data, out)
        summary = {"model": spec, "path": str(path), "threshold": card["threshold"],
                   "validation": card["metrics"]["validation"], "test": card["metrics"]["test"],
                   "duration_s": card["training"]["duration_s"], "demand_calibration": calibration}  # fmt: skip
        if skip_demand:
            click.echo(f"{spec}: no demand calibration fitted (--no-demand-calibration); `vigil models promote` "
                       f"needs one: {_calibrate_hint(ctx, spec, data, out)}", err=True)  # fmt: skip
        click.echo(json.dumps(summary))


def _calibrate_hint(ctx: click.Context, spec: str, data: Path, out: Path) -> str:
    """The command that fits ``spec``'s demand calibration later (its training file; its registry if not the
    configured one)."""
    env = "" if Path(out).resolve() == Path(_settings(ctx).models_dir).resolve() else f"VIGIL_MODELS_DIR={out} "
    return f"`{env}vigil demand calibrate --model {spec} --data {data}`"


def _train_demand(ctx: click.Context, path: Path, spec: str, data: Path, out: Path) -> str | None:
    """Fit the just-registered version's demand calibration; on failure warn (the version stays registered)
    with the command that fits it, and return None."""
    from vigil.training.trainer import calibrate_demand

    try:
        return str(calibrate_demand(path, data))
    except Exception as exc:  # any failure leaves a registered version: say so, with the fix
        hint = _calibrate_hint(ctx, spec, data, out)
        click.echo(f"WARNING: {spec} is registered, but fitting its demand calibration failed "
                   f"({type(exc).__name__}: {exc}). `vigil models promote` refuses it and `vigil demand run` "
                   f"cannot use it until it has one: run {hint}", err=True)  # fmt: skip
        return None


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
@click.option("--shifts", is_flag=True,
              help="Also evaluate under measurement-habit shifts (labs thinned or absent, vitals every 2-4 h, "
                   "devices or ADT fields not interfaced, a late start): shifts.md / shifts.json.")
@click.option("--demand", is_flag=True,
              help="Instead: the resource-demand backtest (the same as `vigil demand backtest` with its defaults).")
@click.pass_context
def evaluate(ctx: click.Context, model: str | None, data: Path | None, split: str | None, out: Path | None,
             update_card: bool, limit: int | None, policy_sweep: bool, budget: float, shifts: bool,
             demand: bool) -> None:  # fmt: skip
    """Clinical evaluation at the card's threshold: utility, AUROC/AUPRC, calibration, alert burden, lead time,
    subgroups and NEWS2/qSOFA/SIRS comparators; writes report.md, metrics.json and PNGs."""
    from vigil.errors import VigilError
    from vigil.evaluation.run import DEFAULT_DATA, run_evaluation
    from vigil.registry import Registry

    if demand:
        ctx.invoke(demand_backtest, model=model, data=data, split=split, calibration_path=None,
                   out=out or Path("docs/demand"), concurrency=20, every_h=6, warmup_h=96, baseline_windows=4,
                   arrivals="poisson")
        return
    s = _settings(ctx)
    try:
        reg = Registry(s.models_dir)
        ref = reg.get(model or next(iter(reg.serving()), ""))
        _, folder, summary = run_evaluation(ref, data or DEFAULT_DATA, policy=s.alerts, split=split, out=out,
                                            limit=limit, card=update_card, policy_sweep=policy_sweep,
                                            budget=budget, shifts=shifts)  # fmt: skip
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({**summary, "report": str(folder / "report.md")}))



for _group in (ingest_group, alerts_group, demand_group, models_group, api_group, onboard_command):
    cli.add_command(_group)


def main() -> None:
    cli(prog_name="vigil")


if __name__ == "__main__":
    main()
