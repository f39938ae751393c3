"""`vla finetune`: not implemented yet."""

import typer

from vlacli._stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "finetune", "Stage D: instruction fine-tuning of the action policy, with closed-loop evaluation.")
