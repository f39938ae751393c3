"""Check 6 — randomisation stress: light, noise, occlusion (ch07 §7.10 item 6, §7.9, gotcha 4).

On the held-out sample frames, vision→language retrieval (task-level relevance: an instruction of
the same task is a hit) is measured on clean frames and under three perturbations of the whole
history window, each drawn from the probe's seed:

    light      pixel values × `light_gain` (a dim scene)
    noise      + N(0, `noise_std`²) per pixel and channel, clipped to [0, 255]
    occlusion  a mid-grey square of side `occlusion_side` × image size at a random place per sample

Recall is taken above chance, skill = (R@k − chance) / (1 − chance), so a model at chance level
cannot look "robust". The drop under a perturbation is (skill_clean − skill_p) / skill_clean.

    value = max over the perturbations of the drop   (gate: < 0.20)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.metrics import chance_recall, cosine_similarity, retrieval_metrics, task_relevance

SPEC = CheckSpec(
    id=6, name="randomisation_stress", title="Randomisation stress", comparator="<", unit="recall drop",
    what="relative drop of V→L retrieval skill under light / noise / occlusion",
    suggestion="Train with light/noise/occlusion augmentation and modality dropout, mask noisy visual segments, "
               "and check token buckets for OOD collapse (ch07 §7.9, gotcha 4).",
)

PERTURBATIONS = ("light", "noise", "occlusion")


@dataclass(frozen=True)
class Params:
    threshold: float = 0.20  # ch07 §7.10 item 6: recall drop < 20 %
    k: int = 1  # R@k of V→L retrieval
    light_gain: float = 0.5
    noise_std: float = 20.0  # grey levels
    occlusion_side: float = 0.4  # square side as a share of the image side (16 % of the area)
    min_skill: float = 0.05  # clean skill below this: nothing to stress

    def problems(self) -> list[tuple[str, str]]:
        checks = [("k", self.k >= 1), ("light_gain", self.light_gain >= 0), ("noise_std", self.noise_std >= 0),
                  ("occlusion_side", 0 < self.occlusion_side <= 1)]
        return [(name, "out of range") for name, ok in checks if not ok]


def perturb(frames: torch.Tensor, kind: str, params: Params, rng: np.random.Generator) -> torch.Tensor:
    """uint8 windows [B, T, 3, H, W] -> perturbed copy (the same perturbation on every frame of a window)."""
    x = frames.numpy().astype(np.float32)
    b, _, _, h, w = x.shape
    if kind == "light":
        x = x * params.light_gain
    elif kind == "noise":
        x = x + rng.normal(0.0, params.noise_std, size=x.shape).astype(np.float32)
    elif kind == "occlusion":
        side = max(1, int(round(params.occlusion_side * min(h, w))))
        top = rng.integers(0, h - side + 1, size=b)
        left = rng.integers(0, w - side + 1, size=b)
        ys, xs = np.arange(h), np.arange(w)
        inside = ((ys[None, :, None] >= top[:, None, None]) & (ys[None, :, None] < top[:, None, None] + side)
                  & (xs[None, None, :] >= left[:, None, None]) & (xs[None, None, :] < left[:, None, None] + side))  # [B, H, W]
        x = np.where(inside[:, None, None], 128.0, x)
    else:
        raise ValueError(f"unknown perturbation {kind!r}")
    return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def skill(z_v: np.ndarray, z_l: np.ndarray, relevant: np.ndarray, k: int) -> tuple[float, float]:
    """(R@k, skill above chance) of V→L retrieval."""
    r = retrieval_metrics(cosine_similarity(z_v, z_l), relevant, ks=(k,))[f"R@{k}"]
    chance = chance_recall(relevant, k)
    return r, (r - chance) / (1 - chance) if chance < 1 else 0.0


def measure(ctx, params: Params) -> Measurement:
    samples = ctx.samples()
    relevant = task_relevance(samples.task, samples.task)
    frames = ctx.sample_windows(samples)
    rng = ctx.rng(6)
    recall, base = skill(samples.z_v, samples.z_l, relevant, params.k)
    rows = {"clean": {"recall": recall, "skill": base}}
    for kind in PERTURBATIONS:
        z_v = ctx.runner.vision(perturb(frames, kind, params, rng)).z.cpu().numpy()
        r, s = skill(z_v, samples.z_l, relevant, params.k)
        rows[kind] = {"recall": r, "skill": s, "drop": (base - s) / base if base > 0 else None}
    details = {"k": params.k, "chance": chance_recall(relevant, params.k), "per_perturbation": rows}
    n_ep, n = len(samples.episodes), len(samples)
    if base < params.min_skill:
        return Measurement(None, details, n_ep, n,
                           reason=f"clean V→L retrieval is at chance level (skill {base:.3f} < {params.min_skill}): nothing to stress")
    return Measurement(float(max(rows[k]["drop"] for k in PERTURBATIONS)), details, n_ep, n)


CHECK = Check(SPEC, Params, measure)
