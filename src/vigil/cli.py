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

    b = EmbeddedBroker(port=port or None).start()
    click.echo(b.bootstrap, nl=True)
    sys.stdout.flush()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
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
              default=Path("../shared/data/physionet2019/setA.parquet"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option("--name", default="sepsis-mlp", show_default=True)
@click.option("--version", "version", default=None, help="Version to write (default: next free).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--max-stays", type=int, default=None)
def train(data: Path, out: Path, name: str, version: str | None, seed: int, max_stays: int | None) -> None:
    """Train the baseline MLP on PhysioNet data and register it (needs the [train] extra)."""
    try:
        from vigil.training.baseline import train_baseline
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise click.ClickException(f"training needs the [train] extra: pip install -e '.[train]' ({exc})") from exc
    from vigil.registry import Registry

    if version is None:
        have = Registry(out).versions(name)
        version = str(max((int(v) for v in have if v.isdigit()), default=0) + 1)
    path = train_baseline(data, out, name=name, version=version, seed=seed, max_stays=max_stays)
    click.echo(str(path))


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


def main() -> None:
    cli(prog_name="vigil")


if __name__ == "__main__":
    main()
