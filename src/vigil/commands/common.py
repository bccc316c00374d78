"""Pieces shared by the ``vigil`` command modules."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from vigil.config import Settings

__all__ = ["settings_of", "VigilErrorsAsClick", "VigilGroup", "one_line"]


def settings_of(ctx: click.Context) -> Settings:
    """The settings the top-level ``vigil`` group loaded."""
    return ctx.find_root().obj["settings"]  # type: ignore[no-any-return]


class VigilErrorsAsClick:
    """Context manager: a vigil error (model, data, registry, publishing) becomes a click error, so the
    command prints one clear message and exits 1 instead of a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from vigil.errors import VigilError

        if isinstance(exc, VigilError):
            raise click.ClickException(str(exc)) from exc




def one_line(text: str) -> str:
    """``text`` with its whitespace (newlines included) collapsed: an error is one line."""
    return " ".join(str(text).split())


class VigilGroup(click.Group):
    """The root ``vigil`` group: every error a user can cause ends as ONE line on stderr and a non-zero exit
    (usage errors 2, other errors 1), never a traceback: click's errors, and any :class:`VigilError`
    (settings, model, data, registry) raised by a command or by loading the settings."""

    def invoke(self, ctx: click.Context) -> Any:
        from aiokafka.errors import KafkaError

        from vigil.errors import VigilError

        try:
            return super().invoke(ctx)
        except VigilError as exc:
            raise click.ClickException(str(exc)) from exc
        except (KafkaError, OSError, TimeoutError) as exc:  # the environment: broker unreachable, a file, a port
            logging.getLogger("vigil.cli").debug("command failed", exc_info=True)  # the traceback at DEBUG
            text, name = one_line(str(exc)), type(exc).__name__
            raise click.ClickException(text if text.startswith(name) else f"{name}: {text}") from exc

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "vigil"
            click.echo(f"Error: {one_line(exc.format_message())} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)
