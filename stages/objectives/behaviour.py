"""Behaviour cloning on action chunks: Gaussian NLL, Huber and quantile (pinball) variants (ch07 §7.3).

All take chunks [B, H, Da] with a validity mask `valid` [B, H] (chunk steps past the episode end
are False and never scored) and per-sample weights [B]. Per sample the loss is the mean over valid
(step, dim) elements; then the weighted batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from stages.objectives.weighting import check_weight, combine_weight, masked_sample_mean, weighted_mean

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_chunk(name: str, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"{name} expects [B, H, Da] tensors of one shape, got {list(pred.shape)} and {list(target.shape)}")
    if valid is not None and valid.shape != pred.shape[:2]:
        raise ValueError(f"{name}: `valid` must be [B, H] = {list(pred.shape[:2])}, got {list(valid.shape)}")


def _reduce(elementwise: torch.Tensor, valid: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor:
    check_weight(weight, elementwise.shape[0])
    per_sample, has_any = masked_sample_mean(elementwise, valid)
    return weighted_mean(per_sample, combine_weight(weight, has_any))


def bc_nll(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    target: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    min_log_std: float = -7.0,
) -> torch.Tensor:
    """Gaussian negative log-likelihood −log π_θ(a | s) of the expert chunk (ch07 §7.3 L_BC).

    Per element: ½((a − μ)/σ)² + log σ + ½ log 2π, with log σ clamped below at `min_log_std`
    so a collapsing σ cannot drive the loss to −∞.
    Known answer: μ = a, log σ = 0 gives ½ log 2π ≈ 0.9189.
    """
    _check_chunk("bc_nll", mean, target, valid)
    if log_std.shape != mean.shape:
        raise ValueError(f"bc_nll: `log_std` must match `mean` {list(mean.shape)}, got {list(log_std.shape)}")
    log_std = log_std.clamp_min(min_log_std)
    z = (target - mean) * torch.exp(-log_std)
    nll = 0.5 * z.pow(2) + log_std + _HALF_LOG_2PI  # [B, H, Da]
    return _reduce(nll, valid, weight)


def bc_huber(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    delta: float = 1.0,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Huber BC: quadratic below `delta`, linear above (ch07 §7.3 rule of thumb for human
    corrections with high jerk). Per element ½u² if |u| ≤ δ else δ(|u| − ½δ)."""
    _check_chunk("bc_huber", pred, target, valid)
    err = F.huber_loss(pred, target, reduction="none", delta=delta)  # [B, H, Da]
    return _reduce(err, valid, weight)


def pinball(u: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Quantile (pinball) loss ρ_τ(u) = max(τ·u, (τ − 1)·u) with u = target − prediction."""
    return torch.maximum(tau * u, (tau - 1.0) * u)


def bc_quantile(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    quantiles: float | Sequence[float] = 0.5,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantile-regression BC (ch07 §7.3 rule of thumb).

    One quantile τ: pred [B, H, Da] like target. Several quantiles (τ_1..τ_Q): pred [B, H, Da, Q]
    and the element loss is the mean over the Q pinball losses. τ = 0.5 is half the L1 error.
    """
    taus = [float(quantiles)] if isinstance(quantiles, (int, float)) else [float(q) for q in quantiles]
    if not taus or any(not 0.0 < q < 1.0 for q in taus):
        raise ValueError(f"quantiles must lie in (0, 1), got {taus}")
    if isinstance(quantiles, (int, float)):
        _check_chunk("bc_quantile", pred, target, valid)
        err = pinball(target - pred, taus[0])
    else:
        if pred.shape != (*target.shape, len(taus)):
            raise ValueError(f"bc_quantile: pred must be {[*target.shape, len(taus)]}, got {list(pred.shape)}")
        _check_chunk("bc_quantile", pred[..., 0], target, valid)
        tau = torch.tensor(taus, dtype=pred.dtype, device=pred.device)  # [Q]
        err = pinball(target.unsqueeze(-1) - pred, tau).mean(dim=-1)  # [B, H, Da]
    return _reduce(err, valid, weight)
