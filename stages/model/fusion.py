"""Fusion: language queries vision patches (cross-attention), then a gate (ch05 §5.2, §5.5).

    c = masked-mean over language tokens of CrossBlocks(Q = L tokens, K = V = vision tokens)   # [B, D]
    g = σ(W [v̄ ; c])                                                                          # [B, D]
    fused = LN(g ⊙ v̄ + (1 − g) ⊙ c)                                                           # ch05 §5.5

Modality dropout (training mode only): a share `fusion.modality_dropout` of the samples loses one
modality, vision or language with equal odds; a dropped modality's tokens are all replaced by a
learned null token, so the gate and the policy learn to act on what is left. Callers can force the
choice with `drop_vision` / `drop_language` ([B] bool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.model.attention import CrossBlock, init_weights, masked_mean
from stages.model.config import ModelConfig
from stages.model.outputs import LanguageOut, VisionOut


class Fusion(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.p_drop = config.fusion.modality_dropout
        d = config.width
        self.blocks = nn.ModuleList(CrossBlock(d, config.num_heads, config.mlp_ratio, config.attention)
                                    for _ in range(config.fusion.depth))
        self.null_vision = nn.Parameter(torch.zeros(d))
        self.null_language = nn.Parameter(torch.zeros(d))
        self.gate = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)
        init_weights(self)
        nn.init.trunc_normal_(self.null_vision, std=0.02)
        nn.init.trunc_normal_(self.null_language, std=0.02)

    def sample_dropout(self, batch: int, device: torch.device,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """[B] bool each: which samples lose vision, which lose language (never both)."""
        u = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu").to(device)
        return u < self.p_drop / 2, (u >= self.p_drop / 2) & (u < self.p_drop)

    def forward(self, vision: VisionOut, language: LanguageOut, *, drop_vision: Tensor | None = None,
                drop_language: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        v_tokens, l_tokens, v_pooled = vision.tokens, language.tokens, vision.pooled  # [B,N,D] [B,L,D] [B,D]
        b = v_tokens.shape[0]
        if drop_vision is None and drop_language is None and self.training and self.p_drop > 0:
            drop_vision, drop_language = self.sample_dropout(b, v_tokens.device, generator)
        if drop_vision is not None:
            null = self.null_vision.to(v_tokens.dtype)
            v_tokens = torch.where(drop_vision[:, None, None], null, v_tokens)
            v_pooled = torch.where(drop_vision[:, None], null, v_pooled)
        if drop_language is not None:
            l_tokens = torch.where(drop_language[:, None, None], self.null_language.to(l_tokens.dtype), l_tokens)
        x = l_tokens
        for block in self.blocks:
            x = block(x, v_tokens)  # language queries vision patches
        c = masked_mean(x, language.mask)  # [B, D]
        g = torch.sigmoid(self.gate(torch.cat([v_pooled, c], dim=-1)))
        return self.norm(g * v_pooled + (1 - g) * c)
