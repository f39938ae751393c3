"""Training batches from a LeRobot dataset (CONTRACTS §C).

    loader = build_loader(open_dataset("data/aligned"), LoaderConfig(batch_size=64), split="train", seed=0,
                          rank=rank, world_size=world)
    for batch in loader:            # infinite for "train" (reshuffled every epoch), one pass for "heldout"
        batch["frames"]             # uint8 [B, T, 3, H, W]
    model_config["norm_stats"] = loader.norm_stats()

Determinism. Every batch is a pure function of (seed, split, batch number, rank, world size):
the sample stream is the concatenation of per-epoch permutations drawn from
`default_rng([seed, epoch])`, global batch k is stream[k*B : (k+1)*B], and rank r takes the r-th
contiguous B/world_size slice of it — so the ranks' batches put together are the 1-rank batch.
The near-frame shifts are drawn with the permutation, so they do not depend on who computes the
batch either: DataLoader workers (num_workers > 0) return exactly what num_workers=0 returns.

Hot path: frames come from the uint8 memmap cache with one fancy-indexing gather per batch;
normalised vectors are precomputed per row; nothing loops over frames in Python.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stages.data import lerobot_format as fmt
from stages.data.lerobot_read import LeRobotDataset, open_dataset
from stages.errors import BadInput

Split = Literal["train", "heldout"]
MAX_CHUNK = 16  # ARCHITECTURE §6: action chunks of H ≤ 16 steps


@dataclass
class LoaderConfig:
    batch_size: int = 32  # global batch: all ranks together; each rank gets batch_size // world_size
    history: int = 2  # T frames ending at the sample's frame (earlier ones clamp to the episode start)
    history_stride: int = 1  # frames between two history frames
    chunk: int = 16  # H action steps starting at the sample's frame
    near_max: int = 3  # frames_near is the window shifted by Δ, 1 ≤ |Δ| ≤ near_max (ch07 §7.2 near frames)
    image_key: str | None = None  # default: the dataset's first image feature
    state_key: str = "observation.state"
    action_key: str = "action"
    heldout_fraction: float = 0.1  # episodes held out when the dataset's vla meta names no split
    skip_masked: bool = True  # frames with vla.weight == 0 are never the sampled frame
    std_floor: float = 1e-6  # normalisation divides by max(std, std_floor): constant dims map to 0
    num_workers: int = 0
    pin_memory: bool = False


# ----------------------------------------------------------------------------- splits and stats


def split_episodes(dataset: LeRobotDataset, heldout_fraction: float) -> dict[str, np.ndarray]:
    """Episode indices per split: vla meta `split` when any episode is not "train", else a fixed
    fraction chosen by a hash of the episode's source id (stable when episodes are added)."""
    n = dataset.num_episodes
    splits = [dataset.episode_meta(i).get("split") for i in range(n)]
    if any(s not in (None, "train") for s in splits):
        held = np.array([s not in (None, "train") for s in splits])
    else:
        keys = [str(dataset.episode_meta(i).get("source_id", i)) for i in range(n)]
        order = sorted(range(n), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest())
        count = min(n - 1, max(1, round(heldout_fraction * n))) if heldout_fraction > 0 and n > 1 else 0
        held = np.zeros(n, dtype=bool)
        held[order[:count]] = True
    return {"train": np.flatnonzero(~held), "heldout": np.flatnonzero(held)}


def feature_norm(dataset: LeRobotDataset, key: str, std_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std used) of a vector feature from the dataset's stats; a missing stat raises."""
    where = dataset.stats_path
    entry = dataset.stats.get(key)
    if entry is None:
        raise BadInput(f"`{where}`: feature `{key}` has no statistics", caused_by="normalisation needs its mean and std",
                       hint="recompute the dataset's stats (vla align-time writes them)")
    for stat in ("mean", "std"):
        if stat not in entry:
            raise BadInput(f"`{where}`: field `{key}.{stat}` is missing", caused_by="normalisation needs it")
    width = int(dataset.features[key]["shape"][0])
    mean, std = (np.asarray(entry[s], dtype=np.float64).reshape(-1) for s in ("mean", "std"))
    if mean.shape != (width,) or std.shape != (width,):
        raise BadInput(f"`{where}`: field `{key}.mean`/`std` has {mean.size}/{std.size} values", caused_by=f"`{key}` has {width} dims")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise BadInput(f"`{where}`: field `{key}` has non-finite mean/std")
    return mean, np.maximum(std, std_floor)


