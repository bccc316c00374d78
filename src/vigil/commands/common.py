"""Pieces shared by the ``vigil`` command modules."""

from __future__ import annotations

import click

from vigil.config import Settings

__all__ = ["settings_of", "VigilErrorsAsClick"]


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


