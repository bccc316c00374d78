"""``vigil ingest hl7|fhir``: the edge listeners."""

from __future__ import annotations

import asyncio

import click

from vigil.commands.common import settings_of


@click.group()
def ingest() -> None:
    """Bedside-monitor and lab feeds at the edge: HL7 v2 over MLLP, FHIR R4 Observations (docs/ingest.md)."""


def _run_ingest(serve: object) -> None:
    try:
        asyncio.run(serve)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass


@ingest.command("hl7")
@click.option("--port", type=int, default=None, help="MLLP port (default ingest.hl7_port; 0 = a free one).")
@click.pass_context
def ingest_hl7(ctx: click.Context, port: int | None) -> None:
    """MLLP listener for ORU^R01: events to vitals/labs, HL7 ACK after the broker's acks; Ctrl-C stops it."""
    from vigil.ingest.server_hl7 import serve_hl7

    _run_ingest(serve_hl7(settings_of(ctx), port))


@ingest.command("fhir")
@click.option("--port", type=int, default=None, help="HTTP port (default ingest.fhir_port; 0 = a free one).")
@click.pass_context
def ingest_fhir(ctx: click.Context, port: int | None) -> None:
    """FHIR R4 server: POST /fhir/Observation and POST /fhir (Bundle); Ctrl-C stops it."""
    from vigil.ingest.server_fhir import serve_fhir

    _run_ingest(serve_fhir(settings_of(ctx), port))
