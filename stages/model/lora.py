"""LoRA: a frozen linear layer plus a trained low-rank update (Hu et al. 2021; ch07 §7.4 "freeze the
backbone, train only adapter layers").

    y = x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ,   A [r, in] ~ small random,  B [out, r] = 0

B starts at zero, so at initialisation the layer computes exactly the pretrained function. `weight`
and `bias` keep the pretrained names (a Hugging Face state dict loads without renaming) and never
require gradients; only `lora_a` and `lora_b` train.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(in_features, out_features)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank if rank else 0.0
        if rank:
            self.lora_a = nn.Parameter(torch.empty(rank, in_features))
            self.lora_b = nn.Parameter(torch.empty(out_features, rank))
            self.reset_lora()

    def reset_lora(self, device: torch.device | str | None = None) -> None:
        """Fresh A (as nn.Linear's init, like the LoRA paper's code) and B = 0, on `device`."""
        if not self.rank:
            return
        device = device or self.lora_a.device
        self.lora_a = nn.Parameter(torch.empty(self.rank, self.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.rank:
            y = y + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale
        return y
