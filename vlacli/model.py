"""`vla model info`: parameter counts per module and FLOPs per sample of a model preset."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from stages.artifacts import dumps
from stages.errors import BadInput
from vlacli import console
from vlacli.options import JsonOut, Quiet, examples

model_app = typer.Typer(help="Model presets: parameter counts and FLOPs.", no_args_is_help=True)

HELP = ("Print the parameter counts (total / trainable per top-level module) and the forward FLOPs per sample "
        "of a model preset, counted with torch's FlopCounterMode on one sample.")
EXAMPLES = examples(
    "vla model info --preset tiny",
    "vla model info --preset base --json > base.json",
    "vla model info --preset small --set language.encoder=minilm --set vision.image_size=96",
)

Preset = Annotated[str, typer.Option("--preset", "-p", help="Model preset: tiny, small or base.")]
Set = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field, `path=value` (value parsed as JSON, else a string); repeatable.")]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set `{item}`: expected `path=value`",
                           hint="vla model info --preset tiny --set attention=math")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def info(preset: Preset = "tiny", set_: Set = None, json_out: JsonOut = False, quiet: Quiet = False) -> None:
    console.setup(quiet)
    from stages.model.info import model_info  # torch import only when the command runs

    result = model_info(preset, **parse_overrides(set_ or []))
    params, flops = result["parameters"], result["flops_per_sample"]
    if json_out:
        console.out.out(dumps(result), end="", highlight=False)
    else:
        table = Table(title=f"model `{preset}`", title_justify="left")
        for column in ("module", "parameters", "trainable", "forward FLOPs / sample"):
            table.add_column(column, justify="left" if column == "module" else "right")
        for name in ("vision", "language", "action", "fusion", "heads", "logit_scale"):
            table.add_row(name, f"{params[name]['total']:,}", f"{params[name]['trainable']:,}",
                          _human(flops["forward"][name]) if name in flops["forward"] else "-")
        everything = params["all"]
        table.add_row("all", f"{everything['total']:,}", f"{everything['trainable']:,}", _human(flops["forward"]["total"]))
        console.out.print(table)
    inputs = flops["inputs"]
    console.summary("model info", [
        ("preset", preset),
        ("parameters", f"{params['all']['total']:,} ({params['all']['trainable']:,} trainable)"),
        ("forward FLOPs / sample", f"{_human(flops['forward']['total'])} "
                                   f"({inputs['vision_tokens']} vision tokens, {inputs['text_tokens']} text tokens)"),
        ("masked-video pass", _human(flops["mvm_forward"])),
        ("train step (≈3× fwd)", _human(flops["train_step_estimate"])),
        ("counted with", "FlopCounterMode, math attention, matmuls only"),
    ])


def register(app: typer.Typer) -> None:
    model_app.command("info", help=HELP, epilog=EXAMPLES)(console.guarded(info))
    app.add_typer(model_app, name="model")
