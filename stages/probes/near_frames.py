"""Check 9 — near-frame pseudo-negatives: InfoNCE degradation (ch07 §7.10 item 9, gotcha 1).

Anchors are n held-out frames at least 4 × `near_max_frames` apart. Two batches of 2n vision–action
pairs (vision window ↔ the action chunk starting at the same frame; near frames share their
instruction, so only the action tells them apart) are scored with the model's InfoNCE
(`stages.objectives.info_nce`, the model's logit scale):

    far   = anchors + frames half-way between anchors (≥ 2 × near_max frames from any anchor)
    near  = anchors + one near frame of each anchor (1 ≤ |Δ| ≤ near_max frames, same episode)

With the same number of candidates, the InfoNCE bound I ≥ log 2n − L (ch05 §5.6) is comparable:

    value = (I_far − I_near) / I_far     (gate: < 0.10; undefined when I_far ≤ min_mi)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.context import chunks, windows
from stages.probes.metrics import info_nce_bound
from stages.probes.outputs import spread

SPEC = CheckSpec(
    id=9, name="near_frame_negatives", title="Near-frame pseudo-negatives", comparator="<", unit="MI drop",
    what="relative loss of the V–A InfoNCE bound when near frames stand in as negatives",
    suggestion="Treat near frames as soft/half negatives, suppress neighbours, anneal τ, and draw no negatives "
               "inside one semantic cluster (ch07 gotcha 1, §7.2 rule of thumb).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.10  # ch07 §7.10 item 9
    near_max_frames: int = 3  # the loader's near-frame radius (LoaderConfig.near_max)
    min_mi: float = 0.05  # nats: below this the far batch shows no alignment to degrade

    def problems(self) -> list[tuple[str, str]]:
        return [("near_max_frames", f"{self.near_max_frames} must be ≥ 1")] if self.near_max_frames < 1 else []


def _pairs(ctx, episodes, which: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vision z and action z [n, Z] of (episode, frame) rows, in row order."""
    r = ctx.runner
    z_v = np.zeros((len(frame), 0))
    z_a = np.zeros((len(frame), 0))
    for k in np.unique(which):
        pos = np.flatnonzero(which == k)
        arr = ctx.data.arrays(episodes[k])
        v = r.vision(windows(arr.frames, frame[pos], r.history, r.stride)).z.cpu().numpy()
        act, valid = chunks(arr.action, arr.valid, frame[pos], r.horizon)
        a = r.action_z(act, arr.state[frame[pos]], valid)
        if z_v.shape[1] == 0:
            z_v, z_a = np.zeros((len(frame), v.shape[1])), np.zeros((len(frame), a.shape[1]))
        z_v[pos], z_a[pos] = v, a
    return z_v, z_a


def measure(ctx, params: Params) -> Measurement:
    episodes = ctx.data.heldout
    gap = 4 * params.near_max_frames
    total = sum(ep.length for ep in episodes)
    n = min(ctx.config.max_samples // 2, total // gap)
    if n < 2:
        return Measurement(None, {}, len(episodes), 0, skipped=True,
                           reason=f"held-out episodes are too short for anchors {gap} frames apart")
    which, frame = spread(episodes, n)
    lengths = np.array([ep.length for ep in episodes])[which]
    rng = ctx.rng(9)
    delta = rng.integers(1, params.near_max_frames + 1, size=len(frame)) * rng.choice([-1, 1], size=len(frame))
    near = frame + delta
    near = np.where((near < 0) | (near >= lengths), frame - delta, near)  # flip Δ at an episode edge
    near = np.clip(near, 0, lengths - 1)
    half = max(gap // 2, 2 * params.near_max_frames)
    far = np.where(frame + half < lengths, frame + half, frame - half)
    far_ok = (far >= 0) & (far < lengths) & (near != frame)
    which, frame, near, far = which[far_ok], frame[far_ok], near[far_ok], far[far_ok]
    if len(frame) < 2:
        return Measurement(None, {}, len(episodes), 0, skipped=True, reason="held-out episodes are too short for near/far frames")
    zv_a, za_a = _pairs(ctx, episodes, which, frame)
    zv_n, za_n = _pairs(ctx, episodes, which, near)
    zv_f, za_f = _pairs(ctx, episodes, which, far)
    scale = ctx.runner.logit_scale
    far_b = info_nce_bound(np.concatenate([zv_a, zv_f]), np.concatenate([za_a, za_f]), scale)
    near_b = info_nce_bound(np.concatenate([zv_a, zv_n]), np.concatenate([za_a, za_n]), scale)
    details = {"anchors": int(len(frame)), "near_max_frames": params.near_max_frames, "far_offset_frames": int(half),
               "far": far_b, "near": near_b}
    n_ep = len(np.unique(which))
    if far_b["mi_bound"] <= params.min_mi:
        return Measurement(None, details, n_ep, 2 * len(frame),
                           reason=f"V–A InfoNCE shows no alignment on far frames (bound {far_b['mi_bound']:.3f} nats ≤ {params.min_mi})")
    value = (far_b["mi_bound"] - near_b["mi_bound"]) / far_b["mi_bound"]
    return Measurement(float(value), details, n_ep, 3 * len(frame))


CHECK = Check(SPEC, Params, measure)
