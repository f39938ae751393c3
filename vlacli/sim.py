"""`vla sim record`: demo episodes from Meta-World scripted experts, with a sensor rig and faults."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from stages.errors import BadInput
from vlacli import console
from vlacli.options import JsonOut, OutDir, Overwrite, Quiet, Seed, Workers, examples

sim_app = typer.Typer(help="Demo data from Meta-World scripted experts.", no_args_is_help=True)

_TASK_HELP = "Comma-separated Meta-World tasks (short names, e.g. reach,push,pick-place)."


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parse_rates(items: list[str]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            rates[kind.strip()] = float(value)
        except ValueError:
            raise BadInput(f"`--fault-rate {item}` is not KIND=RATE", hint="e.g. --fault-rate spike=0.2") from None
    return rates


@sim_app.command(
    "record",
    epilog=examples(
        "vla sim record --out data/raw --eval-out data/eval",
        "vla sim record --out data/tiny --tasks reach,push --episodes-per-task 2 --steps 40 --workers 2",
        "vla sim record --out data/clean-only --no-faults --seed 3",
        "vla sim record --out data/raw --fault-rate spike=0.3 --fault-rate eval_leak=0 --overwrite",
    ),
)
@console.guarded
def record(
    out: OutDir,
    eval_out: Annotated[Optional[Path], typer.Option("--eval-out", help="Also write a held-out eval split here (with the held-out tasks, open set).")] = None,
    tasks: Annotated[str, typer.Option("--tasks", help=_TASK_HELP)] = "reach,push,pick-place,drawer-close,door-open,button-press,window-open,drawer-open",
    heldout_tasks: Annotated[str, typer.Option("--heldout-tasks", help="Tasks recorded only in the eval split (open set).")] = "button-press-topdown,window-close",
    episodes_per_task: Annotated[int, typer.Option("--episodes-per-task", "-n", min=1, help="Train episodes per task.")] = 25,
    eval_episodes_per_task: Annotated[int, typer.Option("--eval-episodes-per-task", min=1, help="Eval episodes per task (with --eval-out).")] = 4,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Control steps per episode at 80 Hz (default: each task's own horizon).")] = None,
    size: Annotated[int, typer.Option("--size", help="Rendered frame size in pixels (square).")] = 64,
    camera: Annotated[str, typer.Option("--camera", help="Meta-World camera name.")] = "corner",
    constraint_share: Annotated[float, typer.Option("--constraint-share", help="Share of instructions with a constraint clause (speed limit, workspace boundary).")] = 0.25,
    zh_share: Annotated[float, typer.Option("--zh-share", help="Share of Chinese instructions.")] = 0.5,
    episodes_per_session: Annotated[int, typer.Option("--episodes-per-session", help="Episodes recorded per session (one set of clock offsets).")] = 8,
    max_offset_ms: Annotated[float, typer.Option("--max-offset-ms", help="Session clock offsets are drawn uniformly in ±this (ms).")] = 300.0,
    fault_rate: Annotated[Optional[list[str]], typer.Option("--fault-rate", help="KIND=RATE, repeatable: per-episode probability (row/text faults) or share copied (duplicate_episode, near_duplicate_episode, eval_leak).")] = None,
    no_faults: Annotated[bool, typer.Option("--no-faults", help="Set every fault rate to 0 (after which --fault-rate applies).")] = False,
    seed: Seed = 0,
    workers: Workers = 0,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Record demo episodes (raw layout) with a sensor rig and fault injection; truth goes to OUT.truth.json."""
    reporter = console.setup(quiet)
    from stages.sim import faults as F
    from stages.sim.record import RecordConfig, record as record_dataset, with_rates

    base = RecordConfig()
    rates = {k: 0.0 for k in F.FAULT_KINDS} if no_faults else {}
    rates.update(_parse_rates(fault_rate or []))
    config = replace(
        base,
        tasks=_csv(tasks), heldout_tasks=_csv(heldout_tasks), episodes_per_task=episodes_per_task,
        eval_episodes_per_task=eval_episodes_per_task, steps=steps, size=size, camera=camera, seed=seed, workers=workers,
        constraint_share=constraint_share, zh_share=zh_share,
        rig=replace(base.rig, episodes_per_session=episodes_per_session, max_offset_ms=max_offset_ms),
    )
    config = with_rates(config, rates)
    summary = record_dataset(config, out, eval_out, reporter, overwrite=overwrite)
    if json_out:
        console.out.print_json(json.dumps(summary, ensure_ascii=False))
    faults = ", ".join(f"{k} {v}" for k, v in summary["faults"].items()) or "none"
    rows = [
        ("episodes", f"{summary['episodes']} in {summary['out']} ({summary['original_episodes']} recorded + copies), {summary['sessions']} sessions"),
        ("eval", f"{summary['eval_episodes']} in {summary['eval_out']}" if summary["eval_out"] else "-"),
        ("success", ", ".join(f"{k} {v:.0%}" for k, v in summary["success_rate"].items()) + "  (unconstrained episodes)"),
        ("eval success", ", ".join(f"{k} {v:.0%}" for k, v in summary["eval_success_rate"].items()) or "-"),
        ("constraints", f"{summary['constraint_episodes']} episodes" + (
            f", {summary['constrained_success_rate']:.0%} succeed within the horizon" if summary["constraint_episodes"] else "")),
        ("languages", ", ".join(f"{k} {v}" for k, v in summary["languages"].items())),
        ("faults", faults),
        ("action lag", f"{summary['action_lag_ms']:.1f} ms (action -> EE velocity cross-correlation peak; use --action-lag-ms with align-time)"),
        ("truth", summary["truth"] + (f", {summary['eval_truth']}" if summary["eval_truth"] else "")),
    ]
    console.summary("vla sim record", rows)


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
