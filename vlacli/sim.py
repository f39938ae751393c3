"""`vla sim ...`: demo-data tooling (not implemented yet)."""

import typer

from vlacli._stub import register_stub

sim_app = typer.Typer(help="Demo data from Meta-World scripted experts.", no_args_is_help=True)
register_stub(sim_app, "record", "Record demo episodes with a sensor rig and fault injection.", full_name="sim record")


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
