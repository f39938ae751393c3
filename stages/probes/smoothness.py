"""Check 2 — spectral smoothness (ch07 §7.10 item 2, gotcha 3).

On every held-out episode the executed command of the policy (first chunk step at each frame, robot
units) and the recorded teacher command are compared by two measures:

    jerk ratio = Σ_ep ∫‖jerk(â)‖dt / Σ_ep ∫‖jerk(a)‖dt      (the action is a velocity command: jerk = d²a/dt²)
    HF ratio   = mean_ep hf(â) / max(mean_ep hf(a), hf_floor),   hf = share of Welch power above the control bandwidth

    value = max(jerk ratio, HF ratio)   (gate: ≤ 1.2 × the teacher, i.e. threshold 1.2)

The control bandwidth defaults to 0.5 × the Nyquist frequency of the dataset rate, i.e. fps / 4 (ch05 §5.4
rule of thumb: the action's Nyquist at 0.3–0.5 of the control loop; the upper end, since the demo expert's
own commands keep 2.4 % of their power above 5 Hz at 20 fps but 10 % above 3 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.metrics import smoothness

SPEC = CheckSpec(
    id=2, name="spectral_smoothness", title="Spectral smoothness", comparator="<=", unit="× teacher",
    what="∫|jerk| and high-frequency energy share of the policy output relative to the teacher's",
    suggestion="Raise λ_dyn (dynamics hinge on acceleration/jerk) and the spectral prior weight, and distil "
               "from QP-projected teacher trajectories (ch07 §7.9, gotcha 3; ch05 gotcha 5).",
)

MIN_FRAMES = 8  # Welch and third differences need a few samples


@dataclass(frozen=True)
class Params:
    threshold: float = 1.2  # ch07 §7.10 item 2: ≤ 1.2 × the teacher's upper bound
    bandwidth_hz: float | None = None  # None: 0.5 × Nyquist of the dataset rate = fps / 4 (ch05 §5.4)
    hf_floor: float = 1e-3  # a teacher with (almost) no power above the band compares with 0.1 % of power, not with 0

    def problems(self) -> list[tuple[str, str]]:
        out = [("hf_floor", "must be > 0")] if self.hf_floor <= 0 else []
        return out + ([("bandwidth_hz", "must be > 0")] if self.bandwidth_hz is not None and self.bandwidth_hz <= 0 else [])


def control_bandwidth(bandwidth_hz: float | None, fps: float, *, check: str = "spectral_smoothness") -> float:
    """The actuator / control bandwidth in Hz: given, or fps / 4; it must lie below the Nyquist frequency."""
    from stages.errors import BadInput

    band = float(bandwidth_hz) if bandwidth_hz is not None else 0.5 * fps / 2.0
    if not 0 < band < fps / 2:
        raise BadInput(f"--thresholds: field `{check}.bandwidth_hz` is {band:g} Hz",
                       caused_by=f"it must lie in (0, {fps / 2:g}) Hz, below the Nyquist frequency of the {fps:g} fps dataset")
    return band


def measure(ctx, params: Params) -> Measurement:
    fps = ctx.fps
    cutoff = control_bandwidth(params.bandwidth_hz, fps)
    student, teacher = [], []
    used = [ep for ep in ctx.data.heldout if ep.length >= MIN_FRAMES]
    for ep in used:
        student.append(smoothness(ctx.student_actions(ep), fps, cutoff))
        teacher.append(smoothness(ctx.data.arrays(ep).action_raw, fps, cutoff))
    details = {"bandwidth_hz": cutoff, "fps": fps}
    if not used:
        return Measurement(None, details, 0, 0, reason=f"no held-out episode has {MIN_FRAMES} frames or more")
    jerk_s, jerk_t = sum(s["jerk_integral"] for s in student), sum(t["jerk_integral"] for t in teacher)
    hf_s, hf_t = float(np.mean([s["hf_ratio"] for s in student])), float(np.mean([t["hf_ratio"] for t in teacher]))
    details.update({"student": {"jerk_integral": jerk_s, "hf_ratio": hf_s}, "teacher": {"jerk_integral": jerk_t, "hf_ratio": hf_t}})
    samples = int(sum(ep.length for ep in used))
    if jerk_t <= 0:
        return Measurement(None, details, len(used), samples, reason="the teacher's commands have no jerk to compare with")
    hf_ratio = hf_s / max(hf_t, params.hf_floor)
    details.update({"jerk_ratio": jerk_s / jerk_t, "hf_ratio": hf_ratio})
    return Measurement(float(max(jerk_s / jerk_t, hf_ratio)), details, len(used), samples)


CHECK = Check(SPEC, Params, measure)
