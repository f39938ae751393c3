"""Action priors: spectral prior, dynamics hinge and jerk clipping (ch07 §7.3).

Trajectories are [B, H, D] (or [H, D] for `finite_difference` / `jerk_clip`) with time on the
second-to-last axis. Limits (a_max, j_max, κ_max) come from dataset statistics computed by the
caller (e.g. a high quantile of |Δ²a|/dt² over the training split); this module only applies them.
"""

from __future__ import annotations

import torch

from stages.objectives.weighting import check_weight, combine_weight, weighted_mean

_SIGNALS = ("position", "velocity")


def spectral_weights(n_bins: int, alpha: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """w_k ∝ (1 + k)^(−α), k = 0..n_bins−1, normalised to sum 1 (ch07 §7.3).

    Known answer: n_bins = 3, α = 1 → [1, 1/2, 1/3] / (11/6) = [6/11, 3/11, 2/11].
    """
    k = torch.arange(n_bins, dtype=dtype, device=device)
    w = (1.0 + k).pow(-alpha)
    return w / w.sum()


def spectral_prior(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 1.0,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_k w_k (|X[k]| − |X̂[k]|)², w_k ∝ (1 + k)^(−α) (ch07 §7.3 L_spec).

    pred, target: [B, H, Da] action chunks; the DFT runs over H (rfft, "ortho" normalisation so the
    value does not grow with H), giving H//2 + 1 bins. Low frequencies weigh most, so the prior
    pulls the low-frequency shape to the data and leaves high-frequency jitter cheap to drop.
    Invalid steps (`valid` False) are zeroed in both signals before the transform. Per sample: the
    weighted sum over bins, averaged over Da; then the weighted batch mean.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"spectral_prior expects two [B, H, Da] tensors, got {list(pred.shape)}, {list(target.shape)}")
    batch = pred.shape[0]
    check_weight(weight, batch)
    has_any = torch.ones(batch, dtype=torch.bool, device=pred.device)
    if valid is not None:
        if valid.shape != pred.shape[:2]:
            raise ValueError(f"spectral_prior: `valid` must be {list(pred.shape[:2])}, got {list(valid.shape)}")
        m = valid.to(pred.dtype).unsqueeze(-1)  # [B, H, 1]
        pred, target = pred * m, target * m
        has_any = valid.any(dim=1)
    mag_hat = torch.fft.rfft(pred, dim=1, norm="ortho").abs()  # [B, K, Da]
    mag = torch.fft.rfft(target, dim=1, norm="ortho").abs()
    w = spectral_weights(mag.shape[1], alpha, dtype=pred.dtype, device=pred.device)  # [K]
    per_sample = ((mag - mag_hat).pow(2) * w[None, :, None]).sum(dim=1).mean(dim=-1)  # [B]
    return weighted_mean(per_sample, combine_weight(weight, has_any))


def finite_difference(x: torch.Tensor, *, dt: float, order: int) -> torch.Tensor:
    """Δⁿx / dtⁿ along the time axis (−2): [..., H, D] → [..., H − n, D] (forward differences)."""
    return torch.diff(x, n=order, dim=-2) / dt**order if order > 0 else x


def _valid_diff(valid: torch.Tensor, order: int) -> torch.Tensor:
    """A difference of order n at step h is valid only if steps h..h+n all are: [B, H] → [B, H − n]."""
    out = valid
    for _ in range(order):
        out = out[:, :-1] & out[:, 1:]
    return out


def _hinge_mean(magnitude: torch.Tensor, limit, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over valid elements of [|x| − limit]_+ : ([B], has_any [B])."""
    excess = (magnitude - limit).clamp_min(0.0)  # [B, H', E]
    m = valid.to(excess.dtype).unsqueeze(-1)
    count = m.sum(dim=(1, 2)) * excess.shape[-1]
    return (excess * m).sum(dim=(1, 2)) / count.clamp_min(1.0), count > 0


def curvature(velocity: torch.Tensor, acceleration: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """κ = √(|v|²|a|² − (v·a)²) / |v|³ for curves in any dimension ≥ 2: [..., D] → [...]."""
    vv = velocity.pow(2).sum(-1)
    aa = acceleration.pow(2).sum(-1)
    va = (velocity * acceleration).sum(-1)
    cross = (vv * aa - va.pow(2)).clamp_min(0.0)
    return (cross + eps).sqrt() / (vv.pow(1.5) + eps)


def dynamics_hinge(
    traj: torch.Tensor,
    *,
    dt: float,
    acc_max: torch.Tensor | float,
    jerk_max: torch.Tensor | float,
    curvature_max: float | None = None,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
    signal: str = "position",
    min_speed: float = 1e-3,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ_κ Σ[|κ| − κ_max]_+ + λ_a Σ[|a| − a_max]_+ + λ_j Σ[|j| − j_max]_+ (ch07 §7.3 L_dyn).

    traj: [B, H, D]; `signal` says what it holds: "position" (a = Δ²x/dt², j = Δ³x/dt³) or
    "velocity" (a = Δv/dt, j = Δ²v/dt²). acc_max / jerk_max: scalars or per-dimension [D] limits;
    the hinge is per dimension. curvature_max: optional limit on κ (needs D ≥ 2), scored only where
    the speed exceeds `min_speed` (κ of a resting arm is undefined). lambdas = (λ_κ, λ_a, λ_j).
    Each Σ is taken as a mean over the valid elements so the value does not grow with H.
    """
    if traj.dim() != 3:
        raise ValueError(f"dynamics_hinge expects [B, H, D], got {list(traj.shape)}")
    if signal not in _SIGNALS:
        raise ValueError(f"signal must be one of {_SIGNALS}, got {signal!r}")
    batch, horizon, _ = traj.shape
    check_weight(weight, batch)
    vel_order = 1 if signal == "position" else 0  # derivative order that gives velocity
    acc_order, jerk_order = vel_order + 1, vel_order + 2
    if horizon <= jerk_order:
        raise ValueError(f"dynamics_hinge needs more than {jerk_order} steps for jerk, got {horizon}")
    valid = torch.ones(batch, horizon, dtype=torch.bool, device=traj.device) if valid is None else valid
    lam_k, lam_a, lam_j = lambdas

    acc = finite_difference(traj, dt=dt, order=acc_order)  # [B, H - acc_order, D]
    jerk = finite_difference(traj, dt=dt, order=jerk_order)  # [B, H - jerk_order, D]
    acc_valid = _valid_diff(valid, acc_order)
    acc_term, acc_any = _hinge_mean(acc.abs(), acc_max, acc_valid)
    jerk_term, jerk_any = _hinge_mean(jerk.abs(), jerk_max, _valid_diff(valid, jerk_order))
    per_sample = lam_a * acc_term + lam_j * jerk_term
    has_any = acc_any | jerk_any
    if curvature_max is not None and lam_k:
        n = acc.shape[1]
        vel = finite_difference(traj, dt=dt, order=vel_order)[:, :n]  # [B, n, D], aligned with acc
        kappa = curvature(vel, acc)  # [B, n]
        k_valid = acc_valid & (vel.norm(dim=-1) > min_speed)
        k_term, _ = _hinge_mean(kappa.unsqueeze(-1), curvature_max, k_valid)
        per_sample = per_sample + lam_k * k_term
    return weighted_mean(per_sample, combine_weight(weight, has_any))


def jerk_clip(x: torch.Tensor, *, dt: float, jerk_max: torch.Tensor | float, signal: str = "position") -> torch.Tensor:
    """Clip a trajectory's jerk to ±jerk_max and re-integrate (ch07 §7.3 rule of thumb, §7.7 cleaning).

    x: [..., H, D]. The first (derivative order) samples are kept, the n-th differences are clamped
    to ±jerk_max·dtⁿ and summed back up, so the output's jerk never exceeds the limit and a
    trajectory already inside the limit comes back unchanged. Clipping a spike shifts what follows
    (the integrated difference is not recovered): use it on demonstrations, not on ground truth.
    """
    if signal not in _SIGNALS:
        raise ValueError(f"signal must be one of {_SIGNALS}, got {signal!r}")
    order = 3 if signal == "position" else 2
    if x.shape[-2] <= order:
        return x.clone()
    limit = torch.as_tensor(jerk_max, dtype=x.dtype, device=x.device) * dt**order
    diffs = [x]
    for _ in range(order):
        diffs.append(torch.diff(diffs[-1], dim=-2))
    level = torch.maximum(torch.minimum(diffs[order], limit), -limit)  # clipped n-th differences
    for k in range(order - 1, -1, -1):  # integrate back: keep each level's first sample
        first = diffs[k][..., :1, :]
        level = torch.cat([first, first + torch.cumsum(level, dim=-2)], dim=-2)
    return level
