"""Benchmark `vla clean`: detection quality against injected truth, and throughput.

    python bench/clean.py                          # fresh demo data from `vla sim record`
    python bench/clean.py --episodes-per-task 10 --tasks reach,push --seed 3
    python bench/clean.py --source synthetic --episodes 200   # the synthetic rig (no simulator)

Records a fresh dataset (with an eval split and its truth), cleans it with `--eval`, prints the
per-kind precision/recall table (stages.cleaning.scoring), then the throughput of `clean` and its
ratio against only reading the same parquet files, both measured in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.artifacts import read_json  # noqa: E402
from stages.clean import clean  # noqa: E402
from stages.cleaning.scoring import score, worst  # noqa: E402
from stages.cleaning.synthetic import SyntheticConfig, make_dataset  # noqa: E402
from stages.data.fingerprints import EpisodeFingerprint, brute_force_pairs, near_duplicates  # noqa: E402
from stages.data.raw import list_episodes, read_episode  # noqa: E402


def record(args, base: Path) -> tuple[Path, Path]:
    raw, ev = base / "raw", base / "eval"
    t0 = time.perf_counter()
    if args.source == "synthetic":
        make_dataset(raw, SyntheticConfig(episodes=args.episodes, eval_episodes=max(4, args.episodes // 10),
                                          copies=max(1, args.episodes // 20), seed=args.seed), eval_root=ev)
    else:
        from stages.sim.record import RecordConfig
        from stages.sim.record import record as sim_record

        overrides = {"seed": args.seed}
        if args.tasks:
            overrides["tasks"] = tuple(args.tasks.split(","))
        if args.episodes_per_task:
            overrides["episodes_per_task"] = args.episodes_per_task
        if args.workers is not None:
            overrides["workers"] = args.workers
        sim_record(RecordConfig(**overrides), raw, ev)
    print(f"recorded {len(list_episodes(raw))} train episodes ({args.source}) in {time.perf_counter() - t0:.1f} s")
    return raw, ev


def read_parquets(root: Path) -> int:
    """Baseline 1: read every parquet file of the dataset into Arrow tables (what any reader must do)."""
    rows = 0
    for episode in list_episodes(root):
        for path in sorted(episode.glob("*.parquet")):
            rows += pq.read_table(path).num_rows
    return rows


def read_raw(root: Path) -> int:
    """Baseline 2: `stages.data.raw.read_episode` (parquet -> validated DataFrames), as `clean` reads."""
    return sum(len(read_episode(p, frames="none").streams) for p in list_episodes(root))


def search_scaling(sizes: list[int], brute_max: int, seed: int) -> None:
    """Near-duplicate search on random sketches with planted copies: LSH vs brute force."""
    rng = np.random.default_rng(seed)
    proto = EpisodeFingerprint("x", "d", np.zeros((16, 8, 8), np.float32), np.zeros(16, np.uint64),
                               np.zeros((32, 12), np.float32), tuple(f"c{k}" for k in range(12)), "",
                               np.zeros(64, np.uint64), np.zeros(128))
    print("\nnear-duplicate search on random [32 x 12] sketches, 1% planted copies:")
    for n in sizes:
        traj = rng.normal(size=(n, 32, 12)).astype(np.float32)
        fps = [dataclasses.replace(proto, episode_id=f"e{i}", digest=f"e{i}", trajectory=traj[i]) for i in range(n)]
        copies = n // 100
        fps += [dataclasses.replace(proto, episode_id=f"c{i}", digest=f"c{i}",
                                    trajectory=traj[i] + rng.normal(0, 0.02, (32, 12)).astype(np.float32)) for i in range(copies)]
        t0 = time.perf_counter()
        found = near_duplicates(fps)
        t_lsh = time.perf_counter() - t0
        recall = len({(m.a, m.b) for m in found} & {(f"e{i}", f"c{i}") for i in range(copies)}) / copies
        line = f"  N={len(fps):6d}  LSH {t_lsh:7.3f} s  recall {recall:.3f}  pairs {len(found)}"
        if len(fps) <= brute_max:
            t0 = time.perf_counter()
            brute = brute_force_pairs(fps)
            t_brute = time.perf_counter() - t0
            line += f"  | brute force {t_brute:7.3f} s (x{t_brute / t_lsh:.1f}), same pairs: {sorted((m.a, m.b) for m in brute) == sorted((m.a, m.b) for m in found)}"
        print(line)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["sim", "synthetic"], default="sim")
    p.add_argument("--tasks", default=None, help="sim: comma-separated tasks (default: the recorder's)")
    p.add_argument("--episodes-per-task", type=int, default=None, help="sim: episodes per task (default: the recorder's)")
    p.add_argument("--episodes", type=int, default=200, help="synthetic: train episodes")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    p.add_argument("--keep", type=Path, default=None, help="record into this folder and keep it")
    p.add_argument("--search-sizes", default="2000,8000,32000", help="N for the near-duplicate search scaling ('' = skip)")
    p.add_argument("--only-search", action="store_true", help="run only the search scaling")
    args = p.parse_args()
    sizes = [int(n) for n in args.search_sizes.split(",") if n]
    if args.only_search:
        search_scaling(sizes, brute_max=2500, seed=args.seed)
        return

    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        raw, ev = record(args, base)
        truth = read_json(raw.parent / f"{raw.name}.truth.json", schema="truth")

        report = clean(raw, base / "clean", eval_dir=ev, overwrite=True)
        scores = score(report, truth)
        print(f"\n{'kind':28s} {'truth':>6s} {'found':>6s} {'precision':>10s} {'recall':>8s}")
        for s in scores.values():
            print(f"{s.kind:28s} {s.truth:6d} {s.findings:6d} {s.precision:10.3f} {s.recall:8.3f}")
        low_p, low_r = worst(scores)
        print(f"{'worst':28s} {'':6s} {'':6s} {low_p:10.3f} {low_r:8.3f}")

        episodes = report["summary"]["episodes"]
        hours = sum(max(e["rows_in"].get("action", 0), 0) for e in report["episodes"].values()) / float(truth["robot"]["control_hz"]) / 3600
        t_read, rows = best_of(lambda: read_parquets(raw), args.repeat)
        t_raw, _ = best_of(lambda: read_raw(raw), args.repeat)
        t_clean, _ = best_of(lambda: clean(raw, base / "clean", eval_dir=ev, overwrite=True), args.repeat)
        print(f"\nthroughput on {episodes} episodes ({rows} parquet rows, {hours * 3600:.0f} s of action signal), best of {args.repeat}:")
        print(f"  read parquet (pyarrow)       {t_read:8.3f} s   {episodes / t_read:8.1f} episodes/s")
        print(f"  read_episode (validated)     {t_raw:8.3f} s   {episodes / t_raw:8.1f} episodes/s")
        print(f"  vla clean (+ eval scan)      {t_clean:8.3f} s   {episodes / t_clean:8.1f} episodes/s   {hours / t_clean * 3600:8.1f} s of signal per s")
        print(f"  ratio clean / read parquet   {t_clean / t_read:8.2f} x")
        print(f"  ratio clean / read_episode   {t_clean / t_raw:8.2f} x")
    if sizes:
        search_scaling(sizes, brute_max=2500, seed=args.seed)


if __name__ == "__main__":
    main()
