"""`vla model ...`: model presets (not implemented yet)."""

import typer

from vlacli._stub import register_stub

model_app = typer.Typer(help="Model presets: parameter counts and FLOPs.", no_args_is_help=True)
register_stub(model_app, "info", "Print parameter counts and FLOPs per sample of a preset.", full_name="model info")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
