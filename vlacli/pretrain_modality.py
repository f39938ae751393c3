"""`vla pretrain-modality --modality vision|language|action --data D --out ckpt/X`: stage I of ch07."""

from __future__ import annotations

from typing import Annotated

import typer

from stages.artifacts import dumps
from vlacli import console
from vlacli.options import (BatchSize, CheckpointEvery, DataDir, Device, EvalEvery, Init, JsonOut, LearningRate, OutDir,
                            Overwrite, Preset, Quiet, Resume, Seed, Steps, TextEncoder, examples)

HELP = (
    "Stage I (ch07 §7.2–7.4): pretrain one modality's encoder alone and write a checkpoint directory. "
    "vision: masked video modelling with tube masking + InfoNCE between augmented views and near frames "
    "(adjacent frames as soft half-negatives) + temporal consistency. language: paraphrase-contrastive "
    "training of the text encoder (English and Chinese paraphrases of one command are positives; negated and "
    "removed-constraint variants are hard negatives). action: chunk modelling with Huber or quantile BC, a "
    "spectral prior w_k ∝ (1+k)^-α, a dynamics hinge on acceleration and jerk with limits from the data, and "
    "jerk clipping. Merge the three checkpoints later with `vla align --init ... --init ... --init ...`."
)
EXAMPLES = examples(
    "vla pretrain-modality --modality vision --data data/aligned --out ckpt/vision",
    "vla pretrain-modality --modality language --data data/aligned --out ckpt/language --text-encoder minilm",
    "vla pretrain-modality --modality action --data data/aligned --out ckpt/action --bc quantile --steps 600",
    "vla pretrain-modality --modality vision --data data/aligned --out ckpt/vision --resume",
    "torchrun --nproc-per-node 2 -m vlacli pretrain-modality --modality vision --data data/aligned --out ckpt/vision --preset small",
)

Modality = Annotated[str, typer.Option("--modality", "-m", help="What to pretrain: vision, language or action.", show_default=False)]
Bc = Annotated[str, typer.Option("--bc", help="action: behaviour-cloning loss, huber or quantile (τ = 0.5).")]


def command(
    modality: Modality,
    data: DataDir,
    out: OutDir,
    preset: Preset = "tiny",
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = 0,
    init: Init = None,
    resume: Resume = False,
    device: Device = "auto",
    text_encoder: TextEncoder = None,
    bc: Bc = "huber",
    eval_every: EvalEvery = None,
    checkpoint_every: CheckpointEvery = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.pretrain_modality import PretrainConfig, pretrain_modality  # torch import only when the command runs
    from stages.pretraining.action import ActionPretrainConfig

    cfg = PretrainConfig(
        modality=modality, data=data, out=out, preset=preset, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        init=list(init or []), resume=resume, overwrite=overwrite, device=device, text_encoder=text_encoder,
        eval_every=eval_every, checkpoint_every=checkpoint_every, action=ActionPretrainConfig(bc=bc))
    summary = pretrain_modality(cfg, reporter=reporter)
    from stages.training import parallel

    if not parallel.is_main():  # under torchrun only rank 0 reports
        return
    console.summary(f"vla pretrain-modality --modality {modality}: {data} -> {out}", summary_rows(summary))
    if json_out:
        console.out.out(dumps(summary), end="", highlight=False)


def _numbers(values: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} -" for k, v in values.items()) or "-"


def summary_rows(s: dict) -> list[tuple[str, str]]:
    rows = [
        ("checkpoint", f"{s['out']} (step {s['steps']}" + (f", resumed from {s['resumed_from']})" if s.get("resumed_from") is not None else ")")),
        ("model", f"preset {s['preset']}, text encoder {s['text_encoder']}, {s['device']} {s['precision']}"
                  + (f", {s['world_size']} ranks" if s["world_size"] > 1 else "")),
        ("data", f"{s['data']}: {s['episodes']['train']} train / {s['episodes']['heldout']} held-out episodes"),
        ("training", f"batch {s['batch_size']}, lr {s['lr']:g}, seed {s['seed']}, {s['train_seconds']:.1f} s"),
        ("provides", ", ".join(s["provides"])),
        ("last losses", _numbers(s["losses"])),
        ("held-out", _numbers(s["eval"])),
    ]
    if s["init"]:
        rows.insert(2, ("init", ", ".join(f"{k} <- {v}" for k, v in s["init"].items())))
    if "action_limits" in s:
        limits = s["action_limits"]
        rows.append(("action limits", "acc_max " + ", ".join(f"{v:.3g}" for v in limits["acc_max"])
                     + " | jerk_max " + ", ".join(f"{v:.3g}" for v in limits["jerk_max"])))
    return rows


def register(app: typer.Typer) -> None:
    app.command("pretrain-modality", help=HELP, epilog=EXAMPLES)(console.guarded(command))
