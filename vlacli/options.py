"""Option aliases shared by several commands, so that a flag means the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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

# ---- training stages (pretrain-modality, align, finetune) share these
DataDir = Annotated[Path, typer.Option("--data", "-d", help="Aligned dataset (LeRobot v3.0 or v2.1 directory).")]
Preset = Annotated[str, typer.Option("--preset", "-p", help="Model preset: tiny (CPU demo), small, base.")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, show_default="the preset's default", help="Optimizer steps of the run.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, show_default="the preset's default",
                                                  help="Global batch size (all ranks together; a multiple of the number of ranks).")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", show_default="the preset's default", help="Peak learning rate (warmup, then cosine decay).")]
Init = Annotated[Optional[list[Path]], typer.Option(
    "--init", help="Checkpoint to take weights from before training, merged by module prefix; repeatable (later wins on overlap).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its newest checkpoint (bit-identical on CPU).")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto: CUDA when available; bf16 autocast on CUDA).")]
TextEncoder = Annotated[Optional[str], typer.Option(
    "--text-encoder", show_default="the preset's: bytes",
    help="Language backbone: bytes (small byte-level encoder from scratch) or minilm (frozen MiniLM + LoRA; needs the `text` extra).")]
EvalEvery = Annotated[Optional[int], typer.Option("--eval-every", min=0, show_default="about 4 per run", help="Held-out evaluation every N steps (0 = at the end only).")]
CheckpointEvery = Annotated[Optional[int], typer.Option("--checkpoint-every", min=0, show_default="about 4 per run",
                                                        help="Snapshot to OUT/checkpoints/ every N steps, for --resume (0 = final only).")]
