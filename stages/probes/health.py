"""The alignment health report of ch05 §5.8, on the held-out sample frames and episodes.

- retrieval: R@1/5/10 and MRR in each direction between V, L and A (task-level relevance: a
  candidate of the same task is a hit; near frames and repeated instructions make pair-level
  relevance ill-posed);
- mutual information: InfoNCE bound log N − L for V–L, L–A, V–A (ch05 §5.6), the model's logit scale;
- AMat: the alignment confusion matrix, top-5 cross-modal hit rates (ch05 §5.8 对齐混淆矩阵);
- spectral coherence: γ²_VA between the vision z and action z time lines of the held-out episodes,
  pooled over episodes, mean over the control band 0.1–1.0 Hz (ch05 §5.4, §5.8);
- calibration: V→task classification against the language prototypes of the trained tasks;
  ECE with 15 (lo, hi] bins before and after temperature scaling fitted on a validation half of
  the held-out episodes and measured on the other half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stages.probes.metrics import (alignment_matrix, cosine_similarity, expected_calibration_error, fit_temperature,
                                   info_nce_bound, pooled_band_coherence, retrieval_metrics, softmax_confidence,
                                   task_relevance)
from stages.probes.open_set import task_logits

DIRECTIONS = (("V", "L"), ("L", "V"), ("L", "A"), ("A", "L"), ("V", "A"), ("A", "V"))


@dataclass(frozen=True)
class HealthConfig:
    amat_k: int = 5
    band_hz: tuple[float, float] = (0.1, 1.0)  # ch05 §5.4 / checklist: γ_VA over 0.1–1 Hz
    ece_bins: int = 15


def retrieval(samples) -> dict:
    z = {"V": samples.z_v, "L": samples.z_l, "A": samples.z_a}
    rel = task_relevance(samples.task, samples.task)
    return {f"{q}->{c}": retrieval_metrics(cosine_similarity(z[q], z[c]), rel) for q, c in DIRECTIONS}


def mutual_information(samples, logit_scale: float) -> dict:
    z = {"V": samples.z_v, "L": samples.z_l, "A": samples.z_a}
    return {f"{a}-{b}": info_nce_bound(z[a], z[b], logit_scale) for a, b in (("V", "L"), ("L", "A"), ("V", "A"))}


def _unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def spectral_coherence(ctx, band: tuple[float, float]) -> dict:
    """γ²_VA of the unit-normalised vision and action z, channel by channel, pooled over episodes."""
    fps = ctx.fps
    lengths = np.array([ep.length for ep in ctx.data.heldout])
    shortest_useful = int(math.ceil(fps / band[1]))  # a segment this long has a bin at or below the band's top
    nperseg = int(max(shortest_useful, min(np.percentile(lengths, 25), round(fps / band[0]))))
    pairs = [(_unit_rows(ctx.outputs(ep).z_v), _unit_rows(ctx.outputs(ep).z_a)) for ep in ctx.data.heldout if ep.length >= nperseg]
    out = pooled_band_coherence(pairs, fps, band, nperseg)
    out.update({"band_hz": list(band), "nperseg": nperseg, "resolution_hz": fps / nperseg})
    if not np.isfinite(out["coherence"]):
        out["note"] = (f"episodes too short or too few for the band: need ≥ 2 segments of {nperseg} frames "
                       f"(resolution {fps / nperseg:.3g} Hz)")
    return out


def calibration(ctx, samples, bins: int) -> dict:
    names, logits = task_logits(ctx, samples.z_v)
    labels = np.array([names.index(t) for t in samples.task])
    episodes = samples.episode
    fit = episodes % 2 == 0  # validation half: every other held-out episode
    how = "episodes"
    if fit.all() or not fit.any():  # one episode: alternate frames instead
        fit = np.arange(len(samples)) % 2 == 0
        how = "frames"
    test = ~fit
    if not fit.any() or not test.any():
        return {"bins": bins, "temperature": None, "ece_before": None, "ece_after": None, "fit_samples": int(fit.sum()),
                "eval_samples": int(test.sum()), "split": how}
    t = fit_temperature(logits[fit], labels[fit])
    before = expected_calibration_error(*softmax_confidence(logits[test], labels[test]), bins=bins)
    after = expected_calibration_error(*softmax_confidence(logits[test], labels[test], t), bins=bins)
    acc = float((logits[test].argmax(1) == labels[test]).mean())
    return {"bins": bins, "temperature": t, "ece_before": before, "ece_after": after, "accuracy": acc,
            "fit_samples": int(fit.sum()), "eval_samples": int(test.sum()), "split": how}


def health_report(ctx, config: HealthConfig = HealthConfig()) -> dict:
    samples = ctx.samples()
    z = {"V": samples.z_v, "L": samples.z_l, "A": samples.z_a}
    return {
        "samples": len(samples),
        "episodes": len(samples.episodes),
        "logit_scale": ctx.runner.logit_scale,
        "retrieval": retrieval(samples),
        "mutual_information": mutual_information(samples, ctx.runner.logit_scale),
        "amat": alignment_matrix(z, samples.task, k=config.amat_k),
        "spectral_coherence": spectral_coherence(ctx, config.band_hz),
        "calibration": calibration(ctx, samples, config.ece_bins),
    }
