"""`vla align-time`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "align-time", "Estimate clock offsets, resample onto one grid, write a LeRobot v3.0 dataset.")
