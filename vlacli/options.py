"""Option aliases shared by several commands, so that a flag means the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs (errors and the summary still print).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the artifact as JSON on stdout.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (atomically, after success).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
Workers = Annotated[int, typer.Option("--workers", "-j", min=0, help="Parallel worker processes (0 = one per CPU core).")]

# `vla <stage> --help` prints this block under the options; keep one runnable line per example.
def examples(*lines: str) -> str:
    body = "\n\n".join(f"  $ {line}" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"
