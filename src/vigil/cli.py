"""The ``vigil`` command line (click): the root group and its options; every subcommand lives in
:mod:`vigil.commands` (one module each) and is registered here."""

from __future__ import annotations

import click

from vigil import __version__
from vigil.commands.alerts import alerts
from vigil.commands.api import api
from vigil.commands.broker import broker
from vigil.commands.common import VigilGroup
from vigil.commands.demand import demand
from vigil.commands.demo import demo
from vigil.commands.evaluate import evaluate
from vigil.commands.ingest import ingest
from vigil.commands.models import models
from vigil.commands.onboard import onboard
from vigil.commands.predict import predict
from vigil.commands.replay import replay
from vigil.commands.topics import topics
from vigil.commands.train import train
from vigil.commands.worker import worker
from vigil.config import load_settings
from vigil.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

__all__ = ["cli", "main"]


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


COMMANDS = (broker, topics, worker, replay, demo, train, predict, evaluate, ingest, alerts, demand, models, api,
            onboard)  # fmt: skip
for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="vigil")


if __name__ == "__main__":
    main()
