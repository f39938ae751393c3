"""Vision self-supervision: masked video modelling and temporal consistency (ch07 §7.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.objectives.weighting import check_weight, combine_weight, weighted_mean


def tube_mask(
    batch: int,
    frames: int,
    patches: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Tube masking (VideoMAE): bool [B, T, N], True = masked; one spatial mask per sample shared
    by all T frames, so a patch cannot be copied from its neighbour in time.

    Exactly round(ratio · N) patches are masked in every sample (at least 1, at most N − 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    k = min(max(int(round(ratio * patches)), 1), patches - 1)
    noise = torch.rand(batch, patches, generator=generator, device=device)  # [B, N]
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise: a random permutation
    spatial = ranks < k  # [B, N], exactly k True per row
    return spatial[:, None, :].expand(batch, frames, patches)


def mvm(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: str = "l1",
    norm_target: bool = False,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked video modelling: reconstruction error on the masked patches only (ch07 §7.2 L_MVM).

    pred, target: [B, ..., P] patch values (P pixels per patch); mask: bool [B, ...], True = masked
    (scored). kind: "l1" (the chapter's |x̂ − x|₁) or "mse". norm_target: normalise each target patch
    to zero mean / unit variance first (MAE's per-patch normalisation).
    Per sample: mean over masked patches of the mean over P (so the value does not scale with the
    masking ratio); samples without a masked patch drop out; then the weighted batch mean.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:-1]:
        raise ValueError(
            f"mvm expects pred/target [B, ..., P] and mask [B, ...], got {list(pred.shape)}, "
            f"{list(target.shape)}, {list(mask.shape)}"
        )
    if kind not in ("l1", "mse"):
        raise ValueError(f"mvm kind must be 'l1' or 'mse', got {kind!r}")
    batch = pred.shape[0]
    check_weight(weight, batch)
    if norm_target:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + 1e-6).sqrt()
    diff = pred - target
    err = diff.abs().mean(dim=-1) if kind == "l1" else diff.pow(2).mean(dim=-1)  # [B, ...]
    m = mask.reshape(batch, -1).to(err.dtype)  # [B, M]
    count = m.sum(dim=1)
    per_sample = (err.reshape(batch, -1) * m).sum(dim=1) / count.clamp_min(1.0)  # [B]
    return weighted_mean(per_sample, combine_weight(weight, count > 0))


def temporal_consistency(
    predicted: torch.Tensor,
    target: torch.Tensor,
    *,
    normalize: bool = False,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Short-window temporal consistency ‖f(x_{t+Δ}) − T_Δ(f(x_t))‖²₂ (ch07 §7.2 L_TC).

    predicted: [B, D] = T_Δ(f(x_t)) (the caller's transition head applied to the frame at t);
    target: [B, D] = f(x_{t+Δ}) (detach it for a stop-gradient target, BYOL-style).
    normalize: compare L2-normalised vectors (the value is then 2 − 2·cos, bounded in [0, 4]).
    Per sample: squared L2 distance; then the weighted batch mean (the chapter sums over t, we
    average over the batch so the value does not depend on the batch size).
    """
    if predicted.shape != target.shape or predicted.dim() != 2:
        raise ValueError(f"temporal_consistency expects two [B, D] tensors, got {list(predicted.shape)}, {list(target.shape)}")
    check_weight(weight, predicted.shape[0])
    if normalize:
        predicted, target = F.normalize(predicted, dim=-1), F.normalize(target, dim=-1)
    per_sample = (predicted - target).pow(2).sum(dim=-1)  # [B]
    return weighted_mean(per_sample, weight)
