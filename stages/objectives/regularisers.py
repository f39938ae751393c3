"""Teacher distillation (ch07 §7.3, §7.9) and the decollapse regulariser (ch07 §7.9)."""

from __future__ import annotations

import torch

from stages.objectives.weighting import check_weight, combine_weight, masked_sample_mean, weighted_mean

_DIRECTIONS = ("teacher_student", "student_teacher")


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²)) = log(σ_q/σ_p) + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − ½."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))  # σ_p² / σ_q²
    mahal = (mean_p - mean_q).pow(2) * torch.exp(-2.0 * log_std_q)
    return (log_std_q - log_std_p) + 0.5 * (var_ratio + mahal) - 0.5


def distillation_kl(
    student_mean: torch.Tensor,
    student_log_std: torch.Tensor,
    teacher_mean: torch.Tensor,
    teacher_log_std: torch.Tensor | float,
    *,
    direction: str = "teacher_student",
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    detach_teacher: bool = True,
) -> torch.Tensor:
    """Closed-form KL between diagonal Gaussian action chunks of a teacher and the student
    (ch07 §7.3 teacher–student distillation, §7.9 EMA / QP-projected teacher; probe item 8).

    All tensors [B, H, Da]; teacher_log_std may be a float (a deterministic teacher, e.g. a
    QP-projected trajectory, given a fixed spread). direction: "teacher_student" = KL(teacher ‖
    student) (mode-covering, the usual distillation loss) or "student_teacher" = KL(student ‖
    teacher) (mode-seeking; what the probe measures). Per sample: the sum over Da (the KL of the
    independent joint), averaged over valid steps; then the weighted batch mean. The teacher is
    detached unless `detach_teacher=False`.
    Known answer: μ_s = 0, σ_s = 1, μ_t = 1, σ_t = 2 → KL(s‖t) = log 2 + (1 + 1)/8 − ½ ≈ 0.4431.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    if student_mean.dim() != 3 or student_log_std.shape != student_mean.shape or teacher_mean.shape != student_mean.shape:
        raise ValueError(
            f"distillation_kl expects [B, H, Da] tensors of one shape, got {list(student_mean.shape)}, "
            f"{list(student_log_std.shape)}, {list(teacher_mean.shape)}"
        )
    check_weight(weight, student_mean.shape[0])
    t_log_std = torch.as_tensor(teacher_log_std, dtype=student_mean.dtype, device=student_mean.device)
    t_log_std = t_log_std.expand_as(teacher_mean)
    t_mean = teacher_mean
    if detach_teacher:
        t_mean, t_log_std = t_mean.detach(), t_log_std.detach()
    if direction == "teacher_student":
        kl = gaussian_kl(t_mean, t_log_std, student_mean, student_log_std)
    else:
        kl = gaussian_kl(student_mean, student_log_std, t_mean, t_log_std)
    per_step = kl.sum(dim=-1)  # [B, H]
    per_sample, has_any = masked_sample_mean(per_step, valid)
    return weighted_mean(per_sample, combine_weight(weight, has_any))


def decollapse(
    z: torch.Tensor,
    *,
    std_target: float = 1.0,
    var_weight: float = 1.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Variance/covariance regulariser against collapse of the aligned space (ch07 §7.9, VICReg-style).

    z: [B, D] embeddings. var = mean_d [std_target − √(Var z_d + eps)]_+ keeps every dimension
    spread; cov = Σ_{d≠e} C_de² / D decorrelates dimensions. Statistics are weighted by `weight`
    (0 = masked) with the unbiased reliability-weight normaliser Σw − Σw²/Σw (B − 1 for all ones).
    Returns var_weight · var + cov_weight · cov; 0 with fewer than two effective samples.
    """
    if z.dim() != 2:
        raise ValueError(f"decollapse expects [B, D], got {list(z.shape)}")
    batch, dim = z.shape
    check_weight(weight, batch)
    w = torch.ones(batch, dtype=z.dtype, device=z.device) if weight is None else weight.to(z.dtype)
    v1, v2 = w.sum(), w.pow(2).sum()
    norm = v1 - v2 / v1.clamp_min(1e-12)
    enough = (norm > 1e-12).to(z.dtype)  # no host sync: a masked-out batch multiplies to 0
    mean = (w[:, None] * z).sum(dim=0) / v1.clamp_min(1e-12)  # [D]
    centred = z - mean
    cov = (centred * w[:, None]).T @ centred / norm.clamp_min(1e-12)  # [D, D]
    std = (torch.diagonal(cov) + eps).sqrt()
    var_term = (std_target - std).clamp_min(0.0).mean()
    off = cov - torch.diag(torch.diagonal(cov))
    cov_term = off.pow(2).sum() / dim
    return enough * (var_weight * var_term + cov_weight * cov_term)
