"""``vigil worker``: one streaming worker (:mod:`vigil.worker.app`) until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from vigil.commands.common import settings_of

__all__ = ["worker"]


@click.command()
@click.option("--group", default=None, help="Consumer group (workers in one group split the partitions).")
@click.option("--web-port", type=int, default=None, help="Port of /metrics, /healthz (0 = a free one).")
@click.pass_context
def worker(ctx: click.Context, group: str | None, web_port: int | None) -> None:
    """Run a streaming worker until SIGTERM/SIGINT."""
    from vigil.worker.app import run_worker

    s = settings_of(ctx)
    if group:
        s.group_id = group
    if web_port is not None:
        s.web_port = web_port
    run_worker(s, loglevel=s.log_level.lower())  # the same log format (vigil.logs.logging_config)
