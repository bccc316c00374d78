"""``vigil onboard``: adapt the serving model to a new site from the site's own sample (:mod:`vigil.onboarding`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vigil.commands.common import settings_of


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="The site's silent-mode sample: parquet, .psv directory or .tar.gz of PhysioNet-format stays.")
@click.option("--model", "base", default=None, metavar="NAME[:VERSION]",
              help="Base model (default: the first serving model).")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=0.2, show_default=True,
              help="Alerts per patient-day the site allows.")
@click.option("--unlabelled", is_flag=True,
              help="Label-free: the alert level moves (the site's own score distribution gives the budgeted alert "
                   "rate), and the threshold with --prevalence; the calibration is the base's, marked not "
                   "site-validated.")
@click.option("--prevalence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              metavar="P", help="With --unlabelled: the share of the site's ICU stays that become septic (what the "
                   "hospital knows from its own records). Moves the threshold by Bayes' rule from the base's "
                   "prevalence (vigil.onboarding.prior). Without it the base's threshold is kept.")
@click.option("--sample-frac", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Use only this seeded share of the file's stays as the site sample.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the split by patient.")
@click.option("--check-frac", type=click.FloatRange(0.05, 0.9), default=0.3, show_default=True,
              help="Share of the sample's stays held back for the report and the gate.")
@click.option("--headroom", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Choose the level within budget x (1 - headroom): the burden is estimated on a sample.")
@click.option("--level-by", type=click.Choice(["early", "utility"]), default="early", show_default=True,
              help="Labelled: the alert level within the budget maximises the share of septic stays alerted before "
                   "onset (as vigil evaluate --policy-sweep; ties to the level that spends the budget), or the "
                   "normalized utility of risk >= level. Utility itself is read at the threshold, not the level.")
@click.option("--boost-from-stays", type=click.IntRange(min=0), default=1500, show_default=True,
              help="Labelled: from this many fit stays (70 % of the sample at the default --check-frac) continued "
                   "boosting is the preferred adaptation, below it the recalibration layer; the other is kept only "
                   "if it gains more than 0.01 utility on the tune stays.")
@click.option("--name", default=None, help="Registry name of the new version (default: the base's).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for LightGBM and ONNX Runtime.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default reports/onboard-<name>-<version>/).")
@click.option("--promote", is_flag=True, help="Make the new version serve if it passed the gate.")
@click.pass_context
def onboard(ctx: click.Context, data: Path, base: str | None, budget: float, unlabelled: bool,
            prevalence: float | None, sample_frac: float | None, seed: int, check_frac: float, headroom: float,
            level_by: str, boost_from_stays: int, name: str | None, threads: int, out: Path | None,
            promote: bool) -> None:  # fmt: skip
    """A new site in one step: adapt (labelled: recalibration layer or continued boosting, chosen by measurement),
    calibrate, pick the alert level for the budget, register a new version, gate it against the base on the
    site's held-back stays and report. The last line printed is JSON with "model": "NAME:VERSION"."""
    from vigil.errors import VigilError
    from vigil.onboarding.run import OnboardOptions
    from vigil.onboarding.run import onboard as run_onboard

    opts = OnboardOptions(budget=budget, unlabelled=unlabelled, seed=seed, check_frac=check_frac, headroom=headroom,
                          prevalence=prevalence, sample_frac=sample_frac, level_by=level_by,
                          boost_from_stays=boost_from_stays,
                          name=name, threads=max(1, threads), out=out,
                          promote=promote)  # fmt: skip
    try:
        summary = run_onboard(settings_of(ctx), data, base, opts)
    except ImportError as exc:  # pragma: no cover - depends on the extra
        msg = f"labelled onboarding needs the [train] extra (LightGBM, onnxmltools): {exc}"
        raise click.ClickException(msg) from exc
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    chk = summary["check"]
    verdict = "PASSED" if summary["gate"]["passed"] else "REFUSED"
    click.echo(f"registered {summary['model']} ({summary['mode']}, {summary['adaptation']}); threshold "
               f"{summary['threshold']}, alert level {summary['alert_level']}; gate against {summary['base']} on "
               f"{summary['gate']['on']}: {verdict}; report {summary['report']}")  # fmt: skip
    from vigil.onboarding.noise import CheckNoise

    for key, what in (("crossfit_noise", "every sample stay, cross-fitted"), ("check_noise", "the check stays")):
        if summary["gate"].get(key):
            click.echo(f"gate's comparisons on {what}: {CheckNoise.from_dict(summary['gate'][key]).describe()}")
    line = {"model": summary["model"], "base": summary["base"], "mode": summary["mode"],
            "adaptation": summary["adaptation"], "threshold": summary["threshold"],
            "alert_level": summary["alert_level"], "gate_passed": summary["gate"]["passed"],
            "gate_on": summary["gate"]["on"], "gate_check_noise": summary["gate"].get("check_noise"),
            "gate_crossfit_noise": summary["gate"].get("crossfit_noise"),
            "promoted": summary["promoted"],
            "check": {"base": _short(chk["base"]), "onboarded": _short(chk["onboarded"])},
            "report": summary["report"]}  # fmt: skip
    click.echo(json.dumps(line))


def _short(r: dict[str, object]) -> dict[str, object]:
    keys = ("utility", "auroc", "alerts_per_patient_day", "share_septic_alerted_early", "ppv_stay")
    out = {k: r.get(k) for k in keys if k in r}
    onset = r.get("onset_probability")
    if isinstance(onset, dict):
        out["onset_ece"] = onset.get("ece")
    return out
