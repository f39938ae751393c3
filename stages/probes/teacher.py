"""Check 8 — teacher consistency KL(student ‖ QP-projected teacher) (ch07 §7.10 item 8, §7.9).

The recorded actions are the teacher: on constraint episodes they are the expert projected onto the
instruction's constraint set (the QP-projected teacher of ch07 §7.9), elsewhere the expert itself
(the projection is then the identity). The teacher is deterministic, so it is given a fixed spread
σ_t in normalised action units. For every held-out frame the policy's Gaussian chunk is compared
with the teacher chunk starting there (`stages.objectives.distillation_kl`, direction
student_teacher):

    KL_step = Σ_d [ log(σ_t/σ_s) + (σ_s² + (μ_s − a_t)²) / (2σ_t²) − ½ ]   over the Da action dims
    value   = mean over frames of (mean over the valid chunk steps of KL_step) / Da   nats per dim

    gate: < threshold (0.5 nats per dimension ≈ the student's mean within one σ_t of the teacher with
    a matching spread)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from stages.objectives import distillation_kl
from stages.probes.check import Check, CheckSpec, Measurement

SPEC = CheckSpec(
    id=8, name="teacher_consistency", title="Teacher consistency", comparator="<", unit="nats/dim",
    what="KL(student ‖ QP-projected teacher) per action dimension and step",
    suggestion="Distil from the QP-projected teacher and raise λ_KD / λ_dyn; if it converges slowly, soften the "
               "teacher (temperature / noise) rather than drop it (ch07 §7.9 rule of thumb, ch05 gotcha 9).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.5  # nats per action dimension and step
    teacher_std: float = 0.5  # σ_t of the deterministic teacher, normalised action units

    def problems(self) -> list[tuple[str, str]]:
        return [("teacher_std", f"{self.teacher_std} must be > 0")] if self.teacher_std <= 0 else []


def _kl(ctx, episodes, params: Params) -> tuple[float | None, int]:
    total, frames = 0.0, 0
    for ep in episodes:
        out = ctx.outputs(ep)
        has = out.teacher_valid.any(axis=1)  # frames with at least one valid teacher step
        if not has.any():
            continue
        mean, log_std, teacher = (torch.from_numpy(np.ascontiguousarray(a[has])).double() for a in (out.mean, out.log_std, out.teacher))
        kl = distillation_kl(mean, log_std, teacher, math.log(params.teacher_std), direction="student_teacher",
                             valid=torch.from_numpy(out.teacher_valid[has]))
        n = int(has.sum())
        total += float(kl) * n / out.mean.shape[-1]
        frames += n
    return (total / frames if frames else None), frames


def measure(ctx, params: Params) -> Measurement:
    episodes = ctx.data.heldout
    value, frames = _kl(ctx, episodes, params)
    constrained = [ep for ep in episodes if ep.meta.get("constraints")]
    sub, sub_frames = _kl(ctx, constrained, params) if constrained else (None, 0)
    details = {"teacher_std": params.teacher_std, "constraint_episodes": len(constrained),
               "constraint_value": sub, "constraint_frames": sub_frames}
    if value is None:
        return Measurement(None, details, len(episodes), 0, reason="no held-out frame has a valid teacher action")
    return Measurement(value, details, len(episodes), frames)


CHECK = Check(SPEC, Params, measure)
