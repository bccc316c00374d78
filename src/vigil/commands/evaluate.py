"""``vigil evaluate``: the clinical evaluation of a model version (:mod:`vigil.evaluation`), or with ``--demand``
the resource-demand backtest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vigil.commands.common import settings_of
from vigil.commands.demand import demand_backtest

__all__ = ["evaluate"]


@click.command()
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
    from vigil.evaluation.run import run_evaluation
    from vigil.evaluation.selection import data_or_default
    from vigil.registry import Registry

    if demand:
        ctx.invoke(demand_backtest, model=model, data=data, split=split, calibration_path=None,
                   out=out or Path("docs/demand"), concurrency=20, every_h=6, warmup_h=96, baseline_windows=4,
                   arrivals="poisson")
        return
    s = settings_of(ctx)
    try:
        reg = Registry(s.models_dir)
        ref = reg.get(model or next(iter(reg.serving()), ""))
        _, folder, summary = run_evaluation(ref, data_or_default(data), policy=s.alerts, split=split, out=out,
                                            limit=limit, card=update_card, policy_sweep=policy_sweep,
                                            budget=budget, shifts=shifts)  # fmt: skip
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({**summary, "report": str(folder / "report.md")}))
