"""Bidirectional InfoNCE with soft / half negatives for near frames (ch07 §7.2, ch05 §5.2–5.3, §5.6).

Scale-out follows the "local loss + gather with gradient" pattern: the engine's `gather_features`
helper returns every rank's rows (with gradient flowing back to the local ones); this module only
takes tensors. Each rank scores its own n rows against all N gathered rows, with the positives at
columns `offset + arange(n)`. With one rank, pass nothing: a and b are the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stages.objectives.weighting import check_weight, weighted_mean


def _check_matrix(m: torch.Tensor | None, n: int, total: int, name: str) -> None:
    if m is not None and tuple(m.shape) != (n, total):
        raise ValueError(f"`{name}` must have shape [{n}, {total}], got {list(m.shape)}")


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-row cross-entropy [n]: hard labels, or a soft target distribution per row."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    t = targets.to(logits.dtype)
    t = t / t.sum(dim=1, keepdim=True)
    return -(t * F.log_softmax(logits, dim=1)).sum(dim=1)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    soft_targets: torch.Tensor | None = None,
    negative_weights: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of `a` and `b` (ch05 §5.2 L_{V↔L}; ch07 §7.2).

    Rows are L2-normalised inside; logits = logit_scale · â · b̂ᵀ; the loss is the mean of the
    a→b and b→a cross-entropies, averaged over rows (weighted by `weight` when given).

    Args:
        a, b: [n, D] local rows; row i of `a` is paired with row i of `b`. Not normalised.
        logit_scale: the multiplicative scale 1/τ (e.g. `model.logit_scale.exp()`), not its log.
        soft_targets: optional [n, N] non-negative target weights between local sample i and
            global sample j (rows are normalised to a distribution inside). Use it for near frames
            (ch07 §7.2 rule of thumb: a soft label instead of a hard negative), e.g.
            `near_frame_targets(...)`. The relation must be symmetric between samples: the same
            matrix serves both directions. Each row needs a positive sum.
        negative_weights: optional [n, N] weights of each candidate in the softmax denominator
            ("half negatives": 0.5 for a near frame, 0 to drop a candidate); the positive's entry
            must stay > 0. Implemented as logits + log(w).
        weight: optional [n] per-sample weights (`vla.weight`; 0 = masked segment).
        a_all, b_all: optional [N, D] rows gathered from every rank (local rows included, with
            gradient); the local rows sit at `offset : offset + n`. Both or neither.
        offset: index of the first local row inside the gathered tensors.

    Returns a scalar. Known answer: for a = b = I₂ and logit_scale = 1 the loss is
    log(1 + e⁻¹) ≈ 0.3133 (each row: logits [1, 0]).
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"`a` and `b` must both be [n, D], got {list(a.shape)} and {list(b.shape)}")
    if (a_all is None) != (b_all is None):
        raise ValueError("pass both `a_all` and `b_all` (gathered rows) or neither")
    n = a.shape[0]
    if a_all is None:
        a_all, b_all, offset = a, b, 0
    total = a_all.shape[0]
    if b_all.shape[0] != total or a_all.shape[1] != a.shape[1] or b_all.shape[1] != b.shape[1]:
        raise ValueError(f"gathered rows must be [N, D], got {list(a_all.shape)} and {list(b_all.shape)}")
    if not 0 <= offset <= total - n:
        raise ValueError(f"`offset` {offset} leaves no room for {n} local rows among {total}")
    _check_matrix(soft_targets, n, total, "soft_targets")
    _check_matrix(negative_weights, n, total, "negative_weights")
    check_weight(weight, n)

    a_n, b_n = F.normalize(a, dim=-1), F.normalize(b, dim=-1)  # [n, D]
    a_all_n = a_n if a_all is a else F.normalize(a_all, dim=-1)  # [N, D]
    b_all_n = b_n if b_all is b else F.normalize(b_all, dim=-1)
    logits_ab = logit_scale * a_n @ b_all_n.T  # [n, N]: local a against every b
    logits_ba = logit_scale * b_n @ a_all_n.T  # [n, N]: local b against every a
    if negative_weights is not None:
        log_w = torch.log(negative_weights.to(logits_ab.dtype))  # log 0 = -inf drops a candidate
        logits_ab, logits_ba = logits_ab + log_w, logits_ba + log_w
    labels = torch.arange(offset, offset + n, device=a.device)
    per_sample = 0.5 * (
        _cross_entropy(logits_ab, labels, soft_targets) + _cross_entropy(logits_ba, labels, soft_targets)
    )  # [n]
    return weighted_mean(per_sample, weight)


def near_frame_mask(
    episode_index: torch.Tensor,
    frame_index: torch.Tensor,
    *,
    radius: int,
    offset: int = 0,
    rows: int | None = None,
) -> torch.Tensor:
    """bool [n, N]: sample j is a *near frame* of local sample i (same episode, 0 < |Δframe| ≤ radius).

    episode_index, frame_index: int [N] for every (gathered) sample; the local rows are
    `offset : offset + rows` (all N when `rows` is None). The diagonal (the positive) is False.
    """
    total = episode_index.shape[0]
    n = total if rows is None else rows
    ep_local = episode_index[offset : offset + n, None]  # [n, 1]
    fr_local = frame_index[offset : offset + n, None]
    gap = (fr_local - frame_index[None, :]).abs()  # [n, N]
    near = (ep_local == episode_index[None, :]) & (gap <= radius) & (gap > 0)
    self_cols = torch.arange(offset, offset + n, device=episode_index.device)
    near[torch.arange(n, device=near.device), self_cols] = False  # a duplicated frame stays the positive only
    return near


def near_frame_targets(
    episode_index: torch.Tensor,
    frame_index: torch.Tensor,
    *,
    radius: int,
    weight: float = 0.5,
    offset: int = 0,
    rows: int | None = None,
) -> torch.Tensor:
    """Soft targets [n, N] for `info_nce`: 1 on the positive, `weight` on near frames, 0 elsewhere.

    ch07 §7.2 rule of thumb: near frames are not true negatives; giving them a soft label keeps the
    embedding from being torn apart between adjacent frames of one episode.
    """
    near = near_frame_mask(episode_index, frame_index, radius=radius, offset=offset, rows=rows)
    targets = near.to(torch.float32) * weight
    n = near.shape[0]
    targets[torch.arange(n), torch.arange(offset, offset + n)] = 1.0
    return targets


def mutual_info_bound(loss: float | torch.Tensor, n: int) -> float:
    """InfoNCE lower bound on mutual information, I(X;Y) ≥ log N − L (ch05 §5.6), in nats."""
    return math.log(n) - float(loss)
