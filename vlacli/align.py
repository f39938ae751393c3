"""`vla align`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "align", "Stage II: tri-modal alignment with a curriculum, token buckets and gradient surgery.")
