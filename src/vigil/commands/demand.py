"""``vigil demand run|tail|calibrate|backtest``: resource demand."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

from vigil.commands.common import VigilErrorsAsClick, settings_of


@click.group()
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
    """Read adt, scores, alerts and alert-acks; every demand.interval_min minutes of event time write one forecast
    per ward x resource x horizon (expected count, 50/90/95% intervals, P(demand > capacity)) and capacity alerts
    to resource-demand. Scores of a newly promoted version count through that version's own calibration;
    patients whose sepsis alert was acknowledged as treated leave the sepsis risk set. Ctrl-C or SIGTERM stops
    it."""
    from vigil.demand.job import DemandJob, load_job_calibration
    from vigil.subscribers.runner import run_until_signalled

    s = settings_of(ctx)
    with VigilErrorsAsClick():
        job = DemandJob(s, load_job_calibration(s, model, calibration_path), emit_history=emit_history)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, addr=s.web_host, registry=job.metrics.registry)
            logging.getLogger("vigil.commands").info("metrics on http://%s:%d/metrics", s.web_host, server.server_port)
        n = asyncio.run(run_until_signalled(job.run))
    click.echo(json.dumps({"records": n}), err=True)


@demand.command("tail")
@click.option("--ward", "wards", multiple=True, help="Only this ward (repeatable; case-insensitive).")
@click.option("--resource", "resources", multiple=True, help="Only this resource, e.g. sepsis_bundle (repeatable).")
@click.option("--horizon", "horizons", type=int, multiple=True, help="Only this horizon in hours (repeatable).")
@click.option("--alerts-only", is_flag=True, help="Only capacity alerts.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained record (default: new ones).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many records.")
@click.option("--json", "as_json", is_flag=True, help="Print each record's raw JSON (one per line).")
@click.pass_context
def demand_tail(ctx: click.Context, wards: tuple[str, ...], resources: tuple[str, ...], horizons: tuple[int, ...],
                alerts_only: bool, from_beginning: bool, limit: int | None, as_json: bool) -> None:  # fmt: skip
    """Follow resource-demand: one line per ward forecast (expected count, 50/90% intervals, P(demand > capacity))
    or capacity alert. Ctrl-C or SIGTERM stops it."""
    from vigil.demand.tail import DemandFilter, format_demand
    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.tail import tail_topic

    s, flt = settings_of(ctx), DemandFilter.of(wards, resources, horizons, alerts_only)

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    async def follow(stop: asyncio.Event) -> int:
        return await tail_topic(s, "resource-demand", keep=flt.matches, render=format_demand,
                                from_beginning=from_beginning, limit=limit, as_json=as_json, out=echo,
                                stop=stop)  # fmt: skip

    with VigilErrorsAsClick():
        asyncio.run(run_until_signalled(follow))


@demand.command("calibrate")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the first serving model).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="The model's training file (default: set A in ../shared/data; its validation split is used), or "
                   "a site's own stays (used whole).")
@click.option("--split", type=click.Choice(["validation", "all"]), default=None,
              help="Default: validation of the training file, all of other data.")
@click.option("--horizon", "horizons", type=click.IntRange(min=1), multiple=True,
              help="Horizon in hours (repeatable; default 6, 12, 24).")
@click.option("--min-bin-rows", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: the model folder's demand_calibration.json).")
@click.pass_context
def demand_calibrate(ctx: click.Context, model: str | None, data: Path | None, split: str | None,
                     horizons: tuple[int, ...], min_bin_rows: int, out: Path | None) -> None:  # fmt: skip
    """Fit the score -> P(sepsis onset within h) and NEWS2 -> P(NEWS2 >= 7 within h) maps and the ward effect on
    the validation split (or on a site's own data).

    `vigil train` already does this for every version it registers (the same code,
    vigil.demand.fitting.calibrate_version); run it for older versions, to refit, or at a new site."""
    from vigil.demand.fitting import DEFAULT_HORIZONS, calibrate_version
    from vigil.evaluation.selection import data_or_default
    from vigil.registry import Registry

    s = settings_of(ctx)
    with VigilErrorsAsClick():
        reg = Registry(s.models_dir)
        ref = reg.get(model or next(iter(reg.serving()), ""))
        cal, path = calibrate_version(ref, data_or_default(data), horizons or DEFAULT_HORIZONS, min_bin_rows, out=out,
                                      split=split)  # fmt: skip
    check = cal.meta["in_sample_reliability"]

    def per(key: str) -> dict[str, dict[str, float]]:
        return {n: {h: round(v[key], 4) for h, v in c.items()} for n, c in check.items()}

    click.echo(json.dumps({"calibration": str(path), "model": f"{ref.name}:{ref.version}",
                           "base_rates": per("observed"), "in_sample_ece": per("ece")}))


@demand.command("backtest")
@click.option("--model", default=None, help="NAME[:VERSION] (default: the first serving model).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="The model's training file (default: set A in ../shared/data), or other stays (e.g. another "
                   "hospital's, used whole).")
@click.option("--split", type=click.Choice(["test", "validation", "all"]), default=None,
              help="Default: test of the training file, all of other data.")
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
@click.option("--arrivals", type=click.Choice(["poisson", "steady"]), default="poisson", show_default=True,
              help="Admission process of the simulated wards (the other one is reported as a sensitivity run).")
@click.pass_context
def demand_backtest(ctx: click.Context, model: str | None, data: Path | None, split: str | None,
                    calibration_path: Path | None, out: Path, concurrency: int, every_h: int, warmup_h: int,
                    baseline_windows: int, arrivals: str) -> None:  # fmt: skip
    """Replay held-out stays as concurrent wards and compare the forecasts with what happened: interval coverage,
    MAE against a rolling average, calibration plots; writes report.md, metrics.json and PNGs to --out."""
    from vigil.demand.backtest import BacktestConfig
    from vigil.demand.job import load_job_calibration
    from vigil.demand.report import run_backtest
    from vigil.evaluation.selection import data_or_default
    from vigil.registry import Registry

    s = settings_of(ctx)
    d = s.demand
    with VigilErrorsAsClick():
        reg = Registry(s.models_dir)
        ref = reg.get(model or d.model or next(iter(reg.serving()), ""))
        cal = load_job_calibration(s, f"{ref.name}:{ref.version}", calibration_path)
        cfg = BacktestConfig(concurrency=concurrency, every_h=every_h, warmup_h=warmup_h,
                             baseline_windows=baseline_windows, horizons=tuple(d.horizons_h), levels=tuple(d.levels),
                             exact_max=d.exact_max, arrivals=arrivals)  # fmt: skip
        summary = run_backtest(ref, data_or_default(data), cal, d.resources, split=split, out=out, cfg=cfg)
    click.echo(json.dumps(summary))
