"""The root Typer app: it only wires one module per command (STYLE §9)."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from vlacli import __version__

# Order = the order of the design card; each module exposes `register(app)`.
COMMAND_MODULES = [
    "sim",
    "clean",
    "align_time",
    "pretrain_modality",
    "align",
    "finetune",
    "probe",
    "export",
    "report",
    "model",
    "schema",
]

app = typer.Typer(
    name="vla",
    help=(
        "Raw robot logs to a pretrained, probed Vision-Language-Action checkpoint, one composable stage at a time:\n\n"
        "sim record -> clean -> align-time -> pretrain-modality -> align -> finetune -> probe -> export"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vla {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Exit codes: 0 ok, 1 a gate failed, 2 bad input or usage, 3 internal error (VLA_DEBUG=1 for a traceback)."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"vlacli.{_name}").register(app)


def main() -> None:
    app()
