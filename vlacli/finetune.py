"""`vla finetune --init ckpt/align --data D --out ckpt/sft`: stage D, instruction fine-tuning + closed-loop evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlacli import console
from vlacli.options import DataDir, Device, JsonOut, OutDir, Overwrite, Quiet, Resume, Seed, Workers, examples

HELP = (
    "Instruction fine-tuning of the action-chunk policy (ch07 §7.5 stage D): Gaussian BC NLL with constraint "
    "episodes upweighted, a KL regulariser toward the aligned --init policy, the alignment InfoNCE terms kept at a "
    "lower weight so the encoders stay aligned, small steps, input/target noise "
    "annealed to 0, EMA weights delivered, optional LoRA on the backbones. Then the policy drives Meta-World on "
    "unseen seeds and is scored against the scripted expert: success rate, constraint violations, ∫|jerk|."
)
EXAMPLES = examples(
    "vla finetune --init ckpt/align --data data/aligned --out ckpt/sft",
    "vla finetune --init ckpt/align --data data/aligned --out ckpt/sft-lora --lora --steps 500 --lr 5e-5",
    "vla finetune --init ckpt/align --data data/aligned --out ckpt/sft --resume",
    "vla finetune --init ckpt/align --data data/aligned --out /tmp/sft --eval-episodes 0 --json --quiet | jq .losses",
)


def command(
    init: Annotated[Path, typer.Option("--init", help="The aligned checkpoint to start from (written by `vla align`); also the KL reference.",
                                       show_default=False)],
    data: DataDir,
    out: OutDir,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA updates on the vision/language backbones (frozen otherwise) instead of all weights.")] = False,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", min=0, help="Closed-loop Meta-World episodes per task after training (0 = none).")] = 10,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (warmup, then cosine).")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Global batch size.")] = 32,
    kl_weight: Annotated[float, typer.Option("--kl-weight", help="β of KL(π_θ ‖ π_init), the behaviour regulariser.")] = 0.1,
    align_weight: Annotated[float, typer.Option("--align-weight", help="λ of the alignment-retention InfoNCE terms V↔L, L↔A (V↔A at λ/2), as ch07 stage D keeps them; 0 = off.")] = 0.5,
    constraint_weight: Annotated[float, typer.Option("--constraint-weight", help="BC weight multiplier of episodes whose instruction has a constraint phrase.")] = 3.0,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay of the delivered weights (0 = deliver the live weights).")] = 0.99,
    device: Device = "auto",
    workers: Workers = 0,
    seed: Seed = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.finetune import FinetuneConfig, FinetuneRun, finetune  # heavy imports only when the command runs

    cfg = FinetuneConfig(steps=steps, lr=lr, batch_size=batch_size, kl_weight=kl_weight, align_weight=align_weight,
                         constraint_weight=constraint_weight,
                         ema_decay=ema_decay, lora=lora)
    run = FinetuneRun(init=init, data=data, out=out, config=cfg, eval_episodes=eval_episodes, seed=seed, device=device,
                      workers=workers, resume=resume, overwrite=overwrite)
    summary = finetune(run, reporter)
    console.summary(f"vla finetune: {init} -> {out}", summary_rows(summary))
    if json_out:
        console.out.out(json.dumps(summary, indent=2, ensure_ascii=False), highlight=False)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def summary_rows(s: dict) -> list[tuple[str, str]]:
    losses = "  ".join(f"{k}={v:.4g}" for k, v in s["losses"].items()) or "-"
    rows = [
        ("steps", f"{s['steps']}" + (f" (resumed from {s['resumed_from']})" if s.get("resumed_from") else "") + f" in {s['train_seconds']:.0f} s"),
        ("losses", losses),
        ("held-out", "  ".join(f"{k}={v:.4g}" for k, v in s["eval"].items()) or "-"),
        ("constraint episodes", f"{s['constraint_episodes']} of {s['episodes']} (BC upweighted)"),
        ("weights", f"{s['delivered']}" + (" + LoRA merged" if s["lora"] else "")),
    ]
    cl = s.get("closed_loop")
    if cl:
        o = cl["overall"]
        e = o.get("expert", {})
        rows += [
            ("closed loop", f"{o['episodes']} episodes in {cl['seconds']:.0f} s"),
            ("success", f"{_pct(o['success_rate'])} (expert {_pct(e.get('success_rate'))})"),
            ("violations", f"{_pct(o['violation_rate'])} of constrained steps (expert {_pct(e.get('violation_rate'))})"),
            ("∫|jerk|", f"{o['jerk_integral']:.3g} m/s² ({o.get('jerk_ratio') or float('nan'):.2f}× the expert)"),
        ]
        for task, agg in cl["tasks"].items():
            rows.append((f"  {task}", f"success {_pct(agg['success_rate'])} (expert {_pct(agg.get('expert', {}).get('success_rate'))})"))
    rows.append(("out", s["out"]))
    return rows


def register(app: typer.Typer) -> None:
    app.command("finetune", help=HELP, epilog=EXAMPLES)(console.guarded(command))
