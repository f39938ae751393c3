"""Data parallelism in one place: torchrun setup, gradient all-reduce, feature gathering.

Model code is written for one device; this module is the only one that talks to
`torch.distributed` (STYLE §3). Under `torchrun --nproc-per-node N` every rank holds a full replica,
sees its own slice of the global batch, and after backward the gradients are averaged across ranks.

Why we average gradients ourselves instead of wrapping the model in `DistributedDataParallel`:
multi-objective combiners (PCGrad, GradNorm) take one gradient per loss with `torch.autograd.grad`
and combine them non-linearly. DDP's reducer hooks only fire on `.backward()` and would hand such a
combiner per-rank gradients; PCGrad of per-rank gradients is not PCGrad of the global gradient. So
the engine keeps the model unwrapped and offers two explicit collectives:

* `all_reduce_gradients(params)` — averages `p.grad` across ranks after a linear combiner's
  backward (flattened into buckets, one collective per bucket);
* `all_reduce_mean_(tensor)` — what a non-linear combiner calls on its per-task gradient matrix
  `[T, D]` *before* combining, so that it combines global gradients (it then sets
  `reduces_gradients = True` and the engine skips the second average).

Freezing parameters between phases needs no re-wrapping either. The price is no overlap of
communication with backward, which is negligible for the model sizes trained here.

`gather_features(x)` is the single cross-rank gather for contrastive losses (local loss + gather
with gradient, as OpenCLIP does): call it as `parallel.gather_features(...)` so tests can replace it.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("vla")

# Gradients are averaged in flat buckets of about this many bytes (one collective each).
_BUCKET_BYTES = 32 << 20


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (idempotent); a plain process is rank 0 of 1.

    Backend: NCCL when the device is CUDA, gloo on CPU. Each rank uses `cuda:LOCAL_RANK`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world_size, backend)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return DistInfo(0, 1, 0, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- replicas


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank's replica identical to rank 0's (parameters and buffers)."""
    if world_size() == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` across ranks in place (no-op in one process) and return it.

    Non-linear combiners call this on their per-task gradient matrix `[T, D]` before combining.
    """
    if world_size() > 1:
        _all_reduce_(tensor, dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum across ranks, in place (e.g. "any rank saw a non-finite value")."""
    if world_size() > 1:
        _all_reduce_(tensor, dist.ReduceOp.MAX)
    return tensor


@torch.no_grad()
def all_reduce_gradients(params: list[torch.Tensor]) -> None:
    """Average `p.grad` across ranks, in flat buckets grouped by dtype and device.

    Every rank must pass the same parameters in the same order with the same set of `grad is None`
    (frozen parameters are excluded identically on every rank, since freezing follows the schedule).
    """
    if world_size() == 1:
        return
    open_buckets: dict[tuple, tuple[list[torch.Tensor], int]] = {}
    full: list[list[torch.Tensor]] = []
    for g in (p.grad for p in params if p.grad is not None):
        key = (g.dtype, g.device)
        bucket, size = open_buckets.get(key, ([], 0))
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= _BUCKET_BYTES:
            full.append(bucket)
            bucket, size = [], 0
        open_buckets[key] = (bucket, size)
    full += [bucket for bucket, _ in open_buckets.values() if bucket]
    for bucket in full:
        flat = all_reduce_mean_(torch.cat([g.reshape(-1) for g in bucket]))
        torch._foreach_copy_(bucket, [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in bucket]), bucket)])


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; RNG states, flags and metrics live on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device


def _all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
    device = _comm_device(tensor)
    if device == tensor.device:
        dist.all_reduce(tensor, op=op)
    else:
        local = tensor.to(device)
        dist.all_reduce(local, op=op)
        tensor.copy_(local)


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values on every rank (in place where possible); identity in one process."""
    if world_size() == 1:
        return tensor
    local = tensor.to(_comm_device(tensor))
    dist.broadcast(local, src=src)
    return tensor.copy_(local)


def all_gather_equal(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (no gradient); `[tensor]` in one process."""
    if world_size() == 1:
        return [tensor]
    home = tensor.device
    local = tensor.to(_comm_device(tensor)).contiguous()
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [t.to(home) for t in out]


# ----------------------------------------------------------------------------- contrastive gather


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `[B, ...]` features into `[world_size * B, ...]`, with gradient.

    OpenCLIP's "local loss + gather with grad": each rank scores its own B rows against all
    world_size * B columns (labels offset by `rank_offset(B)`); the backward sums the gradient that
    every rank's loss puts on a row and hands it to the row's owner, so the averaged gradient equals
    that of the loss over the global batch. Every rank must call it with the same shape (drop_last
    loaders) and in the same order. Identity in one process.
    """
    if world_size() == 1:
        return features
    return _GatherWithGrad.apply(features)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [W*B, ...]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # [W*B, ...] -> [B, ...]
        grad = grad.contiguous()
        n = grad.shape[0] // world_size()
        if dist.get_backend() == "nccl":
            out = torch.empty_like(grad[:n])
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no reduce-scatter
        return total[rank() * n:(rank() + 1) * n]


def rank_offset(local_batch: int) -> int:
    """Row index of this rank's first sample in the gathered batch (labels for local loss)."""
    return rank() * local_batch
