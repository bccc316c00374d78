"""``vigil models list|show|promote|rollback``: the registry and its gate."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vigil.commands.common import VigilErrorsAsClick, settings_of


@click.group()
def models() -> None:
    """The model registry (models/): list and show versions, promote through the gate, roll back."""


def _models_root(ctx: click.Context) -> Path:
    root = Path(settings_of(ctx).models_dir)
    if not root.is_dir():
        raise click.ClickException(f"model registry {root} not found (VIGIL_MODELS_DIR)")
    return root


def _models_notify(ctx: click.Context, notify: bool | None) -> bool:
    """--notify/--no-notify, default on when a Kafka bootstrap is configured."""
    configured = bool(settings_of(ctx).kafka.bootstrap_servers)
    if notify and not configured:
        raise click.UsageError("--notify needs a Kafka bootstrap (--bootstrap or KAFKA_BOOTSTRAP_SERVERS)")
    return configured if notify is None else notify


def _models_announce(ctx: click.Context, event: dict[str, object]) -> None:
    """Publish a model-updates event after the registry changed; a failure says what did and did not happen."""
    from vigil.errors import VigilError
    from vigil.model_updates import publish_update

    s = settings_of(ctx)
    try:
        topic = publish_update(s, event, timeout_s=s.registry.notify_timeout_s)
    except VigilError as exc:
        spec = f"{event['name']}:{event['version']}"
        raise click.ClickException(
            f"{spec} is now serving (serving.json and history updated), but running workers were not told: {exc}. "
            f"Re-announce with `vigil models promote {spec} --notify` once the broker is reachable; workers that "
            "start from now on load it from serving.json."
        ) from exc
    click.echo(f"published {event['action']} {event['name']}:{event['version']} to {topic}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """One line per model version (* = serving): family, alert level in force (LEVEL: the level alerts are raised
    at on this site, vigil.levels; + = some wards/units override it), the card's operating threshold (THRESH,
    where its metrics are reported), validation and test utility/AUROC."""
    from vigil.errors import ModelError
    from vigil.levels import levels_for_card
    from vigil.registry import Registry
    from vigil.registry_view import summary_row

    reg = Registry(_models_root(ctx))
    serving = reg.serving()
    rows = []
    for name in reg.names():
        for version in reg.versions(name):
            try:
                ref = reg.get(f"{name}:{version}")
                row = summary_row(ref, serving.get(name) == version)
                levels = levels_for_card(settings_of(ctx).alerts, ref.model_card)  # the level alerts are raised at
                row["alert_level"] = levels[0].value
                row["alert_levels"] = [lv.to_dict() for lv in levels]
                rows.append(row)
            except ModelError as exc:
                click.echo(f"skipping {name}:{version}: {exc}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    def num(x: object) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "-"

    click.echo(f"{'NAME':<20} {'VERSION':>7} S {'CREATED':<20} {'FAMILY':<24} {'LEVEL':>7} {'THRESH':>6} "
               f"{'VAL_UTIL':>8} {'VAL_AUROC':>9} {'TEST_UTIL':>9} {'TEST_AUROC':>10}")  # fmt: skip
    for r in rows:
        v, t = r["validation"], r["test"]
        level = f"{r['alert_level']:g}" + ("+" if len(r["alert_levels"]) > 1 else "")
        click.echo(f"{r['name']:<20} {r['version']:>7} {'*' if r['serving'] else ' '} {r['created_at'] or '-':<20} "
                   f"{r['family']:<24} {level:>7} {r['threshold']:>6g} {num(v['utility']):>8} {num(v['auroc']):>9} "
                   f"{num(t['utility']):>9} {num(t['auroc']):>10}")  # fmt: skip


@models.command("show")
@click.argument("spec", metavar="NAME[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON.")
@click.pass_context
def models_show(ctx: click.Context, spec: str, as_json: bool) -> None:
    """A readable summary of a model card (NAME alone: the serving version, else the newest), with the alert
    level in force on this site and per ward/unit override (vigil.levels)."""
    from vigil.levels import levels_for_card
    from vigil.registry import Registry
    from vigil.registry_view import describe_card

    reg = Registry(_models_root(ctx))
    with VigilErrorsAsClick():
        ref = reg.get(spec)
    if as_json:
        click.echo(json.dumps(ref.card, indent=2))
    else:
        click.echo(describe_card(ref, serving=reg.serving().get(ref.name) == ref.version))
        for lv in levels_for_card(settings_of(ctx).alerts, ref.model_card):
            where = "on this site" if lv.scope == "site" else f"on {lv.scope}"
            click.echo(f"alert level in force {where}: {lv.value:g} ({lv.source})")


@models.command("promote")
@click.argument("spec", metavar="NAME:VERSION")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Gate data (default: settings registry.gate_data, set A): its validation split if it is the "
                   "candidate's training file, else all of it.")
@click.option("--margin-utility", type=click.FloatRange(min=0), default=None,
              help="Allowed utility drop (default: settings).")
@click.option("--margin-auroc", type=click.FloatRange(min=0), default=None,
              help="Allowed AUROC drop (default: settings).")
@click.option("--force", is_flag=True,
              help="Skip the metric comparison (the model must still load; the demand-calibration check still "
                   "applies, see --no-demand-check; no gate data needed); needs --reason, recorded in the "
                   "registry's audit.jsonl.")
@click.option("--no-demand-check", "skip_demand", is_flag=True,
              help="Skip only the check that the candidate's folder has its own demand_calibration.json: the "
                   "demand job (vigil demand run) will then have no calibration for this version and refuses to "
                   "start on it until `vigil demand calibrate --model NAME:VERSION` fits one.")
@click.option("--reason", default=None, help="Why (recorded in the history and the event).")
@click.option("--replaces", default=None, metavar="NAME",
              help="Another model line this one takes over from: gated against NAME's serving version, which "
                   "stops serving in the same switch (e.g. a new model family).")
@click.option("--notify/--no-notify", default=None,
              help="Publish the model-updates event so workers hot-swap (default: when Kafka is configured).")
@click.pass_context
def models_promote(ctx: click.Context, spec: str, data: Path | None, margin_utility: float | None,
                   margin_auroc: float | None, force: bool, skip_demand: bool, reason: str | None,
                   replaces: str | None, notify: bool | None) -> None:  # fmt: skip
    """Promote a version through the gate: it must not be worse than the serving version on the same data,
    and it must have its demand calibration (demand_calibration.json, written by `vigil train`)."""
    from vigil import audit
    from vigil.gate import run_gate
    from vigil.registry import Registry, update_event

    name, _, version = spec.partition(":")
    if not name or not version:
        raise click.UsageError(f"give NAME:VERSION, got {spec!r}")
    if force and not (reason or "").strip():
        raise click.UsageError("--force needs --reason (it is recorded in the serving history)")
    s, reg, notify = settings_of(ctx), Registry(_models_root(ctx)), _models_notify(ctx, notify)
    current = reg.serving().get(name)
    if current == version:
        click.echo(f"{spec} is already serving; nothing to change")
        if notify:
            _models_announce(ctx, update_event(name, version, "promote", from_version=version, reason="re-announce"))
        return
    mu = s.registry.margin_utility if margin_utility is None else margin_utility
    ma = s.registry.margin_auroc if margin_auroc is None else margin_auroc
    with VigilErrorsAsClick():
        result = run_gate(reg, spec, data or s.registry.gate_data, margin_utility=mu, margin_auroc=ma, force=force,
                          against=replaces, demand_check=not skip_demand)  # fmt: skip
        if not result.passed:
            click.echo(result.report(), err=True)  # the table that explains the one-line error below
            audit.record(reg.root, "promote-refused", spec, reason=reason,
                         details={"forced": force, "reasons": list(result.reasons)})  # fmt: skip
            raise click.ClickException(f"{spec} not promoted: {'; '.join(result.reasons)}")
        click.echo(result.report())
        entry = reg.switch(name, version, "promote", expect_from=result.serving_version, forced=force,
                           reason=reason, gate=result.as_dict(), replaces=replaces)  # fmt: skip
        gate = "skipped (forced)" if force else "passed"
        audit.record(reg.root, "promote", spec, reason=reason,
                     details={"forced": force, "from_version": entry["from_version"], "replaces": replaces,
                              "gate": gate, "notes": list(result.notes)})  # fmt: skip
    was = f"{replaces}:{entry['from_version']}" if replaces else (entry["from_version"] or "(none)")
    click.echo(f"promoted {name}: {was} -> {version} ({reg.root / 'serving.json'}; history {reg.history_path})")
    if notify:
        _models_announce(ctx, update_event(name, version, "promote", from_version=entry["from_version"],
                                           reason=reason, forced=force, replaces=replaces))  # fmt: skip


@models.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="Version to return to (default: the previous one served).")
@click.option("--reason", default=None, help="Why (recorded in the history and the event).")
@click.option("--notify/--no-notify", default=None,
              help="Publish the model-updates event so workers hot-swap (default: when Kafka is configured).")
@click.pass_context
def models_rollback(ctx: click.Context, name: str, to_version: str | None, reason: str | None,
                    notify: bool | None) -> None:  # fmt: skip
    """Return NAME to the version served before (the emergency path: no metric gate, but it must load; a
    missing demand calibration only warns). A line that took over from another (promote --replaces) with no
    earlier version of its own hands back to that line's version."""
    from vigil import audit
    from vigil.errors import VigilError
    from vigil.gate import demand_calibration_problem, load_checked
    from vigil.registry import Registry, update_event

    reg, notify = Registry(_models_root(ctx)), _models_notify(ctx, notify)
    current = reg.serving().get(name)
    if current is None:
        raise click.ClickException(f"no version of {name} is serving: nothing to roll back")
    line, replaces = name, None
    target = to_version or reg.previous_version(name)
    if target is None and to_version is None and (before := reg.replaced_line(name)) is not None:
        (line, target), replaces = before, name  # this line took over from another: return to that one
    if target is None:
        raise click.ClickException(f"no earlier serving version of {name} in {reg.history_path}; name one with --to")
    if line == name and target == current:
        raise click.ClickException(f"{name}:{target} is already serving")
    try:
        target_ref = reg.get(f"{line}:{target}")
        load_checked(target_ref)
    except VigilError as exc:
        raise click.ClickException(f"cannot roll back to {line}:{target}: {exc}") from exc
    problem = demand_calibration_problem(target_ref)
    if problem:
        click.echo(f"warning: rolling back anyway, but {problem}", err=True)
    with VigilErrorsAsClick():
        reg.switch(line, target, "rollback", expect_from=current, reason=reason, replaces=replaces)
    audit.record(reg.root, "rollback", f"{line}:{target}", reason=reason,
                 details={"from": f"{name}:{current}", "demand_calibration": problem or "ok"})
    was = f"{name}:{current} -> {line}:{target}, the line it replaced" if replaces else f"{name}: {current} -> {target}"
    click.echo(f"rolled back {was} ({reg.root / 'serving.json'}; history {reg.history_path})")
    if notify:
        _models_announce(ctx, update_event(line, target, "rollback", from_version=current, reason=reason,
                                           replaces=replaces))  # fmt: skip


@models.command("audit")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON array.")
@click.pass_context
def models_audit(ctx: click.Context, as_json: bool) -> None:
    """The registry's append-only audit trail (audit.jsonl): promotions (forced ones with their reason),
    refused promotions and rollbacks, who and when; exits 1 if the hash chain is broken."""
    from vigil import audit

    root = _models_root(ctx)
    entries = audit.read(root)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    else:
        for e in entries:
            forced = " FORCED" if (e.get("details") or {}).get("forced") else ""
            click.echo(f"{e['at']}  {e['action']:<16} {e['subject']:<24} by {e['actor']}{forced}"
                       + (f"  reason: {e['reason']}" if e.get("reason") else ""))  # fmt: skip
    problem = audit.verify(root)
    if problem:
        raise click.ClickException(f"audit trail broken: {problem}")
