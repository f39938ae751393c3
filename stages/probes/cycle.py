"""Check 4 — cycle consistency V→L→A vs V→A (ch07 §7.10 item 4, ch05 §5.4 language as the bridge).

For each held-out sample frame, the two routes from its vision z to the action space are compared,
scale-free (so shrinking every embedding cannot make the distance small):

    d = ‖g_LA(g_VL(z_V)) − g_VA(z_V)‖₁ / (½ (‖g_LA(g_VL(z_V))‖₁ + ‖g_VA(z_V)‖₁))  ∈ [0, 2]
    value = mean d over the samples   (gate: < threshold)

(`stages.objectives.cycle(..., scale_free=True)`; two unrelated Gaussian vectors give ≈ 1.41.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.objectives import cycle
from stages.probes.check import Check, CheckSpec, Measurement

SPEC = CheckSpec(
    id=4, name="cycle_consistency", title="Cycle consistency", comparator="<", unit="scale-free L1",
    what="scale-free L1 distance between V→L→A and V→A through the cycle heads",
    suggestion="Raise λ_cycle (ch05 §5.6 starts at 0.2) and keep language as the bridge between vision and "
               "action; align pairs first, then triples (ch05 §5.1, §5.4).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.25  # routes agree within a quarter of their L1 size (unrelated vectors: ≈ 1.41)


def measure(ctx, params: Params) -> Measurement:
    samples = ctx.samples()
    via, direct = ctx.runner.cycle(samples.z_v)
    v, d = torch.from_numpy(via).double(), torch.from_numpy(direct).double()
    value = float(cycle(v, d, scale_free=True))
    details = {"l1_mean": float(cycle(v, d)), "via_language_l1": float(np.abs(via).sum(1).mean()),
               "direct_l1": float(np.abs(direct).sum(1).mean())}
    return Measurement(value, details, len(samples.episodes), len(samples))


CHECK = Check(SPEC, Params, measure)
