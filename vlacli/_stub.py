"""Placeholder for a stage of the design card that is not built yet: exit 2, never a fake success."""

from __future__ import annotations

import typer

from stages.errors import NotImplementedYet
from vlacli import console


def register_stub(app: typer.Typer, name: str, help: str, *, full_name: str | None = None) -> None:
    def command(ctx: typer.Context) -> None:
        raise NotImplementedYet(full_name or name)

    command.__name__ = name.replace("-", "_")
    app.command(
        name,
        help=f"{help} [not implemented yet]",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(console.guarded(command))
