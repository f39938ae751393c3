"""Check 3 — open-set rejection (ch07 §7.10 item 3, §7.2 energy score, gotcha 4 and the §7.10 rule of thumb).

Known classes are the tasks of the training split; each is represented by a language prototype,
the mean normalised z of its distinct training instructions. A frame's logits are
φ_k = exp(logit_scale) · cos(z_V, p_k) and its energy E = −T log Σ_k exp(φ_k / T). Frames of held-out
episodes of trained tasks are the positive (in-distribution) class, frames of episodes of tasks the
model never trained on (the eval split's held-out tasks) the negative class; the score is −E.

    value = AUROC(−E; in-distribution = positive)   (gate: ≥ 0.9)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.metrics import auroc, cosine_similarity, energy_score

SPEC = CheckSpec(
    id=3, name="open_set_rejection", title="Open-set rejection", comparator=">=", unit="AUROC",
    what="energy-score AUROC separating held-out frames of trained tasks from frames of unseen tasks",
    suggestion="Check token buckets and curriculum sampling for OOD collapse: set p_k^min and give failure-amplifying "
               "samples priority; keep an OOD validation set; between close checkpoints prefer the better "
               "uncertainty recognition (ch07 gotcha 4, §7.10 rule of thumb).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.9  # ch07 §7.10 item 3
    temperature: float = 1.0  # T of the energy score


def task_logits(ctx, z_v: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(trained task names, logits [N, K]) = exp(logit_scale) · cos(z_V, language prototypes)."""
    names, protos = ctx.task_prototypes()
    return names, ctx.runner.logit_scale * cosine_similarity(z_v, protos)


def measure(ctx, params: Params) -> Measurement:
    if not ctx.data.unknown:
        return Measurement(None, {}, 0, 0, skipped=True,
                           reason="no episodes of tasks the model did not train on: pass --eval with held-out tasks")
    known = ctx.samples()
    unknown = ctx.sample_set(ctx.data.unknown, ctx.config.max_samples)
    names, logits_known = task_logits(ctx, known.z_v)
    _, logits_unknown = task_logits(ctx, unknown.z_v)
    e_known = energy_score(logits_known, params.temperature)
    e_unknown = energy_score(logits_unknown, params.temperature)
    scores = -np.concatenate([e_known, e_unknown])
    labels = np.concatenate([np.ones(len(e_known), bool), np.zeros(len(e_unknown), bool)])
    value = auroc(scores, labels)
    details = {
        "known_tasks": names,
        "unknown_tasks": sorted({ep.task for ep in ctx.data.unknown}),
        "energy_known_mean": float(e_known.mean()),
        "energy_unknown_mean": float(e_unknown.mean()),
        "known_samples": len(known),
        "unknown_samples": len(unknown),
        "temperature": params.temperature,
    }
    episodes = len(known.episodes) + len(unknown.episodes)
    return Measurement(value, details, episodes, len(known) + len(unknown))


CHECK = Check(SPEC, Params, measure)
