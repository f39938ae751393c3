"""`vla align --schedule sched.json --data D --init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.artifacts import dumps
from vlacli import console
from vlacli.options import (BatchSize, CheckpointEvery, DataDir, Device, EvalEvery, Init, JsonOut, LearningRate, OutDir, Overwrite,
                            Preset, Quiet, Resume, Seed, Steps, TextEncoder, examples)

HELP = (
    "Stage II (ch07 §7.5–7.9, ch05 §5.2–5.8): align vision, language and action in one model under a curriculum "
    "schedule. Phases set the modality mix, annealed loss weights, the InfoNCE temperature, freeze/unfreeze globs, "
    "the LR multiplier, the difficulty range, the loss combiner (fixed, uncertainty, gradnorm, pcgrad) and exit "
    "conditions; token buckets decide which data clusters each batch draws from and which objectives they serve. "
    "Losses: bidirectional InfoNCE V↔L, L↔A, V↔A, cycle consistency, V–A spectral coherence, distillation from an "
    "EMA teacher, decollapse, and the stage-I objectives. Held-out retrieval (R@1/5/10, MRR, task relevance) and the "
    "InfoNCE MI bound go to logs/metrics.jsonl; buckets to logs/buckets.jsonl; gradient norms, cosines and PCGrad "
    "hits to logs/gradients.jsonl."
)
EXAMPLES = examples(
    "vla align --schedule examples/sched.json --data data/aligned --init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align",
    "vla align --schedule examples/sched.json --data data/aligned --init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align --resume",
    "torchrun --nproc-per-node 8 -m vlacli align --schedule examples/sched-full.json --data data/aligned --preset base "
    "--init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align",
)

Schedule = Annotated[Path, typer.Option("--schedule", "-s", help="Curriculum schedule JSON (phases, loss terms, token buckets; "
                                                                 "see docs/schedule.md).", show_default=False)]
LogEvery = Annotated[int, typer.Option("--log-every", min=1, help="Training rows of logs/metrics.jsonl every N steps.")]
GradStatsEvery = Annotated[int, typer.Option(
    "--grad-stats-every", min=0, help="Rows of logs/gradients.jsonl every N steps (0 = never; costs a backward per loss for fixed/uncertainty).")]


def command(
    schedule: Schedule,
    data: DataDir,
    out: OutDir,
    init: Init = None,
    preset: Preset = "tiny",
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = 0,
    resume: Resume = False,
    device: Device = "auto",
    text_encoder: TextEncoder = None,
    eval_every: EvalEvery = None,
    checkpoint_every: CheckpointEvery = None,
    log_every: LogEvery = 10,
    grad_stats_every: GradStatsEvery = 20,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.align import AlignConfig, align  # torch import only when the command runs

    cfg = AlignConfig(schedule=schedule, data=data, out=out, init=list(init or []), preset=preset, steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed, device=device, text_encoder=text_encoder, resume=resume, overwrite=overwrite,
                      eval_every=eval_every, checkpoint_every=checkpoint_every, log_every=log_every, grad_stats_every=grad_stats_every)
    summary = align(cfg, reporter=reporter)
    console.summary(f"vla align: {data} -> {out}", summary_rows(summary))
    if json_out:
        console.out.out(dumps(summary), end="", highlight=False)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def summary_rows(s: dict) -> list[tuple[str, str]]:
    phases = "  ".join(f"{p['name']} {p['start']}–{p['end']}"
                       + (f" (exit at {p['ended_early_at']})" if p["ended_early_at"] is not None else "") for p in s["phases"])
    rows = [
        ("checkpoint", f"{s['out']} (step {s['steps']}"
                       + (f", resumed from {s['resumed_from']})" if s.get("resumed_from") is not None else ")")),
        ("model", f"preset {s['preset']}, text encoder {s['text_encoder']}, {s['device']} {s['precision']}"
                  + (f", {s['world_size']} ranks" if s["world_size"] > 1 else "")),
        ("data", f"{s['data']}: {s['episodes']['train']} train / {s['episodes']['heldout']} held-out episodes"),
        ("schedule", f"{s['schedule_name']}: {phases}"),
        ("training", f"batch {s['batch_size']}, lr {s['lr']:g}, seed {s['seed']}, {s['train_seconds']:.1f} s"),
    ]
    if s["init"]:
        rows.insert(2, ("init", ", ".join(f"{k} <- {v}" for k, v in s["init"].items())))
    for direction, r in s["retrieval"].items():
        rows.append((f"held-out {direction}", f"R@1 {_fmt(r['r1'])} ({_fmt(r['r1_over_chance'])}× chance {_fmt(r['chance_r1'])})  "
                                              f"R@5 {_fmt(r['r5'])}  R@10 {_fmt(r['r10'])}  MRR {_fmt(r['mrr'])}"))
    ev = s["eval"]
    if "mi_vl" in ev:
        rows.append(("MI bound (nats)",
                     f"V–L {_fmt(ev['mi_vl'])}  L–A {_fmt(ev['mi_la'])}  V–A {_fmt(ev['mi_va'])}  (log N {_fmt(ev.get('log_n'))})"))
    rows.append(("buckets", "  ".join(f"{b['name']} {b['consumed_total']:.0f}" for b in s["buckets"])))
    return rows


def register(app: typer.Typer) -> None:
    app.command("align", help=HELP, epilog=EXAMPLES)(console.guarded(command))