def _require(dataset: LeRobotDataset, key: str, kind: str) -> None:
    ft = dataset.features.get(key)
    ok = ft is not None and (ft["dtype"] in fmt.IMAGE_DTYPES if kind == "image" else ft["dtype"] not in fmt.IMAGE_DTYPES + ("string",))
    if not ok:
        raise BadInput(f"`{dataset.root / fmt.INFO_PATH}`: feature `{key}` is missing", caused_by=f"the loader needs it as {kind}",
                       hint="pass LoaderConfig(image_key=..., state_key=..., action_key=...) naming the dataset's features")


# ----------------------------------------------------------------------------- batch source


class _Batches(Dataset):
    """Batch k of a split as a pure function; picklable for DataLoader workers (memmap reopened)."""

    def __init__(self, loader: Loader, samples: np.ndarray, shuffle: bool):
        ds, cfg = loader.dataset, loader.cfg
        self.cfg, self.seed, self.shuffle = cfg, loader.seed, shuffle
        self.rank, self.world = loader.rank, loader.world_size
        self.samples = samples  # [S] row numbers a batch may centre on
        self.cache_file = ds.images(loader.image_key).filename  # memmap path: workers reopen it
        starts = ds.episodes["from_index"].to_numpy()
        lengths = ds.episodes["length"].to_numpy()
        self.ep_start = np.repeat(starts, lengths)  # [N]
        self.ep_end = np.repeat(starts + lengths, lengths)  # [N] exclusive
        self.state = loader._normalised(loader.cfg.state_key)  # [N, Ds] float32
        self.action = loader._normalised(loader.cfg.action_key)  # [N, Da] float32
        self.weight = ds.column(fmt.WEIGHT).astype(np.float32) if fmt.WEIGHT in ds.features else np.ones(ds.num_frames, np.float32)
        self.valid = ds.column(fmt.VALID).astype(bool) if fmt.VALID in ds.features else np.ones(ds.num_frames, bool)
        self.episode_index = ds.column("episode_index").astype(np.int64)
        self.frame_index = ds.column("frame_index").astype(np.int64)
        self.instructions = np.array(ds.tasks, dtype=object)[ds.column("task_index").astype(np.int64)]  # [N] str
        names = [ds.task_name(i) for i in range(ds.num_episodes)]
        ids = {name: i for i, name in enumerate(loader.task_names)}
        self.task_id = np.repeat(np.array([ids[n] for n in names], dtype=np.int64), lengths)  # [N]
        self._frames: np.ndarray | None = None
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_frames": None, "_epochs": {}}

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = np.load(self.cache_file, mmap_mode="r", allow_pickle=False)
        return self._frames

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample rows, near shifts) of one epoch, the same in every process for a seed."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch, 1 if self.shuffle else 2])
            rows = rng.permutation(self.samples) if self.shuffle else self.samples
            shift = rng.integers(1, self.cfg.near_max + 1, size=len(rows)) * rng.choice([-1, 1], size=len(rows))
            if len(self._epochs) > 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (rows, shift)
        return self._epochs[epoch]

    def positions(self, k: int, batch_size: int) -> np.ndarray:
        """This rank's positions in the sample stream for global batch k."""
        lo, hi = k * batch_size, (k + 1) * batch_size
        if not self.shuffle:
            hi = min(hi, len(self.samples))
            return np.array_split(np.arange(lo, hi), self.world)[self.rank]
        per_rank = batch_size // self.world
        return np.arange(lo + self.rank * per_rank, lo + (self.rank + 1) * per_rank)

    def rows_and_shifts(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.samples)
        epochs = positions // n
        rows = np.empty(len(positions), dtype=np.int64)
        shifts = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):  # a batch spans at most a few epochs
            mask = epochs == epoch
            ep_rows, ep_shift = self._epoch(int(epoch))
            rows[mask], shifts[mask] = ep_rows[positions[mask] % n], ep_shift[positions[mask] % n]
        return rows, shifts

    def __getitem__(self, k: int) -> dict:
        return self.assemble(*self.rows_and_shifts(self.positions(k, self.cfg.batch_size)))

    def assemble(self, rows: np.ndarray, shift: np.ndarray) -> dict:
        """The batch dict of sample rows [b] (int64 dataset rows) with near-frame shifts [b] (Δ ≠ 0)."""
        cfg = self.cfg
        start, end = self.ep_start[rows], self.ep_end[rows]  # [b]
        near = rows + shift
        outside = (near < start) | (near >= end)
        near = np.clip(np.where(outside, rows - shift, near), start, end - 1)  # flip Δ at an episode edge
        back = np.arange(-(cfg.history - 1), 1) * cfg.history_stride  # [T], 0 = the sample's frame
        window = np.maximum(rows[:, None] + back, start[:, None])  # [b, T]
        window_near = np.maximum(near[:, None] + back, start[:, None])  # [b, T]
        both = self.frames[np.concatenate([window, window_near]).reshape(-1)]  # [2bT, H, W, 3] one gather
        b, t = window.shape
        both = torch.from_numpy(np.ascontiguousarray(both.reshape(2, b, t, *both.shape[1:]).transpose(0, 1, 2, 5, 3, 4)))
        steps = rows[:, None] + np.arange(cfg.chunk)  # [b, H]
        inside = steps < end[:, None]
        steps = np.minimum(steps, end[:, None] - 1)  # past the end: repeat the last action, masked
        return {
            "frames": both[0],  # uint8 [b, T, 3, H, W]
            "frames_near": both[1],  # uint8 [b, T, 3, H, W]
            "instruction": self.instructions[rows].tolist(),
            "task_id": torch.from_numpy(self.task_id[rows]),
            "state": torch.from_numpy(self.state[rows]),  # [b, Ds]
            "action": torch.from_numpy(self.action[steps]),  # [b, H, Da]
            "action_valid": torch.from_numpy(inside & self.valid[steps]),  # [b, H]
            "weight": torch.from_numpy(self.weight[rows]),
            "episode_index": torch.from_numpy(self.episode_index[rows]),
            "frame_index": torch.from_numpy(self.frame_index[rows]),
        }

    def __len__(self) -> int:  # batches in one pass (held-out); training streams past it
        return -(-len(self.samples) // self.cfg.batch_size)


# ----------------------------------------------------------------------------- the loader


class Loader:
    """Iterable of batch dicts; see the module docstring. `state_dict()` resumes mid-stream."""

    def __init__(self, dataset: LeRobotDataset, cfg: LoaderConfig, *, split: Split, seed: int, rank: int, world_size: int):
        self.dataset, self.cfg, self.split, self.seed = dataset, cfg, split, int(seed)
        self.rank, self.world_size = rank, world_size
        self.image_key = cfg.image_key or (dataset.image_keys[0] if dataset.image_keys else "observation.images")
        _require(dataset, self.image_key, "image")
        _require(dataset, cfg.state_key, "vector")
        _require(dataset, cfg.action_key, "vector")
        self._norm = {key: feature_norm(dataset, key, cfg.std_floor) for key in (cfg.state_key, cfg.action_key)}
        self.task_names = sorted({dataset.task_name(i) for i in range(dataset.num_episodes)})
        self.episodes = split_episodes(dataset, cfg.heldout_fraction)[split]
        if len(self.episodes) == 0:
            raise BadInput(f"dataset `{dataset.root}` has no {split} episodes",
                           hint="give some episodes split \"val\" in meta/vla.json, or set LoaderConfig.heldout_fraction > 0")
        self.samples = self._sample_rows()
        self.source = _Batches(self, self.samples, shuffle=split == "train")
        self.next_batch = 0

    def _normalised(self, key: str) -> np.ndarray:
        mean, std = self._norm[key]
        values = self.dataset.column(key).astype(np.float64).reshape(self.dataset.num_frames, -1)  # [N, D], D may be 1
        return ((values - mean) / std).astype(np.float32)

    def _sample_rows(self) -> np.ndarray:
        eps = self.dataset.episodes.iloc[self.episodes]
        starts, lengths = eps["from_index"].to_numpy(), eps["length"].to_numpy()
        rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())  # [S] concatenated ranges
        if self.cfg.skip_masked and fmt.WEIGHT in self.dataset.features:
            rows = rows[self.dataset.column(fmt.WEIGHT)[rows] > 0]
        if len(rows) == 0:
            raise BadInput(f"dataset `{self.dataset.root}`: every {self.split} frame has `vla.weight` 0")
        return rows.astype(np.int64)

    def norm_stats(self) -> dict:
        """{feature: {"mean": [...], "std": [...]}} as used (std floored); saved with the model."""
        return {key: {"mean": mean.tolist(), "std": std.tolist()} for key, (mean, std) in self._norm.items()}

    def config(self) -> dict:
        return {**asdict(self.cfg), "image_key": self.image_key, "split": self.split, "seed": self.seed, "task_names": self.task_names}

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, k: int) -> dict:
        """Global batch k (this rank's shard), computed in this process."""
        return self.source[k]

    def batch_of(self, rows: np.ndarray, shifts: np.ndarray) -> dict:
        """A batch of explicit sample rows [b] (e.g. drawn through token buckets) with their near-frame
        shifts [b] (Δ ≠ 0, flipped at an episode edge as usual), computed in this process."""
        return self.source.assemble(np.asarray(rows, dtype=np.int64), np.asarray(shifts, dtype=np.int64))

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])

    def __iter__(self) -> Iterator[dict]:
        infinite = self.split == "train"
        numbers = itertools.count(self.next_batch) if infinite else range(len(self.source))
        if self.cfg.num_workers > 0:
            batches = DataLoader(self.source, batch_size=None, sampler=numbers, num_workers=self.cfg.num_workers,
                                 pin_memory=self.cfg.pin_memory, persistent_workers=False)
        else:
            batches = (self.source[k] for k in numbers)
        for batch in batches:
            if infinite:
                self.next_batch += 1
            yield batch


