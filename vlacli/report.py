"""`vla report`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "report", "Render a run directory as one self-contained HTML report.")
