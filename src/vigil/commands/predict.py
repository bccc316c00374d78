"""``vigil predict``: Challenge-format predictions by the worker's code path (:mod:`vigil.predict`)."""

from __future__ import annotations

from pathlib import Path

import click

from vigil.commands.common import settings_of

__all__ = ["predict"]


@click.command()
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="PhysioNet data: a .psv directory, a .tar.gz or a .parquet.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Directory for <stay>.psv files.")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the serving model).")
@click.option("--limit", type=int, default=None)
@click.pass_context
def predict(ctx: click.Context, input_path: Path, output: Path, model: str | None, limit: int | None) -> None:
    """Challenge-format predictions (PredictedProbability|PredictedLabel) by the worker's code path."""
    from vigil.predict import predict_dir

    n = predict_dir(settings_of(ctx), input_path, output, model=model, limit=limit)
    click.echo(f"wrote {n} prediction files to {output}")
