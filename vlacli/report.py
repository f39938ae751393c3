"""`vla report RUN_DIR --out report.html`: the whole pipeline run as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlacli import __version__, console
from vlacli.options import JsonOut, Overwrite, Quiet, examples

HELP = (
    "Render a run directory as one self-contained HTML page (no network; plots embedded as PNG): data quality "
    "(clean rule counts, align-time offset histograms with P50/P95), training losses per phase with the annealed "
    "weights and the temperature, token-bucket consumption and sampling probabilities, gradient norm and angle "
    "histograms with the PCGrad hit rate, retrieval R@K and MI-bound curves, the probe table against its thresholds, "
    "the closed-loop evaluation and the export bundle. Artifacts are found by their contents (a folder holding "
    "clean_report.json, align_report.json, trainer_state.json or logs/metrics.jsonl, manifest.json; a JSON probe report anywhere); a missing one leaves its "
    "section with a one-line note."
)
EXAMPLES = examples(
    "vla report runs/demo --out runs/demo/report.html",
    "vla report runs/demo --out report.html --overwrite --quiet --json > report-index.json",
)


def command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (what examples/pipeline.sh wrote).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", show_default="RUN_DIR/report.html",
                                                help="HTML file to write (atomically).")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.artifacts import dumps
    from stages.report import render_report

    out = out if out is not None else run_dir / "report.html"
    index = render_report(run_dir, out, overwrite=overwrite, created_by=f"vla {__version__} report", reporter=reporter)
    missing = [s["title"] for s in index["sections"] if s["status"] == "missing"]
    warnings = [s for s in index["signals"] if s["level"] == "warn"]
    console.summary(f"vla report: {run_dir}", [
        ("report", f"{out} ({index['bytes'] / 1024:.0f} KiB, {len(index['figures'])} figures)"),
        ("checkpoints", ", ".join(index["artifacts"]["checkpoints"]) or "none"),
        ("missing sections", ", ".join(missing) or "none"),
        ("signals", f"{len(warnings)} to look at" if warnings else "none"),
    ])
    if json_out:
        console.out.out(dumps(index), end="", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report", help=HELP, epilog=EXAMPLES)(console.guarded(command))
