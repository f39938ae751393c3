"""Heads (ARCHITECTURE §6): Gaussian action-chunk policy, chunk decoder, masked-video decoder, cycle
heads, and the similarity-logit / energy-score read-out for open-set use.

All live under the `heads.` prefix: `heads.policy`, `heads.chunk`, `heads.mvm`, `heads.cycle_vl`,
`heads.cycle_la`, `heads.cycle_va`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.model.attention import Mlp, init_weights
from stages.model.config import ModelConfig
from stages.model.vision import MVMDecoder


class BoundedLogStd(nn.Module):
    """raw -> log σ squashed into [lo, hi] (smooth, so the NLL never sees σ → 0 or ∞)."""

    def __init__(self, lo: float, hi: float, init: float):
        super().__init__()
        self.lo, self.hi = lo, hi
        frac = (init - lo) / (hi - lo)
        self.offset = math.log(frac / (1 - frac))  # raw = 0 gives log σ = init

    def forward(self, raw: Tensor) -> Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(raw + self.offset)


class PolicyHead(nn.Module):
    """π(a_{t:t+H} | fused, state) = Π N(mean, exp(log_std)²), diagonal (BC NLL, KL to a teacher; ch07 §7.3).

    The fused context conditions the proprio features by FiLM (h ← LN(h)·(1+γ) + β), then a per-step
    MLP (shared weights, learned step embedding) reads out [B, H, Da] means and log-stds.
    Without context (action-only pretraining, or a caller dropping it) a learned null context is used.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, a, h = config.width, config.action, config.heads
        self.horizon, self.action_dim = a.horizon, a.action_dim
        self.null_context = nn.Parameter(torch.zeros(d))
        self.state_in = nn.Linear(a.state_dim, d)
        self.film = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(d)
        self.step = nn.Parameter(torch.zeros(a.horizon, d))
        self.out = Mlp(d, h.policy_hidden, 2 * a.action_dim)
        self.log_std = BoundedLogStd(h.log_std_min, h.log_std_max, h.log_std_init)
        init_weights(self)
        nn.init.zeros_(self.film.weight)  # FiLM starts as the identity
        nn.init.trunc_normal_(self.step, std=0.02)

    def forward(self, context: Tensor | None, state: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            b = state.shape[0] if state is not None else 1
            context = self.null_context.expand(b, -1)
        h = context + (self.state_in(state) if state is not None else 0.0)  # [B, D]
        gamma, beta = self.film(context).chunk(2, dim=-1)
        h = self.norm(h) * (1 + gamma) + beta
        u = h[:, None, :] + self.step[None]  # [B, H, D]
        mean, raw = self.out(u).chunk(2, dim=-1)  # [B, H, Da] each
        return mean, self.log_std(raw)


class ChunkDecoder(nn.Module):
    """Step tokens of the action encoder [B, H, D] -> Gaussian over each step's action [B, H, Da]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h = config.width, config.heads
        self.norm = nn.LayerNorm(d)
        self.out = Mlp(d, h.policy_hidden, 2 * config.action.action_dim)
        self.log_std = BoundedLogStd(h.log_std_min, h.log_std_max, h.log_std_init)
        init_weights(self)

    def forward(self, step_tokens: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.out(self.norm(step_tokens)).chunk(2, dim=-1)
        return mean, self.log_std(raw)


class CycleHead(nn.Module):
    """g: Z -> Z, a small MLP (ch07 §7.7 cycle: ‖g_{L→A}(g_{V→L}(v)) − g_{V→A}(v)‖₁)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mlp = Mlp(config.z_dim, config.heads.cycle_hidden)
        init_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.mlp(z)


class Heads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.policy = PolicyHead(config)
        self.chunk = ChunkDecoder(config)
        self.mvm = MVMDecoder(config)
        self.cycle_vl = CycleHead(config)
        self.cycle_la = CycleHead(config)
        self.cycle_va = CycleHead(config)


def similarity_logits(z: Tensor, prototypes: Tensor, logit_scale: Tensor) -> Tensor:
    """φ_k(x) = exp(logit_scale) · cos(z, p_k): z [B, Z], prototypes [K, Z] -> [B, K].

    Prototypes are any Z vectors standing for known classes: the language z of each known task's
    instruction (`model.encode_language(task_texts).z`) or the mean vision z of each task's frames.
    """
    return logit_scale.exp() * F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).t()


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """E(x) = −τ · log Σ_k exp(φ_k(x) / τ)   (ch07 §7.2), logits [B, K] -> [B].

    Low energy = close to some known prototype; threshold it (higher = more likely unknown/open-set).
    """
    return -temperature * torch.logsumexp(logits / temperature, dim=-1)
