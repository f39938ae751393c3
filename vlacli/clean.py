"""`vla clean`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "clean", "Clean raw episodes: fix, mask or drop faults; dedupe; leak scan.")
