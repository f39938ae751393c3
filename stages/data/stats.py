"""Per-feature statistics as LeRobot stores them (meta/stats.json and per-episode stats).

Each feature gets min, max, mean, std (population, ddof=0), count and the quantiles q01, q10, q50,
q90, q99 — the set LeRobot's `compute_stats` writes. Vectors [T, D] give per-dimension arrays [D];
images give per-channel arrays of shape [3, 1, 1] on the 0..1 scale (LeRobot's convention).

Per-episode quantiles are exact (numpy's linear interpolation; images through an exact 256-bin
histogram). Dataset-level stats combine episodes the way LeRobot's `aggregate_stats` does, so a
dataset is never held in memory: min/max elementwise, mean and std by the parallel-variance
formula (exact), and quantiles as the count-weighted mean of the episodes' quantiles (LeRobot's
approximation — exact for one episode, a documented estimate otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.data.lerobot_format import QUANTILE_KEYS, QUANTILES

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Stats of one episode's feature: [T] or [T, D] -> arrays of shape [1] or [D]."""
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)  # [T, D]
    if len(x) == 0:
        raise ValueError("cannot compute statistics of an empty episode")
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    qs = np.quantile(x, QUANTILES, axis=0)  # [5, D], linear interpolation
    for key, q in zip(QUANTILE_KEYS, qs, strict=True):
        stats[key] = q
    return stats


def quantiles_from_histogram(counts: np.ndarray, qs: Sequence[float] = QUANTILES) -> np.ndarray:
    """Exact `np.quantile(x, qs)` (linear) of integer samples 0..K-1 given `counts` [C, K] -> [len(qs), C]."""
    counts = np.asarray(counts, dtype=np.int64)
    cum = np.cumsum(counts, axis=1)  # [C, K]
    n = cum[:, -1:]  # [C, 1]
    pos = (n - 1) * np.asarray(qs, dtype=np.float64)[None, :]  # [C, Q] fractional rank in the sorted samples
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    # the k-th smallest sample is the first value whose cumulative count exceeds k
    x_lo = np.stack([np.searchsorted(cum[c], lo[c], side="right") for c in range(len(cum))])
    x_hi = np.stack([np.searchsorted(cum[c], hi[c], side="right") for c in range(len(cum))])
    return (x_lo + (pos - lo) * (x_hi - x_lo)).T  # [Q, C]


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of uint8 frames [T, H, W, 3], scaled to 0..1, each of shape [3, 1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    channels = frames.reshape(-1, 3)
    counts = np.stack([np.bincount(channels[:, c], minlength=256) for c in range(3)])  # [3, 256]
    levels = np.arange(256, dtype=np.float64)
    n = counts.sum(axis=1).astype(np.float64)  # [3]
    mean = counts @ levels / n
    var = np.maximum(counts @ levels**2 / n - mean**2, 0.0)
    present = counts > 0
    stats = {
        "min": present.argmax(axis=1).astype(np.float64),
        "max": (255 - present[:, ::-1].argmax(axis=1)).astype(np.float64),
        "mean": mean,
        "std": np.sqrt(var),
    }
    for key, q in zip(QUANTILE_KEYS, quantiles_from_histogram(counts), strict=True):
        stats[key] = q
    stats = {k: (v / 255.0).reshape(3, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([len(frames)], dtype=np.int64)  # frames, as LeRobot counts images
    return stats


def aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Combine episodes' stats of one feature (LeRobot's `aggregate_feature_stats` formulas)."""
    if not per_episode:
        raise ValueError("no statistics to aggregate")
    counts = np.array([int(s["count"][0]) for s in per_episode], dtype=np.float64)  # [E]
    total = counts.sum()
    shape = (-1,) + (1,) * np.asarray(per_episode[0]["mean"]).ndim
    w = (counts / total).reshape(shape)  # [E, 1...] broadcast over the stat's shape
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w * means).sum(axis=0)
    variances = np.stack([np.asarray(s["std"]) ** 2 for s in per_episode])
    var = (w * (variances + (means - mean) ** 2)).sum(axis=0)  # parallel variance: within + between
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILE_KEYS:
        if all(key in s for s in per_episode):
            out[key] = (w * np.stack([s[key] for s in per_episode])).sum(axis=0)
    return out


class StatsAccumulator:
    """Per-feature episode stats kept as they stream in; memory O(episodes x features x D)."""

    def __init__(self) -> None:
        self.episodes: dict[str, list[Stats]] = {}

    def add(self, feature: str, stats: Stats) -> None:
        self.episodes.setdefault(feature, []).append(stats)

    def result(self) -> dict[str, Stats]:
        return {feature: aggregate_stats(items) for feature, items in self.episodes.items()}


def stats_to_json(stats: dict[str, Stats]) -> dict:
    """feature -> stat -> nested lists (floats; `count` as a list of one int)."""
    out = {}
    for feature, entry in stats.items():
        out[feature] = {k: (np.asarray(v).astype(np.int64).tolist() if k == "count" else np.asarray(v, dtype=np.float64).tolist()) for k, v in entry.items()}
    return out


def stats_from_json(obj: dict) -> dict[str, Stats]:
    return {feature: {k: np.asarray(v, dtype=np.int64 if k == "count" else np.float64) for k, v in entry.items()} for feature, entry in obj.items()}


def flatten_episode_stats(stats: dict[str, Stats]) -> dict[str, list]:
    """Per-episode stats as the `stats/<feature>/<stat>` columns of meta/episodes parquet."""
    flat = {}
    for feature, entry in stats_to_json(stats).items():
        for key, value in entry.items():
            flat[f"stats/{feature}/{key}"] = value
    return flat
