"""``vigil ingest hl7|fhir``: the edge listeners."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import click

from vigil.commands.common import settings_of

if TYPE_CHECKING:
    from vigil.config import Settings
    from vigil.metrics import IngestMetrics

METRICS_PORT = click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
                            help="Serve Prometheus /metrics on 127.0.0.1:PORT (web_host; 0 = a free one).")  # fmt: skip


@click.group()
def ingest() -> None:
    """Bedside-monitor and lab feeds at the edge: HL7 v2 over MLLP, FHIR R4 Observations (docs/ingest.md)."""


def _metrics(s: Settings, metrics_port: int | None) -> IngestMetrics:
    """The listener's metrics, served on ``web_host:metrics_port`` when a port is given (its URL on stderr)."""
    from vigil.metrics import IngestMetrics

    metrics = IngestMetrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        server, _ = start_http_server(metrics_port, addr=s.web_host, registry=metrics.registry)
        logging.getLogger("vigil.commands").info("metrics on http://%s:%d/metrics", s.web_host, server.server_port)
    return metrics


def _refuse_dev_key(s: Settings) -> None:
    from vigil.errors import ConfigError
    from vigil.ingest.security import require_production_key

    try:
        require_production_key(s)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run_ingest(serve: object) -> None:
    try:
        asyncio.run(serve)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass


@ingest.command("hl7")
@click.option("--port", type=int, default=None, help="MLLP port (default ingest.hl7_port; 0 = a free one).")
@METRICS_PORT
@click.pass_context
def ingest_hl7(ctx: click.Context, port: int | None, metrics_port: int | None) -> None:
    """MLLP listener for ORU^R01: events to vitals/labs, HL7 ACK after the broker's acks; Ctrl-C stops it."""
    from vigil.ingest.server_hl7 import serve_hl7

    s = settings_of(ctx)
    _refuse_dev_key(s)
    _run_ingest(serve_hl7(s, port, _metrics(s, metrics_port)))


@ingest.command("fhir")
@click.option("--port", type=int, default=None, help="HTTP port (default ingest.fhir_port; 0 = a free one).")
@METRICS_PORT
@click.pass_context
def ingest_fhir(ctx: click.Context, port: int | None, metrics_port: int | None) -> None:
    """FHIR R4 server: POST /fhir/Observation and POST /fhir (Bundle); Ctrl-C stops it."""
    from vigil.ingest.server_fhir import serve_fhir

    s = settings_of(ctx)
    _refuse_dev_key(s)
    _run_ingest(serve_fhir(s, port, _metrics(s, metrics_port)))


@ingest.command("hash-token")
def ingest_hash_token() -> None:
    """Read a FHIR bearer token on stdin; print its SHA-256 for ingest.fhir_token_sha256 (store only the hash)."""
    import sys

    from vigil.ingest.security import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        raise click.ClickException("no token on stdin")
    click.echo(hash_token(token))
