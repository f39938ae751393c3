"""AdamW with named parameter groups and a warmup + cosine learning-rate schedule.

Weight decay applies to matrices only (ndim >= 2); biases, norms, the logit scale and other vectors
are not decayed (the usual transformer recipe). Each group remembers its parameters' names so the
optimizer state is saved by name (checkpoint.py), never by position.

The learning rate at step s (0-based, the step about to be taken) is

    lr(s) = base_lr · group.lr_scale · f(s) · m(s)

with f the warmup + cosine factor below and m the schedule phase's LR multiplier (ch07 §7.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from stages.errors import BadInput


@dataclass
class OptimConfig:
    lr: float = 3e-4                    # peak learning rate, reached at the end of warmup
    weight_decay: float = 0.05          # decoupled weight decay on matrices (ndim >= 2)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0               # linear warmup from lr/warmup_steps up to lr
    min_lr_ratio: float = 0.1           # cosine floor as a fraction of lr
    foreach: bool | None = None         # None = PyTorch's default fused/foreach choice

    def check(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInput(f"learning rate must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise BadInput(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise BadInput(f"warmup steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise BadInput(f"min LR ratio must lie in [0, 1], got {self.min_lr_ratio}")


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Warmup + cosine factor f(step) in (0, 1].

    Warmup: f = (s + 1) / W for s < W, so the first step already moves. Then cosine from 1 down to
    `min_lr_ratio` over [W, total_steps): f = r + (1 − r)·½(1 + cos(π·p)), p = (s − W)/(total − W).
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    r = cfg.min_lr_ratio
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float, multiplier: float = 1.0) -> float:
    """Write each group's learning rate for the coming step; returns the unscaled value."""
    lr = base_lr * factor * multiplier
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    cfg: OptimConfig,
    *,
    extra_groups: Iterable[dict] = (),
) -> torch.optim.AdamW:
    """AdamW over `named_params` split into `decay` / `no_decay` groups, plus `extra_groups`.

    Frozen parameters stay in the optimizer (they simply get no gradient, and AdamW skips a
    parameter whose `.grad` is None), so freezing or unfreezing between phases needs no rebuild.
    An extra group is a dict with `name`, `params`, `param_names` and optional `lr_scale`,
    `weight_decay` (e.g. the combiner's own learnable weights).
    """
    cfg.check()
    decay, no_decay = ([], []), ([], [])
    for name, p in named_params:
        target = decay if p.ndim >= 2 else no_decay  # matrices decay; biases, norms, scales do not
        target[0].append(name)
        target[1].append(p)
    groups = [
        {"name": "decay", "params": decay[1], "param_names": decay[0], "weight_decay": cfg.weight_decay},
        {"name": "no_decay", "params": no_decay[1], "param_names": no_decay[0], "weight_decay": 0.0},
    ]
    for extra in extra_groups:
        groups.append({"weight_decay": 0.0, **extra})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=cfg.foreach)


def param_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of all optimized parameters in optimizer order (the order of its state indices)."""
    return [n for g in optimizer.param_groups for n in g["param_names"]]
