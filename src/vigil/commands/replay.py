"""``vigil replay``: PhysioNet stays published as bedside events (:mod:`vigil.replay`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from vigil.commands.common import settings_of

__all__ = ["replay"]


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--speed", type=float, default=None,
              help="Event-time seconds per wall second (default: as fast as possible).")
@click.option("--limit", type=int, default=None, help="Replay at most this many stays.")
@click.option("--watermarks/--no-watermarks", default=True, show_default=True,
              help="Write this producer's event-time watermark to every input partition (the worker then orders "
                   "on it instead of a wall-clock hold: vigil.punctuate).")
@click.pass_context
def replay(ctx: click.Context, path: Path, speed: float | None, limit: int | None, watermarks: bool) -> None:
    """Publish PhysioNet stays (.psv directory, .tar.gz or .parquet) as bedside events, in event-time order."""
    from vigil.replay import replay as run_replay

    stats = asyncio.run(run_replay(settings_of(ctx), path, speed=speed, limit=limit, watermarks=watermarks))
    click.echo(json.dumps(stats.as_dict() if hasattr(stats, "as_dict") else stats.__dict__, default=str))
