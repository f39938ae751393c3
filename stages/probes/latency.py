"""Check 1 — latency robustness (ch07 §7.10 item 1, gotcha 2).

The camera is shifted against the proprio clock by ±50–100 ms (the window of frames ends δ earlier,
δ > 0 = a late camera); state and instruction stay at t. At every shift, including none, the phase
of the policy's executed command (first chunk step) is measured against the recorded teacher action
by cross-correlation pooled over the held-out episodes. A latency-robust policy keeps its output in
phase with the teacher whatever the camera's misalignment; one that learned a systematic lag shows
it already at δ = 0.

    value = max over δ ∈ {0} ∪ shifts of |lag(â_δ, a_teacher)|  in ms   (gate: < threshold)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.metrics import phase_lag

SPEC = CheckSpec(
    id=1, name="latency_robustness", title="Latency robustness", comparator="<", unit="ms",
    what="phase of the policy output against the teacher with the camera shifted ±50–100 ms",
    suggestion="Add time-misalignment augmentation to pretraining and a phase penalty when fitting; "
               "re-check stream offsets with `vla align-time` (ch07 gotcha 2, ch05 §5.7).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 50.0  # ms: one frame at 20 fps; ch05 §5.7 keeps residual misalignment < 80 ms (P50)
    shifts_ms: tuple[float, ...] = (-100.0, -50.0, 50.0, 100.0)  # camera shifts against proprio
    max_lag_ms: float = 300.0  # cross-correlation search window
    min_correlation: float = 0.3  # below this peak ρ the output does not follow the teacher: no phase to read

    def problems(self) -> list[tuple[str, str]]:
        out = [("shifts_ms", "give at least one non-zero shift")] if not any(self.shifts_ms) else []
        return out + ([("max_lag_ms", f"{self.max_lag_ms} must be > 0")] if self.max_lag_ms <= 0 else [])


def shift_frames(params: Params, fps: float) -> dict[float, int]:
    """Requested shift (ms) -> whole frames (at least one, keeping its sign)."""
    out = {}
    for ms in params.shifts_ms:
        frames = int(round(ms * fps / 1000.0))
        out[ms] = frames if frames != 0 else int(np.sign(ms))
    return out


def prepare(ctx, params: Params) -> None:
    ctx.shifts |= set(shift_frames(params, ctx.fps).values())


def measure(ctx, params: Params) -> Measurement:
    episodes = ctx.data.heldout
    rows = []
    shifts = {0.0: 0, **shift_frames(params, ctx.fps)}
    for requested, frames in sorted(shifts.items()):
        pairs = [(ctx.first_step(ep, frames), ctx.data.arrays(ep).action) for ep in episodes]
        lag = phase_lag(pairs, ctx.fps, params.max_lag_ms / 1000.0)
        rows.append({"shift_ms": requested, "shift_frames": frames, "applied_ms": 1000.0 * frames / ctx.fps,
                     "lag_ms": 1000.0 * lag["lag_s"], "rho": lag["rho"], "at_edge": lag["at_edge"]})
    details = {"per_shift": rows, "fps": ctx.fps, "max_lag_ms": params.max_lag_ms, "min_correlation": params.min_correlation}
    samples = int(sum(ep.length for ep in episodes))
    weak = [r for r in rows if not np.isfinite(r["rho"]) or r["rho"] < params.min_correlation]
    if weak:
        r = weak[0]
        return Measurement(None, details, len(episodes), samples,
                           reason=f"the output does not follow the teacher at shift {r['shift_ms']:+g} ms "
                                  f"(peak correlation {r['rho']:.3g} < {params.min_correlation}): its phase is undefined")
    return Measurement(float(max(abs(r["lag_ms"]) for r in rows)), details, len(episodes), samples)


CHECK = Check(SPEC, Params, measure, prepare)
