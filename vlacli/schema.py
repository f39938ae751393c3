"""`vla schema [NAME]`: list the shipped JSON Schemas or print one."""

from __future__ import annotations

from typing import Annotated

import typer

import schemas
from stages.errors import BadInput
from vlacli import console
from vlacli.options import examples

HELP = "List the JSON Schemas of vla's artifacts, or print one exactly as shipped."
EXAMPLES = examples("vla schema", "vla schema truth > truth.schema.json")


def command(name: Annotated[str | None, typer.Argument(help="Schema name, e.g. `truth`; omit to list them.")] = None) -> None:
    if name is None:
        for n in schemas.names():
            console.out.print(n, markup=False, highlight=False)
        return
    try:
        text = schemas.text(name)
    except KeyError:
        raise BadInput(f"unknown schema `{name}`", caused_by=f"known: {', '.join(schemas.names())}", hint="vla schema") from None
    console.out.out(text, end="", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("schema", help=HELP, epilog=EXAMPLES)(console.guarded(command))
