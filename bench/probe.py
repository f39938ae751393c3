"""Benchmark `vla probe` on the tiny demo checkpoint: the whole check-up against a 2-minute budget.

    python bench/probe.py                                   # fresh demo data: sim record -> clean -> align-time
    python bench/probe.py --data data/aligned --eval data/eval-aligned --ckpt ckpt/align
    python bench/probe.py --threads 2 --repeat 3

Without --ckpt, a tiny model is built for the demo data (its normalisation stats from the training
loader) and saved as a checkpoint: the probe's cost does not depend on what the weights learned.
The probe runs in a subprocess exactly as a user runs it (`vla probe ... --report`, imports and all),
under `--threads` torch threads (OMP_NUM_THREADS). On a machine shared with other jobs, OpenMP
threads spin waiting for each other and every forward pass slows down many times over: the load
average is printed; use `--threads 1` or OMP_WAIT_POLICY=PASSIVE there. The baseline, measured in this process, is one
forward pass of the model over every held-out frame (vision, text, fusion, policy head, action
encoder): the least any check-up of these episodes must compute. Printed: probe wall time, its ratio
to the 120 s budget, and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 120.0


def demo_data(base: Path, args) -> tuple[Path, Path]:
    """sim record -> clean -> align-time for the train and eval splits (not timed)."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    steps = [
        ["sim", "record", "--out", base / "raw", "--eval-out", base / "evalraw", "--tasks", args.tasks,
         "--episodes-per-task", str(args.episodes_per_task), "--eval-episodes-per-task", "3", "--seed", str(args.seed)],
        ["clean", base / "raw", "--out", base / "clean", "--eval", base / "evalraw"],
        ["clean", base / "evalraw", "--out", base / "evalclean"],
        ["align-time", base / "clean", "--out", base / "aligned"],
        ["align-time", base / "evalclean", "--out", base / "evalaligned"],
    ]
    t0 = time.perf_counter()
    for step in steps:
        subprocess.run([sys.executable, "-m", "vlacli", *map(str, step), "--quiet"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    print(f"demo data: {time.perf_counter() - t0:.1f} s (sim record, clean, align-time)")
    return base / "aligned", base / "evalaligned"


def tiny_checkpoint(data: Path, out: Path) -> Path:
    import torch

    from stages.data.lerobot import open_dataset
    from stages.data.loader import LoaderConfig, build_loader
    from stages.model import build_model
    from stages.training import checkpoint

    torch.manual_seed(0)
    ds = open_dataset(data)
    state_dim = int(ds.features["observation.state"]["shape"][0])
    action_dim = int(ds.features["action"]["shape"][0])
    size = int(ds.features[ds.image_keys[0]]["shape"][0])
    model = build_model("tiny", vision={"image_size": size}, action={"state_dim": state_dim, "action_dim": action_dim})
    loader = build_loader(ds, LoaderConfig(batch_size=8, history=model.config.vision.frames, chunk=model.config.action.horizon),
                          split="train", seed=0)
    model.set_norm_stats(loader.norm_stats())
    checkpoint.save_final(out, checkpoint.Checkpoint(step=0, weights=model.state_dict(), model_config=model.config.to_dict(),
                                                     preset="tiny"))
    return out


def baseline_s(ckpt: Path, data: Path, eval_dir: Path | None) -> tuple[float, int]:
    """One forward pass over every held-out frame the probe examines (best of 3)."""
    import numpy as np
    import torch

    from stages.probes.context import ProbeConfig, chunks, windows
    from stages.probes.outputs import ProbeContext

    ctx = ProbeContext(ckpt, data, eval_dir, ProbeConfig(device="cpu"))
    r = ctx.runner
    episodes = ctx.data.heldout + ctx.data.unknown
    frames = sum(ep.length for ep in episodes)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for ep in episodes:
            arr = ctx.data.arrays(ep)
            t = np.arange(ep.length)
            vis = r.vision(windows(arr.frames, t, r.history, r.stride))
            r.policy(vis, t, [ep.instruction] * ep.length, arr.state)
            act, valid = chunks(arr.action, arr.valid, t, r.horizon)
            r.action_z(act, arr.state, valid)
        best = min(best, time.perf_counter() - t0)
    del torch
    return best, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--eval", type=Path)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--tasks", default="reach,push,drawer-close,button-press")
    parser.add_argument("--episodes-per-task", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (the budget is for 2 cores)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vla-bench-probe-") as tmp:
        base = Path(tmp)
        data, eval_dir = (args.data, args.eval) if args.data else demo_data(base, args)
        ckpt = args.ckpt or tiny_checkpoint(data, base / "ckpt")
        base_s, frames = baseline_s(ckpt, data, eval_dir)
        runs = []
        for i in range(args.repeat):
            cmd = [sys.executable, "-m", "vlacli", "probe", str(ckpt), "--data", str(data), "--report", str(base / f"probe{i}.json"),
                   "--quiet", "--device", "cpu"] + (["--eval", str(eval_dir)] if eval_dir else [])
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            runs.append(time.perf_counter() - t0)
            if done.returncode not in (0, 1):
                sys.exit(f"vla probe failed ({done.returncode}):\n{done.stderr}")
        from stages.artifacts import read_json

        report = read_json(base / "probe0.json", schema="probe-report")
        probe_s = min(runs)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"threads {args.threads} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}); load average {load} "
              f"on {os.cpu_count()} cores; held-out + open-set frames {frames}; checks run {report['summary']['run']}")
        print(f"baseline (one forward pass over those frames): {base_s:.2f} s")
        print(f"vla probe (subprocess, best of {args.repeat}): {probe_s:.1f} s   in-process total {report['timing_s']['total']:.1f} s")
        inner = report["timing_s"]["total"]
        print(f"ratio to the {BUDGET_S:.0f} s budget: {probe_s / BUDGET_S:.3f}   ratio to baseline: {probe_s / base_s:.1f}x "
              f"(in-process, without imports: {inner / base_s:.1f}x)")
        for c in report["checks"]:
            print(f"  {c['id']:>2} {c['name']:<28} {c['seconds']:6.2f} s  {c['status']}")


if __name__ == "__main__":
    main()