def build_loader(dataset: LeRobotDataset | str | os.PathLike, cfg: LoaderConfig, *, split: Split = "train", seed: int,
                 rank: int = 0, world_size: int = 1) -> Loader:
    """Batches of `split` for `rank` of `world_size` (CONTRACTS §C); see the module docstring."""
    if not isinstance(dataset, LeRobotDataset):
        dataset = open_dataset(dataset)
    if split not in ("train", "heldout"):
        raise BadInput(f"unknown split `{split}`", caused_by="expected train or heldout")
    if not 1 <= cfg.chunk <= MAX_CHUNK:
        raise BadInput(f"loader option `chunk` is {cfg.chunk}", caused_by=f"expected 1..{MAX_CHUNK}")
    if cfg.history < 1 or cfg.history_stride < 1 or cfg.near_max < 1:
        raise BadInput("loader options `history`, `history_stride` and `near_max` must be ≥ 1")
    if not 0 <= rank < world_size:
        raise BadInput(f"rank {rank} is outside world size {world_size}")
    if cfg.batch_size < world_size or (split == "train" and cfg.batch_size % world_size):
        raise BadInput(f"loader option `batch_size` is {cfg.batch_size}", caused_by=f"must be a multiple of the world size {world_size}")
    return Loader(dataset, cfg, split=split, seed=seed, rank=rank, world_size=world_size)
