"""``vigil api``: serve the clinicians' HTTP API; ``vigil api hash-token`` prints a token's SHA-256."""

from __future__ import annotations

import asyncio
import sys

import click

from vigil.commands.common import VigilErrorsAsClick, settings_of


@click.group(invoke_without_command=True)
@click.option("--host", default=None, help="Address to bind (default api.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=None,
              help="Port (default api.port, 8090; 0 = a free one).")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the clinicians' HTTP API (bearer tokens from api.tokens_sha256; docs/api.md) until Ctrl-C or SIGTERM:
    current risk and NEWS2 per patient and ward, open alerts, acknowledgements."""
    if ctx.invoked_subcommand is not None:
        return
    from vigil.api.server import ApiServer
    from vigil.subscribers.runner import run_until_signalled

    s = settings_of(ctx)
    if host is not None:
        s.api.host = host
    if port is not None:
        s.api.port = port

    async def serve(stop: asyncio.Event) -> None:
        server = ApiServer(s)
        await server.start()
        click.echo(f"vigil api on http://{s.api.host}:{server.port} (OpenAPI: /openapi.json)", err=True)
        sys.stderr.flush()
        try:
            await stop.wait()
        finally:
            await server.stop()

    with VigilErrorsAsClick():
        asyncio.run(run_until_signalled(serve))


@api.command("hash-token")
@click.argument("token", required=False)
def hash_token_cmd(token: str | None) -> None:
    """Print the SHA-256 of TOKEN (else read from stdin) for api.tokens_sha256; the token itself is never stored."""
    from vigil.api.auth import hash_token

    if token is None:
        token = sys.stdin.readline().rstrip("\n")
    if not token:
        raise click.UsageError("give a token (argument or one line on stdin)")
    click.echo(hash_token(token))
