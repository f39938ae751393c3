"""Action: a transformer over an action chunk (H ≤ 16 steps × Da) plus one proprio token (ch07 §7.3).

Sequence = [proprio, step_1 … step_H]. Invalid steps (past the episode's end, `valid` False) are
padding: no token attends to them and they are left out of the pooled vector. The proprio token is
always real, so every query has a key. `step_mask` (True = hidden) swaps chosen steps for a learned
mask token, for masked chunk modelling; the chunk decoder (`heads.chunk`) reads the step tokens back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.errors import BadInput
from stages.model.attention import Transformer, init_weights
from stages.model.config import ModelConfig
from stages.model.outputs import ActionOut


class ActionEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        a = config.action
        self.cfg = a
        self.step_embed = nn.Linear(a.action_dim, config.width)
        self.state_embed = nn.Linear(a.state_dim, config.width)
        self.null_state = nn.Parameter(torch.zeros(config.width))  # stands in when there is no proprio
        self.mask_token = nn.Parameter(torch.zeros(config.width))
        self.pos = nn.Parameter(torch.zeros(1 + a.horizon, config.width))  # 0 = proprio, 1.. = steps
        self.encoder = Transformer(config.width, a.depth, config.num_heads, config.mlp_ratio, config.attention)
        self.proj = nn.Linear(config.width, config.z_dim, bias=False)
        init_weights(self)
        for p in (self.null_state, self.mask_token, self.pos):
            nn.init.trunc_normal_(p, std=0.02)

    def _check(self, action: Tensor, state: Tensor | None, valid: Tensor | None, step_mask: Tensor | None) -> None:
        a = self.cfg
        if action.ndim != 3 or action.shape[2] != a.action_dim or not 1 <= action.shape[1] <= a.horizon:
            raise BadInput(f"`action` has shape {tuple(action.shape)}",
                           caused_by=f"expected [B, H<={a.horizon}, {a.action_dim}]",
                           hint="set the model's action.action_dim / action.horizon from the dataset")
        b, h = action.shape[:2]
        if state is not None and tuple(state.shape) != (b, a.state_dim):
            raise BadInput(f"`state` has shape {tuple(state.shape)}", caused_by=f"expected [{b}, {a.state_dim}]",
                           hint="set the model's action.state_dim from the dataset")
        for name, m in (("valid", valid), ("step_mask", step_mask)):
            if m is not None and (tuple(m.shape) != (b, h) or m.dtype != torch.bool):
                raise BadInput(f"`{name}` has shape {tuple(m.shape)} and dtype {m.dtype}",
                               caused_by=f"expected bool [{b}, {h}]")

    def forward(self, action: Tensor, state: Tensor | None = None, valid: Tensor | None = None,
                step_mask: Tensor | None = None) -> ActionOut:
        """action [B, H, Da], state [B, Ds] or None, valid [B, H] bool, step_mask [B, H] bool."""
        self._check(action, state, valid, step_mask)
        b, h, _ = action.shape
        if valid is None:
            valid = torch.ones(b, h, dtype=torch.bool, device=action.device)
        # padding may hold anything (NaN included): zero it before it touches a matmul
        steps = self.step_embed(action.masked_fill(~valid[..., None], 0.0))  # [B, H, D]
        if step_mask is not None:
            steps = torch.where(step_mask[..., None], self.mask_token.to(steps.dtype), steps)
        proprio = self.state_embed(state) if state is not None else self.null_state.expand(b, -1)
        x = torch.cat([proprio[:, None], steps], dim=1) + self.pos[: 1 + h]  # [B, 1+H, D]
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=action.device), valid], dim=1)
        tokens = self.encoder(x, mask)
        w = valid.to(tokens.dtype)[..., None]
        count = w.sum(dim=1)  # [B, 1]
        pooled = (tokens[:, 1:] * w).sum(dim=1) / count.clamp_min(1.0)
        pooled = torch.where(count > 0, pooled, tokens[:, 0])  # no valid step: the proprio token
        return ActionOut(tokens=tokens, mask=mask, pooled=pooled, z=self.proj(pooled))
