"""Exponential-moving-average teacher (ch07 §7.9 "动量教师": a momentum-updated teacher smooths targets).

After every applied optimizer step, each floating-point parameter of the teacher follows

    θ_ema ← d · θ_ema + (1 − d) · θ

with decay d; buffers (e.g. running statistics) are copied. The teacher is a separate module in
eval mode with `requires_grad=False`, so a recipe can run it under `torch.no_grad()` for
distillation targets. Its weights are saved in the checkpoint's `trainer_state.safetensors`
under `ema.<name>`.
"""

from __future__ import annotations

import copy

import torch

from stages.errors import BadInput


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise BadInput(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._float = [n for n, p in self.module.named_parameters() if p.is_floating_point()]

    def _pairs(self, model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mine = dict(self.module.named_parameters())
        theirs = dict(model.named_parameters())
        return [mine[n] for n in self._float], [theirs[n].detach() for n in self._float]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One EMA step towards `model`'s current weights."""
        ema, live = self._pairs(model)
        if ema:
            torch._foreach_mul_(ema, self.decay)
            torch._foreach_add_(ema, live, alpha=1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], *, updates: int) -> None:
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise BadInput(f"EMA state does not match the model: tensor `{first}` is {'missing' if missing else 'unexpected'}")
        self.updates = int(updates)
