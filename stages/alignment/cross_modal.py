"""The cross-modal terms of stage II on one rank's rows (ch05 §5.2–5.6, ch07 §7.7, §7.9).

Each function takes this rank's tensors and, under torchrun, gathers what it needs through the
engine's single helpers (`parallel.gather_features` with gradient, `parallel.all_gather_equal`
without), so that the loss each rank computes is its share of the global-batch loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stages.data.instructions import episode_identity
from stages.objectives import cycle, decollapse, info_nce, spectral_coherence
from stages.pretraining.vision import soft_targets
from stages.training import parallel

Targets = Callable[[int, int], torch.Tensor]  # (offset, rows) -> soft targets [rows, N]


def _gathered(x: torch.Tensor) -> torch.Tensor:
    """Every rank's copy of a label tensor [b] -> [W·b] (no gradient); itself in one process."""
    return torch.cat(parallel.all_gather_equal(x)) if parallel.world_size() > 1 else x


def episode_identities(dataset) -> np.ndarray:
    """int64 [num_episodes]: equal ids for episodes whose instructions are the same command
    (task family + constraint clause, any wording or language; `stages.data.instructions`)."""
    table: dict = {}
    texts = dataset.episodes["task"].tolist()
    ids = [table.setdefault(episode_identity(dataset.episode_meta(i), dataset.task_name(i), str(texts[i])), len(table))
           for i in range(dataset.num_episodes)]
    return np.asarray(ids, dtype=np.int64)


def same_command_targets(identity: torch.Tensor, episode_index: torch.Tensor) -> Targets:
    """Soft targets for V↔L and L↔A: 1 where two samples' instructions are the same command.

    identity: [num_episodes] ids (`episode_identities`); episode_index: [b] this rank's samples."""
    ids = _gathered(identity.to(episode_index.device)[episode_index])  # [N]
    return lambda offset, n: (ids[offset:offset + n, None] == ids[None, :]).float()


def near_frame_targets(episode_index: torch.Tensor, frame_index: torch.Tensor, *, radius: int, weight: float) -> Targets:
    """Soft targets for V↔A: 1 for the sample itself, `weight` for a frame of the same episode within
    `radius` (ch07 §7.2 rule of thumb: near frames are half negatives, not true ones)."""
    episode, frame = _gathered(episode_index), _gathered(frame_index)
    return lambda offset, n: soft_targets(episode, frame, radius=radius, weight=weight, offset=offset, rows=n)


def contrast(a: torch.Tensor, b: torch.Tensor, scale, weight: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Bidirectional InfoNCE of this rank's rows a, b [b, Z] against every rank's rows (local loss +
    gather with gradient, ch05 §5.2 L_{V↔L}); `scale` = 1/τ."""
    n = a.shape[0]
    if parallel.world_size() > 1:
        offset = parallel.rank_offset(n)
        return info_nce(a, b, scale, soft_targets=targets(offset, n), weight=weight, a_all=parallel.gather_features(a),
                        b_all=parallel.gather_features(b), offset=offset)
    return info_nce(a, b, scale, soft_targets=targets(0, n), weight=weight)


def cycle_consistency(heads, z_v: torch.Tensor, z_l: torch.Tensor, z_a: torch.Tensor, weight: torch.Tensor,
                      **params) -> torch.Tensor:
    """‖g_LA(g_VL(v)) − g_VA(v)‖₁ (ch07 §7.7) + the mean of the bridges the loop relies on,
    g_VL(v) ≈ l, g_LA(l) ≈ a, g_VA(v) ≈ a (ch05 §5.4: language as the bridge), on unit z [b, Z].

    Without the bridges the loop alone is met by heads that map everything to one point."""
    v, lz, a = (F.normalize(z, dim=-1) for z in (z_v, z_l, z_a))
    to_l, direct = heads.cycle_vl(v), heads.cycle_va(v)
    loop = cycle(heads.cycle_la(to_l), direct, weight=weight, **params)
    bridges = cycle(to_l, lz, weight=weight, **params) + cycle(heads.cycle_la(lz), a, weight=weight, **params) \
        + cycle(direct, a, weight=weight, **params)
    return loop + bridges / 3.0


def decollapse_all(zs: list[torch.Tensor], weight: torch.Tensor, **params) -> torch.Tensor:
    """Mean over the modalities of the variance/covariance regulariser (ch07 §7.9) on √Z · unit z,
    over the gathered global batch (every rank computes the same value)."""
    w = _gathered(weight)
    terms = []
    for z in zs:
        unit = F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])  # [b, Z]: isotropic unit z has variance 1 per dim
        terms.append(decollapse(parallel.gather_features(unit), weight=w, **params))
    return sum(terms) / len(terms)


def va_coherence(read: torch.Tensor, demo: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor, **params) -> torch.Tensor:
    """1 − γ_VA in band (ch05 §5.4) between the chunk read from the scene `read` [b, H, Da] and the
    demonstrated chunk `demo` [b, H, Da], per action dimension; chunks with a padded tail do not count."""
    whole = valid.all(dim=1).to(weight.dtype)  # [b]
    return spectral_coherence(read.transpose(1, 2), demo.transpose(1, 2), weight=weight * whole, **params)
