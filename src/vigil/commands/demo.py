"""``vigil demo``: the whole system end to end on the embedded broker. The demo itself is a tool
(:mod:`vigil.tools.demo`), imported only when the command runs: the runtime never imports :mod:`vigil.tools`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vigil.commands.common import settings_of

__all__ = ["demo"]


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Data to replay (default: the bundled sample).")
@click.option("--limit", type=int, default=None)
@click.option("--workers", type=int, default=1, help="Worker processes in the consumer group.")
@click.pass_context
def demo(ctx: click.Context, data: Path | None, limit: int | None, workers: int) -> None:
    """End to end on the embedded broker: replay the sample, run the worker, print alerts, then SUMMARY."""
    from vigil.tools.demo import run_demo

    code = run_demo(settings_of(ctx), data=data, limit=limit, workers=workers)
    sys.exit(code)
