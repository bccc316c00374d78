"""``vigil topics create|docs``: the topic catalogue (``streams/topics.yaml``, :mod:`vigil.catalog`)."""

from __future__ import annotations

import asyncio

import click

from vigil.commands.common import settings_of

__all__ = ["topics"]


@click.group()
def topics() -> None:
    """The topic catalogue (streams/topics.yaml)."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Override the catalogue's partition counts.")
@click.pass_context
def topics_create(ctx: click.Context, partitions: int | None) -> None:
    """Create every catalogue topic (idempotent)."""
    from vigil.catalog import create_topics, load_catalog

    s = settings_of(ctx)
    made = asyncio.run(create_topics(s.kafka.client_kwargs(), load_catalog(s.streams_dir), s.topic_prefix, partitions))
    click.echo("\n".join(made))


@topics.command("docs")
@click.pass_context
def topics_docs(ctx: click.Context) -> None:
    """Print the catalogue as Markdown (docs/topics.md)."""
    from vigil.catalog import load_catalog, render_markdown

    s = settings_of(ctx)
    click.echo(render_markdown(load_catalog(s.streams_dir), s.streams_dir))
