"""`vla clean RAW --out CLEAN [--eval EVAL] [--rules rules.yaml]`: fix, mask or drop faults; dedupe; leak scan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlacli import __version__, console
from vlacli.options import JsonOut, OutDir, Overwrite, Quiet, examples

HELP = (
    "Clean raw episodes: fix, mask or drop timestamp, value, camera and text faults; drop duplicate "
    "episodes and eval leaks. Writes a cleaned raw dataset (masks in each meta.json) and clean_report.json."
)
EXAMPLES = examples(
    "vla clean data/raw --out data/clean",
    "vla clean data/raw --out data/clean --eval data/eval --rules examples/rules.yaml --overwrite",
    "vla clean data/raw --out data/clean --json --quiet > clean_report.json",
)


def command(
    raw: Annotated[Path, typer.Argument(help="Raw dataset: one folder per episode (meta.json + stream files).", show_default=False)],
    out: OutDir,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Eval split to scan for episodes leaked into RAW.")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="Rules YAML overriding the defaults (see examples/rules.yaml).")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.clean import clean  # heavy imports only when the command runs

    report = clean(raw, out, eval_dir=eval_dir, rules=rules, overwrite=overwrite, reporter=reporter,
                   created_by=f"vla {__version__} clean")
    from stages.cleaning.report import summary_rows

    console.summary(f"vla clean: {raw} -> {out}", summary_rows(report))
    if json_out:
        console.out.out(json.dumps(report, indent=2, ensure_ascii=False), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("clean", help=HELP, epilog=EXAMPLES)(console.guarded(command))
