"""Closed-loop evaluation speed: the tiny policy driving Meta-World vs the scripted expert alone.

    python bench/closed_loop.py                 # untrained tiny policy, 10 episodes x the 8 demo tasks
    python bench/closed_loop.py ckpt/sft -n 5   # a finetuned checkpoint (64x64 frames, the rig's state)

Both runs use the same seeds and the same worker processes (one per core by default). The first is
what `vla finetune` runs after training (the policy, plus the expert on the same seeds for the
comparison); the baseline is the expert alone. Target (issue): 10 episodes per task on the tiny
policy under 2 minutes on 2 cores. An untrained policy never succeeds, so every episode runs its
whole horizon — the same cost as a trained one (episodes never stop early).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from stages.sim.closed_loop import ClosedLoopConfig, evaluate, plan_episodes  # noqa: E402
from stages.sim.envs import DEFAULT_TASKS  # noqa: E402
from stages.sim.policy_runner import ChunkExecution, CheckpointPolicySpec  # noqa: E402


def tiny_checkpoint(root: Path) -> Path:
    """An untrained `tiny` policy with plausible normalisation stats for the rig's state and action."""
    from stages.model import build_model
    from stages.training import checkpoint

    torch.manual_seed(0)
    model = build_model("tiny")
    model.set_norm_stats({
        "observation.state": {"mean": [0.0, 0.7, 0.15, 0, 0, 0, 0.1, 0.5], "std": [0.1, 0.1, 0.05, 0.1, 0.1, 0.1, 0.1, 0.3]},
        "action": {"mean": [0.0] * 4, "std": [0.5] * 4},
    })
    ck = checkpoint.Checkpoint(step=0, weights=model.state_dict(), model_config=model.config.to_dict(), preset="tiny")
    checkpoint.save_final(root / "tiny", ck)
    return root / "tiny"


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[object, float, float]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="?", help="policy checkpoint (default: an untrained tiny policy)")
    ap.add_argument("-n", "--episodes", type=int, default=10, help="episodes per task")
    ap.add_argument("-j", "--workers", type=int, default=0, help="worker processes (0 = one per core)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    args = ap.parse_args()
    tasks = tuple(t for t in args.tasks.split(",") if t)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else tiny_checkpoint(Path(tmp))
        cfg = ClosedLoopConfig(episodes_per_task=args.episodes, workers=args.workers)
        episodes = plan_episodes(cfg, tasks)
        steps = sum(e.steps for e in episodes)
        workers = cfg.workers or os.cpu_count()
        print(f"{len(episodes)} episodes ({len(tasks)} tasks x {args.episodes}), {steps} control steps each run, {workers} workers")

        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the machine may be shared)")
        doc, full, full_cpu = timed(lambda: evaluate(CheckpointPolicySpec(str(ckpt), ChunkExecution()), episodes, cfg))
        _, expert, expert_cpu = timed(lambda: evaluate(None, episodes, cfg))

    o = doc["overall"]
    print(f"policy + expert on the same seeds : {full:7.1f} s wall, {full_cpu:7.1f} s CPU  (target < 120 s: {'met' if full < 120 else 'NOT met'})")
    print(f"scripted expert alone (baseline)  : {expert:7.1f} s wall, {expert_cpu:7.1f} s CPU")
    print(f"ratio                             : {full / expert:7.2f}x wall, {full_cpu / expert_cpu:.2f}x CPU")
    print(f"CPU / {workers} workers                   : {full_cpu / workers:7.1f} s  (the wall time on {workers} otherwise idle cores)")
    print(f"policy success {o['success_rate']:.2f} (expert {o['expert']['success_rate']:.2f}), "
          f"violations {o['violation_rate']:.3f} (expert {o['expert']['violation_rate']:.3f}), jerk ratio {o['jerk_ratio']:.2f}")


if __name__ == "__main__":
    main()
