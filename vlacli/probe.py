"""`vla probe`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "probe", "The 10-item transferability check-up; exit 1 below the pass mark.")
