"""Benchmark `vla align-time`: clock-offset accuracy against injected truth, and throughput.

    python bench/align_time.py                          # 200 fresh demo episodes from `vla sim record`
    python bench/align_time.py --episodes-per-task 4 --workers 2
    python bench/align_time.py --data data/raw          # an existing recording (reads data/raw.truth.json)

Prints, per stream, the median / P95 / max of |estimated - true offset| against the issue's targets
(camera and imu: median <= 5 ms, P95 <= 15 ms; action: median <= 12.5 ms, one control period),
then the offset estimation's throughput in episode-hours of signal per second, by FFT and by the
direct O(N·L) correlation on the same episodes in this process (and the ratio), and the whole
stage's (reading, estimation, resampling, PNG encoding, writing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.align_time import AlignTimeConfig, align_time, estimate_offsets  # noqa: E402
from stages.progress import NullReporter  # noqa: E402
from stages.timealign.inputs import collect  # noqa: E402

TARGETS = {"camera": (5.0, 15.0), "imu": (5.0, 15.0), "action": (12.5, None)}  # median, P95 (ms)


def record(args, base: Path) -> Path:
    from stages.sim import faults as F
    from stages.sim.record import RecordConfig
    from stages.sim.record import record as sim_record

    raw = base / "raw"
    cfg = RecordConfig(episodes_per_task=args.episodes_per_task, seed=args.seed, workers=args.workers,
                       faults=F.FaultConfig({k: 0.0 for k in F.FAULT_KINDS}))  # clock faults only: offsets, drift, jitter
    t0 = time.perf_counter()
    sim_record(cfg, raw)
    print(f"recorded {args.episodes_per_task * len(cfg.tasks)} episodes in {time.perf_counter() - t0:.0f} s")
    return raw


def errors(plan, truth: dict, reference: str) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for res in plan.results:
        true = truth["episodes"][res.episode_id]["offset_ms"]
        for stream, r in res.streams.items():
            if stream != reference and r.offset_ms is not None and res.status != "dropped":
                out.setdefault(stream, []).append(r.offset_ms - (true[stream] - true[reference]))
    return {k: np.abs(np.array(v)) for k, v in out.items()}


def signal_hours(episodes, reference: str) -> float:
    return sum(float(ep.series[reference].t[-1] - ep.series[reference].t[0]) for ep in episodes) / 3600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="existing raw recording with <data>.truth.json beside it")
    ap.add_argument("--episodes-per-task", type=int, default=25, help="8 tasks x 25 = 200 episodes")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--direct-sessions", type=int, default=3, help="sessions timed with the O(N·L) baseline (0: skip)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw = args.data or record(args, Path(tmp))
        truth = json.loads(raw.with_name(raw.name + ".truth.json").read_text())
        lag = float(truth["robot"]["action_lag_ms"])  # what `vla sim record` prints in its summary
        cfg = AlignTimeConfig(action_lag_ms=lag)

        t0 = time.perf_counter()
        episodes = collect(raw, cfg.reference)
        t_read = time.perf_counter() - t0
        hours = signal_hours(episodes, cfg.reference)

        t0 = time.perf_counter()
        plan = estimate_offsets(episodes, cfg, NullReporter())
        t_fft = time.perf_counter() - t0

        err = errors(plan, truth, cfg.reference)
        sessions = len({ep.session for ep in episodes})
        print(f"\n{len(episodes)} episodes, {sessions} sessions, {hours * 3600:.0f} s of signal; action lag {lag:.2f} ms (from the recorder)")
        print(f"{'stream':8s} {'n':>4s} {'median':>8s} {'P95':>8s} {'max':>8s}   target (median / P95)   pass")
        for stream in sorted(err):
            e = err[stream]
            med, p95 = float(np.median(e)), float(np.percentile(e, 95))
            goal = TARGETS.get(stream, (None, None))
            ok = (goal[0] is None or med <= goal[0]) and (goal[1] is None or p95 <= goal[1])
            goal_s = f"{goal[0]:g} / {goal[1]:g} ms" if goal[1] is not None else f"{goal[0]:g} ms / -" if goal[0] else "-"
            print(f"{stream:8s} {len(e):4d} {med:8.2f} {p95:8.2f} {e.max():8.2f}   {goal_s:22s}  {'yes' if ok else 'NO'}")
        s = plan.results
        print(f"kept {sum(r.status == 'kept' for r in s)}, downweighted {sum(r.status == 'downweighted' for r in s)}, "
              f"dropped {sum(r.status == 'dropped' for r in s)}")

        print(f"\n{'phase':34s} {'seconds':>8s} {'ep-hours/s':>11s}")
        print(f"{'read + camera motion energy':34s} {t_read:8.2f} {hours / t_read:11.5f}")
        print(f"{'offset estimation (FFT)':34s} {t_fft:8.2f} {hours / t_fft:11.5f}")
        if args.direct_sessions:
            # the baseline on the same episodes: the first few sessions, timed both ways in this process
            keep = sorted({ep.session for ep in episodes})[: args.direct_sessions]
            subset = [ep for ep in episodes if ep.session in keep]
            sub_hours = signal_hours(subset, cfg.reference)
            t0 = time.perf_counter()
            plan_f = estimate_offsets(subset, cfg, NullReporter())
            t_sub = time.perf_counter() - t0
            direct = dataclasses.replace(cfg, estimate=dataclasses.replace(cfg.estimate, method="direct"))
            t0 = time.perf_counter()
            plan_d = estimate_offsets(subset, direct, NullReporter())
            t_direct = time.perf_counter() - t0
            diff = max((abs(a.streams[k].offset_ms - b.streams[k].offset_ms) for a, b in zip(plan_f.results, plan_d.results)
                        for k in a.streams if a.streams[k].offset_ms is not None), default=0.0)
            label = f"  {len(subset)} episodes, FFT"
            print(f"{label:34s} {t_sub:8.2f} {sub_hours / t_sub:11.5f}")
            label = f"  {len(subset)} episodes, direct O(N·L)"
            print(f"{label:34s} {t_direct:8.2f} {sub_hours / t_direct:11.5f}")
            print(f"FFT / direct speed-up: {t_direct / t_sub:.2f}x on the same {len(subset)} episodes (same offsets within {diff:.1e} ms)")
        out = Path(tmp) / "aligned"
        t0 = time.perf_counter()
        align_time(raw, out, cfg)
        t_all = time.perf_counter() - t0
        print(f"{'whole stage (incl. PNG + parquet)':34s} {t_all:8.2f} {hours / t_all:11.5f}")


if __name__ == "__main__":
    main()
