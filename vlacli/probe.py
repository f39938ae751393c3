"""`vla probe CKPT --data D [--eval EVAL] --report out.json`: the 10-item transferability check-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.errors import BadInput, GateFailed
from vlacli import __version__, console
from vlacli.options import JsonOut, Overwrite, Quiet, Seed, examples

HELP = (
    "The transferability check-up of ch07 §7.10: ten checks on held-out episodes (latency robustness, spectral "
    "smoothness, open-set rejection, cycle consistency, constraint compliance, randomisation stress, low-bandwidth "
    "executability, teacher consistency, near-frame negatives, data-leak scan) plus the alignment health metrics of "
    "ch05 §5.8. Exit code 1 when fewer than --min-pass checks pass (the report is written first)."
)
EXAMPLES = examples(
    "vla probe ckpt/sft --data data/aligned --eval data/eval-aligned --report probe.json",
    "vla probe ckpt/sft --data data/aligned --report probe.json --only 3,5 --thresholds examples/probe-thresholds.yaml",
    "vla probe ckpt/sft --data data/aligned --report probe.json --min-pass 10 --json --quiet > probe.json",
)

STATUS_STYLE = {"pass": "green", "fail": "red", "skipped": "yellow"}


def _table(report: dict) -> Table:
    from stages.probes.report import table_rows

    s = report["summary"]
    table = Table(title=f"transferability check-up: {s['passed']}/{s['run']} passed (pass mark {s['min_pass']})", title_justify="left")
    for column, justify in (("#", "right"), ("check", "left"), ("value", "right"), ("gate", "left"), ("status", "left"),
                            ("note", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in table_rows(report):
        status = row[4]
        table.add_row(*row[:4], f"[{STATUS_STYLE[status]}]{status}[/]", row[5])
    return table


def _suggestions(report: dict) -> list[str]:
    return [f"{c['id']}. {c['title']}: {c['suggestion']}" for c in report["checks"] if c["suggestion"]]


def command(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint directory (model.safetensors + config.json).", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="The aligned dataset the model trained on (its held-out split is probed).",
                                       show_default=False)],
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Eval dataset: held-out tasks for open-set, more held-out episodes.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the report (schema probe-report) here.")] = None,
    min_pass: Annotated[int, typer.Option("--min-pass", help="Checks that must pass (ch07 §7.10: 8 of 10); at most the number run.")] = 8,
    only: Annotated[str | None, typer.Option("--only", help="Run only these checks: numbers or names, comma-separated (e.g. 3,5).")] = None,
    thresholds: Annotated[Path | None, typer.Option("--thresholds", help="YAML/JSON of gates and check parameters (schema probe-thresholds).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.artifacts import check_writable_parent, dumps, write_json
    from stages.probe import run_probe
    from stages.probes.context import ProbeConfig

    if report is not None:
        if report.exists() and not overwrite:
            raise BadInput(f"report `{report}` already exists", hint="choose another --report, or pass --overwrite")
        if report.is_dir():
            raise BadInput(f"--report `{report}` is a directory", caused_by="expected a file path, e.g. probe.json")
        check_writable_parent(report, what="report")
    result = run_probe(ckpt, data, eval_dir=eval_dir, only=only, thresholds=thresholds, min_pass=min_pass,
                       config=ProbeConfig(seed=seed, device=device), reporter=reporter, created_by=f"vla {__version__} probe")
    if report is not None:
        write_json(report, result, schema="probe-report")
    console.err.print(_table(result))
    for line in _suggestions(result):
        console.err.print(line, markup=False, highlight=False)
    s = result["summary"]
    console.summary(f"vla probe: {ckpt}", [
        ("checks passed", f"{s['passed']}/{s['run']} (pass mark {s['min_pass']}, {s['skipped']} skipped)"),
        ("gate", "passed" if s["gate_passed"] else "FAILED"),
        ("held-out episodes", f"{result['data']['heldout_used']} of {result['data']['heldout_episodes']} "
                              f"(+{result['data']['unknown_used']} of unseen tasks)"),
        ("V→L R@1 / R@10", "{:.3f} / {:.3f}".format(*(result["health"]["retrieval"]["V->L"][k] or 0.0 for k in ("R@1", "R@10")))),
        ("report", str(report) if report is not None else "not written (no --report)"),
        ("time", f"{result['timing_s']['total']:.1f} s"),
    ])
    if json_out:
        console.out.out(dumps(result), end="", highlight=False)
    if not s["gate_passed"]:
        failed = ", ".join(str(c["id"]) for c in result["checks"] if not c["passed"])
        raise GateFailed(f"{s['passed']} of {s['run']} checks passed, fewer than the pass mark {s['min_pass']}",
                         caused_by=f"not passed: {failed}", hint="see each check's suggestion in the report")


def register(app: typer.Typer) -> None:
    app.command("probe", help=HELP, epilog=EXAMPLES)(console.guarded(command))
