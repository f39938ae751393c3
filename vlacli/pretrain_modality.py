"""`vla pretrain-modality`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "pretrain-modality", "Stage I: pretrain the vision, language or action encoder alone.")
