"""Loader throughput: samples/s from the uint8 memmap cache vs decoding the dataset's PNGs.

    python bench/loader.py [--episodes 40] [--length 100] [--size 64] [--batch 64] [--history 2] [--batches 30]

Writes a synthetic aligned dataset to a temporary folder, then, in this one process, times
  - `memmap`: the real loader (`build_loader(...).batch(k)`), frames gathered from the cache;
  - `png`:    the same batches, every frame (window and near window) decoded from its PNG bytes
              (bytes already in memory, so only the decode is timed), with our decoder;
  - `pillow`: the same with Pillow's decoder, when Pillow is installed.
and prints samples/s and the ratio memmap / baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.artifacts import atomic_dir  # noqa: E402
from stages.data.lerobot import AlignedEpisode, open_dataset, write_dataset  # noqa: E402
from stages.data.loader import LoaderConfig, build_loader  # noqa: E402
from stages.data.png import decode_png  # noqa: E402

CAMERA = "observation.images.camera"


def episodes(count: int, length: int, size: int):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    for e in range(count):
        base = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 30 * e % 256)], -1).astype(np.int16)
        frames = np.empty((length, size, size, 3), np.uint8)
        for t in range(length):  # a lit blob drifting over a gradient, plus sensor noise: PNGs of realistic size
            blob = 120 * np.exp(-((x - (t + e) % size) ** 2 + (y - size / 2) ** 2) / (size / 4) ** 2)
            frames[t] = np.clip(base + blob[..., None] + rng.normal(0, 2, (size, size, 1)), 0, 255).astype(np.uint8)
        yield AlignedEpisode(
            source_id=f"ep{e:04d}", instruction="reach the target",
            images={CAMERA: frames},
            vectors={"observation.state": rng.normal(size=(length, 8)).astype(np.float32), "action": rng.uniform(-1, 1, (length, 4)).astype(np.float32)},
            names={}, weight=np.ones(length, np.float32), valid=np.ones(length, bool), meta={"task_name": "reach"})


def pillow_decoder():
    try:
        import io

        from PIL import Image
    except ImportError:
        return None
    return lambda blob: np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def time_batches(fn, batches: int) -> float:
    fn(0)  # warm-up: page cache, lazy opens
    start = time.perf_counter()
    for k in range(1, batches + 1):
        fn(k)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "aligned"
        t0 = time.perf_counter()
        with atomic_dir(root) as out:
            write_dataset(out, episodes(args.episodes, args.length, args.size), fps=20, robot_type="bench", vla_meta={})
        t_write = time.perf_counter() - t0
        ds = open_dataset(root)
        t0 = time.perf_counter()
        ds.images(CAMERA)
        t_cache = time.perf_counter() - t0
        loader = build_loader(ds, LoaderConfig(batch_size=args.batch, history=args.history, chunk=16, heldout_fraction=0), seed=0)
        blobs = [b for _, group in ds.image_batches(CAMERA) for b in group]  # PNG bytes in memory: time the decode only

        def decoded(decode):
            def run(k: int) -> np.ndarray:
                # the loader's own sampling for batch k, then every frame decoded from its PNG
                rows, _ = loader.source.rows_and_shifts(loader.source.positions(k, args.batch))
                first = loader.source.ep_start[rows]
                window = np.maximum(rows[:, None] + np.arange(-(args.history - 1), 1), first[:, None])
                idx = np.concatenate([window, window]).reshape(-1)  # frames and near frames: 2·B·T decodes
                return np.stack([decode(blobs[i]) for i in idx])
            return run

        runs = {"memmap": time_batches(loader.batch, args.batches), "png": time_batches(decoded(decode_png), args.batches)}
        if (pil := pillow_decoder()) is not None:
            runs["pillow"] = time_batches(decoded(pil), args.batches)
    samples = args.batch * args.batches
    print(f"dataset: {args.episodes} episodes x {args.length} frames, {args.size}x{args.size} px; batch {args.batch}, history {args.history}")
    print(f"write {t_write:.2f} s ({args.episodes * args.length / t_write:.0f} frames/s), cache build {t_cache:.2f} s "
          f"({args.episodes * args.length / t_cache:.0f} frames/s)")
    print(f"{'path':<8} {'samples/s':>10} {'ratio memmap/x':>15}")
    for name, seconds in runs.items():
        print(f"{name:<8} {samples / seconds:>10.0f} {runs[name] / runs['memmap']:>15.1f}")


if __name__ == "__main__":
    main()
