"""``vigil alerts tail|webhook``: alert subscribers."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from vigil.commands.common import VigilErrorsAsClick, settings_of
from vigil.config import RULE_DEFAULTS


@click.group()
def alerts() -> None:
    """Alert subscribers: a live terminal view (tail) and a signed, at-least-once webhook forwarder."""


@alerts.command("tail")
@click.option("--ward", "wards", multiple=True, help="Only this ward (repeatable; case-insensitive).")
@click.option("--severity", "severities", multiple=True, help="Only this severity: low, medium, high, emergency.")
@click.option("--type", "types", multiple=True, type=click.Choice(sorted(RULE_DEFAULTS), case_sensitive=False),
              help="Only this alert type (repeatable).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained alert (default: new alerts).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many alerts.")
@click.option("--json", "as_json", is_flag=True, help="Print each alert's raw JSON (one per line).")
@click.pass_context
def alerts_tail(ctx: click.Context, wards: tuple[str, ...], severities: tuple[str, ...], types: tuple[str, ...],
                from_beginning: bool, limit: int | None, as_json: bool) -> None:  # fmt: skip
    """Follow the alerts topic: one line per alert (time, severity, type, ward/bed, patient pseudonym prefix,
    score vs threshold, NEWS2, message). Ctrl-C or SIGTERM stops it."""
    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.tail import AlertFilter, tail_alerts

    s, flt = settings_of(ctx), AlertFilter.of(wards, severities, types)

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    async def follow(stop: asyncio.Event) -> int:
        return await tail_alerts(s, flt=flt, from_beginning=from_beginning, limit=limit, as_json=as_json, out=echo,
                                 stop=stop)  # fmt: skip

    with VigilErrorsAsClick():
        asyncio.run(run_until_signalled(follow))


@alerts.command("webhook")
@click.argument("url")
@click.option("--group", default=None,
              help="Consumer group (default: webhook.group_prefix + destination name). A restart with the same "
                   "group resumes at the first alert not yet delivered or dead-lettered.")
@click.option("--name", default=None, help="Destination name for metric labels and the default group "
                                           "(default: the URL's host and a hash of the URL).")
@click.option("--secret-env", default=None, metavar="VAR",
              help="Environment variable holding the HMAC secret (default: VIGIL_WEBHOOK__SECRET).")
@click.option("--from-beginning", is_flag=True,
              help="A group with no committed offsets starts at the oldest retained alert (default: new alerts).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus /metrics on 127.0.0.1:PORT.")
@click.pass_context
def alerts_webhook(ctx: click.Context, url: str, group: str | None, name: str | None, secret_env: str | None,
                   from_beginning: bool, metrics_port: int | None) -> None:  # fmt: skip
    """POST every alert to URL: exact JSON bytes, Idempotency-Key, HMAC-SHA256 X-Vigil-Signature; retries with
    backoff (VIGIL_WEBHOOK__MAX_ATTEMPTS, __BACKOFF_BASE_S, __BACKOFF_MAX_S, __TIMEOUT_S), then the
    alerts-webhook-dead-letter topic. Ctrl-C or SIGTERM stops it; the alert in progress is retried on restart."""
    import os

    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.webhook import WebhookForwarder

    s = settings_of(ctx)
    if secret_env:
        secret = os.environ.get(secret_env, "")
    else:
        secret = s.webhook.secret.get_secret_value() if s.webhook.secret else ""
    if not secret:
        raise click.ClickException(f"no webhook secret: set {secret_env or 'VIGIL_WEBHOOK__SECRET'} (the HMAC key "
                                   "receivers verify X-Vigil-Signature with)")  # fmt: skip
    with VigilErrorsAsClick():
        fwd = WebhookForwarder(s, url, secret=secret, name=name, group_id=group, from_beginning=from_beginning)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, addr=s.web_host, registry=fwd.metrics.registry)
            logging.getLogger("vigil.commands").info("metrics on http://%s:%d/metrics", s.web_host, server.server_port)
        asyncio.run(run_until_signalled(fwd.run))
