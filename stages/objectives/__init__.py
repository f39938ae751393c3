"""Losses of the two-stage pretraining (ch07 §7.2–7.9, ch05 §5.2–5.6): one function per loss.

`LOSSES` is the registry the schedule validates loss names against (`stages.training.schedule`);
a new loss is one function here and one line in the table below. Every loss takes per-sample
weights `weight` [B] (the dataset's `vla.weight`, 0 = masked segment) and returns a scalar.

| name                 | function               | chapter        |
|----------------------|------------------------|----------------|
| info_nce             | `info_nce`             | ch07 §7.2, ch05 §5.2–5.3 |
| mvm                  | `mvm`                  | ch07 §7.2      |
| temporal_consistency | `temporal_consistency` | ch07 §7.2      |
| bc_nll / bc_huber / bc_quantile | `bc_*`      | ch07 §7.3      |
| spectral_prior       | `spectral_prior`       | ch07 §7.3      |
| dynamics_hinge       | `dynamics_hinge`       | ch07 §7.3      |
| cycle                | `cycle`                | ch07 §7.7, ch05 §5.4 |
| spectral_coherence   | `spectral_coherence`   | ch05 §5.4      |
| distillation_kl      | `distillation_kl`      | ch07 §7.3, §7.9 |
| decollapse           | `decollapse`           | ch07 §7.9      |
"""

from __future__ import annotations

from collections.abc import Callable

from stages.objectives.alignment import band_coherence, coherence, cycle, spectral_coherence
from stages.objectives.behaviour import bc_huber, bc_nll, bc_quantile, pinball
from stages.objectives.contrastive import info_nce, mutual_info_bound, near_frame_mask, near_frame_targets
from stages.objectives.regularisers import decollapse, distillation_kl, gaussian_kl
from stages.objectives.smoothness import curvature, dynamics_hinge, finite_difference, jerk_clip, spectral_prior, spectral_weights
from stages.objectives.video import mvm, temporal_consistency, tube_mask
from stages.objectives.weighting import weighted_mean
from stages.registry import Registry

LOSSES: Registry[Callable] = Registry("loss")
for _name, _fn in (
    ("info_nce", info_nce),
    ("mvm", mvm),
    ("temporal_consistency", temporal_consistency),
    ("bc_nll", bc_nll),
    ("bc_huber", bc_huber),
    ("bc_quantile", bc_quantile),
    ("spectral_prior", spectral_prior),
    ("dynamics_hinge", dynamics_hinge),
    ("cycle", cycle),
    ("spectral_coherence", spectral_coherence),
    ("distillation_kl", distillation_kl),
    ("decollapse", decollapse),
):
    LOSSES.add(_name, _fn)

__all__ = [
    "LOSSES",
    "band_coherence",
    "bc_huber",
    "bc_nll",
    "bc_quantile",
    "coherence",
    "curvature",
    "cycle",
    "decollapse",
    "distillation_kl",
    "dynamics_hinge",
    "finite_difference",
    "gaussian_kl",
    "info_nce",
    "jerk_clip",
    "mutual_info_bound",
    "mvm",
    "near_frame_mask",
    "near_frame_targets",
    "pinball",
    "spectral_coherence",
    "spectral_prior",
    "spectral_weights",
    "temporal_consistency",
    "tube_mask",
    "weighted_mean",
]
