"""Benchmark `vla sim record`: episodes per second, with ratios measured in the same run.

    python bench/sim_record.py                      # 200 episodes x 100 steps at 64x64, 2 workers
    python bench/sim_record.py --episodes-per-task 5 --workers 2

Prints (1) the full recording's episodes/s with N workers, (2) a 1-worker baseline on a subset of the
same plan (parallel speed-up), (3) ms per rendered frame with the fast settings against MuJoCo's
defaults (shadows, reflections, 4x MSAA) on the same scene.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")


def _record(cfg, out: Path) -> tuple[float, dict]:
    from stages.sim.record import record

    start = time.perf_counter()
    summary = record(cfg, out)
    return time.perf_counter() - start, summary


def _render_ms(frames: int = 40) -> tuple[float, float]:
    import mujoco

    from stages.sim.envs import make_env

    env = make_env("pick-place", seed=0)
    try:
        default = mujoco.Renderer(env.model, 64, 64)  # the model is untouched until env.render()
        start = time.perf_counter()
        for _ in range(frames):
            default.update_scene(env.data, camera="corner")
            default.render()
        slow = (time.perf_counter() - start) / frames
        default.close()
        env.render()  # builds the fast renderer
        start = time.perf_counter()
        for _ in range(frames):
            env.render()
        fast = (time.perf_counter() - start) / frames
    finally:
        env.close()
    return 1000 * fast, 1000 * slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes-per-task", type=int, default=25)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-episodes-per-task", type=int, default=2)
    args = parser.parse_args()

    from stages.sim.record import RecordConfig

    cfg = RecordConfig(episodes_per_task=args.episodes_per_task, steps=args.steps, size=args.size, workers=args.workers)
    n = args.episodes_per_task * len(cfg.tasks)
    tmp = Path(tempfile.mkdtemp(prefix="vla-bench-"))
    try:
        fast_ms, slow_ms = _render_ms()
        print(f"render 64x64: {fast_ms:.2f} ms/frame fast vs {slow_ms:.2f} ms/frame default settings  (x{slow_ms / fast_ms:.1f})")

        base_cfg = replace(cfg, episodes_per_task=args.baseline_episodes_per_task, workers=1)
        base_n = args.baseline_episodes_per_task * len(cfg.tasks)
        base_s, _ = _record(base_cfg, tmp / "baseline")
        base_rate = base_n / base_s
        print(f"baseline: {base_n} episodes x {args.steps} steps, 1 worker: {base_s:.1f} s = {base_rate:.2f} episodes/s")

        full_s, summary = _record(cfg, tmp / "raw")
        rate = n / full_s
        print(f"record:   {n} episodes x {args.steps} steps at {args.size}x{args.size}, {args.workers} workers: "
              f"{full_s:.1f} s = {rate:.2f} episodes/s  (x{rate / base_rate:.2f} vs 1 worker; "
              f"{summary['episodes']} written incl. copies, action lag {summary['action_lag_ms']:.1f} ms)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
