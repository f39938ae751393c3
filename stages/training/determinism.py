"""Reproducible, resumable randomness and data order.

* `rng_state()` / `set_rng_state()`: this process's torch / CUDA / numpy / python RNG states as
  uint8 tensors (saved per rank in `trainer_state.safetensors`; no pickle).
* `seed_everything(seed)`, `derive_seed(*parts)`, `isolated_rng(seed)`: the training stream is
  seeded from (seed, rank); loader iterators and evaluation run under their own seeded RNG and put
  the outer state back, so neither perturbs the training stream.
* `DataCursor`: endless batches over epochs with a position (epoch, batches drawn in the epoch)
  that a resumed run seeks to — via the loader's own `state_dict()` when it has one, else by
  re-creating the epoch's iterator and drawing the same number of batches again.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from stages.errors import BadInput


def rng_state(*, cuda: bool = True) -> dict[str, torch.Tensor]:
    """This process's RNG states (torch, CUDA when initialised, numpy, python) as uint8 tensors."""
    out = {"torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out["numpy"] = torch.from_numpy(np.concatenate([
        np.asarray(keys, dtype=np.uint32).view(np.uint8),
        np.array([pos, has_gauss], dtype=np.int64).view(np.uint8),
        np.array([cached], dtype=np.float64).view(np.uint8),
    ]))
    version, internal, gauss_next = random.getstate()
    out["python"] = torch.from_numpy(np.concatenate([
        np.asarray(internal, dtype=np.uint32).view(np.uint8),
        np.array([version], dtype=np.int64).view(np.uint8),
        np.array([np.nan if gauss_next is None else gauss_next], dtype=np.float64).view(np.uint8),
    ]))
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    raw = state["numpy"].numpy()
    keys, pos_gauss, cached = raw[:-24].view(np.uint32), raw[-24:-8].view(np.int64), raw[-8:].view(np.float64)
    np.random.set_state(("MT19937", keys.copy(), int(pos_gauss[0]), int(pos_gauss[1]), float(cached[0])))
    raw = state["python"].numpy()
    internal, version, gauss = raw[:-16].view(np.uint32), raw[-16:-8].view(np.int64), raw[-8:].view(np.float64)
    random.setstate((int(version[0]), tuple(int(v) for v in internal), None if np.isnan(gauss[0]) else float(gauss[0])))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block under torch/numpy/python RNGs seeded with `seed`, then restore the outer states."""
    saved = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class DataCursor:
    """Endless batches over epochs with a resumable position (epoch, batches drawn in the epoch).

    Everything the loader does — `iter()` and every `next()`, where a generator-based loader really
    works — runs under the cursor's own RNG stream, seeded from (seed, rank, epoch) when an epoch
    starts and swapped in and out around each call. A loader that draws from the global RNG (a
    DataLoader's shuffle, main-process augmentation) therefore yields the same batches whatever the
    model does in between, and replaying `position` batches reproduces both the batches and the
    stream exactly.
    """

    def __init__(self, loader: Any, *, seed: int, rank: int):
        self.loader, self.seed, self.rank = loader, seed, rank
        self.epoch, self.position = 0, 0
        self._it: Iterator | None = None
        self._rng: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        outer = rng_state(cuda=False)
        set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = rng_state(cuda=False)
            set_rng_state(outer)

    def _open(self, loader_state: dict | None = None) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        if loader_state is not None:
            self.loader.load_state_dict(loader_state)
        with isolated_rng(derive_seed(self.seed, self.rank, self.epoch, 1)):
            self._rng = rng_state(cuda=False)
        with self._stream():
            self._it = iter(self.loader)

    def next(self) -> Any:
        if self._it is None:
            self._open()
        while True:
            try:
                with self._stream():
                    batch = next(self._it)
            except StopIteration:
                if self.position == 0:
                    raise BadInput("the training loader yields no batch", hint="use a larger dataset or a smaller batch size") from None
                self.epoch, self.position = self.epoch + 1, 0
                self._open()
                continue
            self.position += 1
            return batch

    def state(self) -> dict:
        loader_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None
        return {"epoch": self.epoch, "position": self.position, "loader": loader_state}

    def seek(self, state: dict) -> None:
        """Continue where `state` was taken: the loader's own state if it has one, else replay.

        A loader with `state_dict()` must be a pure function of its state (no global RNG) for the
        first path to be exact; the replay path has no such requirement.
        """
        self.epoch, self.position = int(state["epoch"]), 0
        if state.get("loader") is not None and hasattr(self.loader, "load_state_dict"):
            self._open(state["loader"])
            self.position = int(state["position"])
            return
        self._open()
        for _ in range(int(state["position"])):
            self.next()
