"""`vla export`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "export", "Bundle weights, logs, probe report and an RL init config, with a manifest.")
