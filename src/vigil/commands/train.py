"""``vigil train``: train, export and register sepsis models (:mod:`vigil.training`; needs the [train] extra)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vigil.card import CARD_FILE, ModelCard
from vigil.commands.common import settings_of

__all__ = ["train"]


@click.command()
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

        event = wait_for_drift_sync(settings_of(ctx), model=drift_model, timeout_s=drift_timeout)
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
        card = ModelCard.from_dict(json.loads((path / CARD_FILE).read_text()), str(path / CARD_FILE))
        spec = f"{card.name}:{card.version}"
        calibration = None if skip_demand else _train_demand(ctx, path, spec, data, out)
        summary = {"model": spec, "path": str(path), "threshold": card.threshold,
                   "validation": card.metrics["validation"], "test": card.metrics["test"],
                   "duration_s": card.training["duration_s"], "demand_calibration": calibration}  # fmt: skip
        if skip_demand:
            click.echo(f"{spec}: no demand calibration fitted (--no-demand-calibration); `vigil models promote` "
                       f"needs one: {_calibrate_hint(ctx, spec, data, out)}", err=True)  # fmt: skip
        click.echo(json.dumps(summary))


def _calibrate_hint(ctx: click.Context, spec: str, data: Path, out: Path) -> str:
    """The command that fits ``spec``'s demand calibration later (its training file; its registry if not the
    configured one)."""
    env = "" if Path(out).resolve() == Path(settings_of(ctx).models_dir).resolve() else f"VIGIL_MODELS_DIR={out} "
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
