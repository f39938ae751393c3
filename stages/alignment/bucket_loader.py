"""Training batches whose composition the token buckets decide (ch07 §7.6).

For global batch k (one batch per optimizer step, so k is the step):

    p = buckets.probabilities(k)                  # leak to step k, p_k ∝ max(0, B_k − u_k)^γ · q_k
    cluster_i ~ p,  i = 1..B                      # B = global batch size, drawn with replacement
    row_i ~ uniform(members[cluster_i])           # a training sample of that cluster
    buckets.consume(bincount(cluster))            # one token per sample

and rank r keeps the r-th contiguous B/W slice (ranks together = the 1-rank batch). Every rank
draws the whole global batch from generators seeded by (seed, k), so all ranks agree on the batch
and update their buckets identically without communicating. The batch is a pure function of
(seed, k, bucket state): `state_dict()` holds the batch counter and the bucket state, so a resumed
run draws exactly the batches an uninterrupted run would have drawn.

Each batch carries, besides the loader's keys (CONTRACTS §C), `cluster` int64 [b] (the bucket each
sample came from) and `serves` bool [b, 3] (V, L, A objectives the sample serves; see
`stages.alignment.clusters`). Token unit: one sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from stages.data.loader import Loader
from stages.errors import BadInput
from stages.training.buckets import TokenBuckets
from stages.training.determinism import derive_seed


class BucketLoader:
    def __init__(self, loader: Loader, buckets: TokenBuckets, members: list[np.ndarray], serves: np.ndarray, *,
                 seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """loader: the train `Loader` (its `samples` are what `members` index); members[k]: indices
        into `loader.samples` for cluster k; serves: bool [K, 3]; batch_size: the global batch."""
        if len(members) != len(buckets.names) or serves.shape != (len(buckets.names), 3):
            raise ValueError(f"{len(buckets.names)} clusters need as many member lists and a [K, 3] serves table")
        if batch_size % world_size:
            raise BadInput(f"batch size {batch_size} is not a multiple of the world size {world_size}")
        self.loader, self.buckets, self.seed = loader, buckets, int(seed)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.sizes = np.array([len(m) for m in members], dtype=np.int64)  # [K]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])  # [K] start of cluster k in `flat`
        self.flat = loader.samples[np.concatenate(members)]  # dataset rows, cluster after cluster
        self.serves = torch.from_numpy(np.asarray(serves, dtype=bool))
        self.next_batch = 0

    def draw(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global batch k: (clusters [B], dataset rows [B], near shifts [B]); consumes the tokens."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, k, 61))
        clusters = self.buckets.sample(self.batch_size, gen, step=k).numpy()  # [B]
        rng = np.random.default_rng([self.seed, k, 62])
        pick = np.minimum((rng.random(self.batch_size) * self.sizes[clusters]).astype(np.int64), self.sizes[clusters] - 1)
        rows = self.flat[self.offsets[clusters] + pick]  # [B]
        near_max = self.loader.cfg.near_max
        shifts = rng.integers(1, near_max + 1, size=self.batch_size) * rng.choice([-1, 1], size=self.batch_size)
        self.buckets.consume(np.bincount(clusters, minlength=len(self.sizes)).astype(np.float64))
        return clusters, rows, shifts

    def batch(self, k: int) -> dict:
        clusters, rows, shifts = self.draw(k)
        per_rank = self.batch_size // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        batch = self.loader.batch_of(rows[mine], shifts[mine])
        batch["cluster"] = torch.from_numpy(clusters[mine].astype(np.int64))
        batch["serves"] = self.serves[torch.from_numpy(clusters[mine])]  # [b, 3] bool
        return batch

    def __iter__(self) -> Iterator[dict]:
        while True:  # endless: the engine stops at the schedule's end
            batch = self.batch(self.next_batch)
            self.next_batch += 1
            yield batch

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch, "buckets": self.buckets.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])
        self.buckets.load_state_dict(state["buckets"])
