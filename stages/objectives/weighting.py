"""Per-sample weights and validity masks shared by every loss (ch07 §7.9 negative-transfer guard).

Every loss in this package reduces to one value per sample and then to a scalar through
`weighted_mean`, so the dataset's `vla.weight` column (0 = masked segment) acts the same way
everywhere: a sample of weight 0 contributes nothing, not even to the normaliser.
"""

from __future__ import annotations

import torch

# A sum of weights below this counts as "nothing left": the loss is then exactly 0 (with a graph).
_EMPTY = 1e-12


def check_weight(weight: torch.Tensor | None, batch: int, *, name: str = "weight") -> None:
    """Shapes are programming errors, not user input: a clear ValueError."""
    if weight is None:
        return
    if weight.dim() != 1 or weight.shape[0] != batch:
        raise ValueError(f"`{name}` must have shape [{batch}], got {list(weight.shape)}")


def weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Σ w_i ℓ_i / Σ w_i over a batch; the plain mean when `weight` is None.

    per_sample: [B]; weight: [B] non-negative. When every weight is 0 the result is 0 (still
    attached to the graph, so `backward()` works and yields zero gradients).
    """
    if weight is None:
        return per_sample.mean()
    check_weight(weight, per_sample.shape[0])
    w = weight.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp_min(_EMPTY)


def masked_sample_mean(values: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` [B, H, ...] over the valid steps of each sample.

    valid: bool [B, H] (e.g. `action_valid`: chunk steps past the episode end are False).
    Returns (mean [B], has_any bool [B]); a sample with no valid step has mean 0 and has_any False,
    so callers multiply it out of the weights instead of dividing by zero.
    """
    batch = values.shape[0]
    flat = values.reshape(batch, values.shape[1], -1)  # [B, H, E]
    if valid is None:
        return flat.mean(dim=(1, 2)), torch.ones(batch, dtype=torch.bool, device=values.device)
    if valid.shape != values.shape[:2]:
        raise ValueError(f"`valid` must have shape {list(values.shape[:2])}, got {list(valid.shape)}")
    m = valid.to(values.dtype).unsqueeze(-1)  # [B, H, 1]
    count = m.sum(dim=(1, 2)) * flat.shape[-1]  # [B]
    total = (flat * m).sum(dim=(1, 2))
    return total / count.clamp_min(1.0), count > 0


def combine_weight(weight: torch.Tensor | None, has_any: torch.Tensor) -> torch.Tensor:
    """Per-sample weight with the samples that have nothing to score removed."""
    w = has_any.to(torch.float32) if weight is None else weight * has_any.to(weight.dtype)
    return w
