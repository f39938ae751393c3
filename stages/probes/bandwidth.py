"""Check 7 — low-bandwidth executability (ch07 §7.10 item 7, gotcha 8; ch05 §5.4).

An actuator follows only what lies inside its bandwidth. The policy's executed command on each
held-out episode (first chunk step at every frame, robot units) is passed through a zero-phase
Butterworth low-pass at the actuator bandwidth (`stages.signal.band_limit`); what the actuator
cannot follow is the residual:

    e_ep  = ‖â − LP(â)‖₂ / ‖â − mean(â)‖₂
    value = Σ_ep T_ep · e_ep / Σ_ep T_ep      (gate: < threshold)

The bandwidth defaults to 0.5 × the Nyquist frequency of the dataset rate, fps / 4 (ch05 §5.4: the
action's Nyquist at 0.3–0.5 of the control loop, upper end). The teacher's own error is reported beside
it (the demo expert: 0.14 at 5 Hz for 20 fps, so the default gate leaves it a margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.metrics import band_limit_error
from stages.probes.smoothness import MIN_FRAMES, control_bandwidth

SPEC = CheckSpec(
    id=7, name="low_bandwidth_executability", title="Low-bandwidth executability", comparator="<", unit="relative error",
    what="share of the policy output an actuator of limited bandwidth cannot follow",
    suggestion="Raise λ_dyn and the spectral prior (w_k ∝ (1+k)^−α) to keep actions low-frequency, and keep the "
               "action Nyquist at 0.3–0.5 of the control loop (ch05 §5.4, ch07 §7.3, gotcha 8).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.2  # at most 20 % of the command's variation lies beyond the actuator bandwidth
    bandwidth_hz: float | None = None  # None: 0.5 × Nyquist of the dataset rate = fps / 4 (ch05 §5.4)
    order: int = 2  # Butterworth order (applied forward and backward)

    def problems(self) -> list[tuple[str, str]]:
        out = [("order", f"{self.order} must be 1..8")] if not 1 <= self.order <= 8 else []
        return out + ([("bandwidth_hz", "must be > 0")] if self.bandwidth_hz is not None and self.bandwidth_hz <= 0 else [])


def _weighted(errors: list[float], lengths: list[int]) -> float | None:
    ok = [(e, n) for e, n in zip(errors, lengths) if np.isfinite(e)]
    if not ok:
        return None
    return float(sum(e * n for e, n in ok) / sum(n for _, n in ok))


def measure(ctx, params: Params) -> Measurement:
    fps = ctx.fps
    cutoff = control_bandwidth(params.bandwidth_hz, fps, check=SPEC.name)
    used = [ep for ep in ctx.data.heldout if ep.length >= MIN_FRAMES]
    student = [band_limit_error(ctx.student_actions(ep), fps, cutoff, order=params.order) for ep in used]
    teacher = [band_limit_error(ctx.data.arrays(ep).action_raw, fps, cutoff, order=params.order) for ep in used]
    lengths = [ep.length for ep in used]
    value, teacher_value = _weighted(student, lengths), _weighted(teacher, lengths)
    details = {"bandwidth_hz": cutoff, "fps": fps, "order": params.order, "teacher_error": teacher_value}
    samples = int(sum(lengths))
    if value is None:
        return Measurement(None, details, len(used), samples,
                           reason="the policy output is constant on every held-out episode (or none has enough frames)")
    return Measurement(value, details, len(used), samples)


CHECK = Check(SPEC, Params, measure)
