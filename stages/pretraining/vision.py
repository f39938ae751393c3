"""Vision pretraining (ch07 §7.2): masked video modelling, contrastive views and near frames, temporal consistency.

Per step, on a batch of frame windows x_t [B, T, 3, H, W] and the same windows shifted by a few
frames x_{t+Δ} (`frames_near`):

- `mvm`: tube masking hides the same patches in every frame of a window; the encoder sees only the
  visible tokens and the light decoder predicts the hidden ones; the loss is |x̂ − x|₁ on the masked
  patches only (L_MVM, MAE/VideoMAE style; per-patch normalised targets).
- `view_nce`: InfoNCE between two augmented views of x_t (crop/shift/zoom, brightness/contrast,
  noise). Other samples from the same episode within `near_radius` frames are not treated as true
  negatives: they get a soft target of `near_weight` (= ½, the §7.2 rule of thumb, "半负/软标签").
- `near_nce`: InfoNCE between a view of x_t and a view of x_{t+Δ} (near-frame positives), with the
  same soft targets for the other near frames in the batch.
- `temporal`: L_TC = ‖f(x_{t+Δ}) − T_Δ(f(x_t))‖² with T_Δ the identity (Δ is a few frames) on
  normalised z, the x_{t+Δ} side detached (a stop-gradient target, BYOL-style).

Under DDP the contrastive losses score the local rows against every rank's rows
(`parallel.gather_features`, soft targets built over the gathered episode/frame indices).

Open-set use later: `model.similarity_logits(z, prototypes)` + `stages.model.energy_score` on the
vision z this stage trains (ch07 §7.2 E(x) = −τ log Σ_k exp(φ_k(x)/τ)).

Held-out metrics (metrics.jsonl, kind "eval"): `view_R@1`/`view_R@5` (a view of x_t retrieves the
other view of the same window among all held-out samples), `near_R@1` (clean x_t retrieves its
near window; a candidate from the same episode within `near_radius` frames counts as a hit) and
the held-out `mvm` loss with a fixed mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stages.data.augment import ViewAugmentConfig, augment_views
from stages.objectives import decollapse, info_nce, mvm, temporal_consistency
from stages.pretraining import heldout_batches, inverse_temperature
from stages.probes.metrics import cosine_similarity, retrieval_metrics
from stages.training import parallel

LOSS_WEIGHTS = {"mvm": 1.0, "view_nce": 0.5, "near_nce": 0.5, "temporal": 0.1, "decollapse": 0.1}


@dataclass
class VisionPretrainConfig:
    mask_ratio: float | None = None     # tube-masking ratio; None = the model's vision.mask_ratio
    mvm_kind: str = "l1"                # "l1" (ch07 §7.2 |x̂ − x|₁) or "mse" (MAE)
    near_radius: int = 3                # frames: same-episode samples this close are near frames
    near_weight: float = 0.5            # soft target of a near frame (ch07 §7.2: half negatives)
    augment: ViewAugmentConfig = field(default_factory=ViewAugmentConfig)
    eval_max_samples: int = 256         # held-out samples scored per evaluation
    eval_seed: int = 0                  # augmentations and masks of the evaluation (fixed across steps)


def soft_targets(episode: torch.Tensor, frame: torch.Tensor, *, radius: int, weight: float, offset: int = 0,
                 rows: int | None = None) -> torch.Tensor:
    """[n, N]: 1 for the same (episode, frame) — the positive and any duplicate of it —, `weight` for
    another frame of the same episode within `radius`, 0 otherwise (ch07 §7.2 rule of thumb)."""
    n = episode.shape[0] if rows is None else rows
    ep, fr = episode[offset:offset + n, None], frame[offset:offset + n, None]
    same_episode = ep == episode[None, :]
    gap = (fr - frame[None, :]).abs()
    targets = (same_episode & (gap <= radius)).float() * weight
    targets[same_episode & (gap == 0)] = 1.0
    return targets


class VisionRecipe:
    def __init__(self, cfg: VisionPretrainConfig):
        cfg.augment.check()
        self.cfg = cfg

    # ------------------------------------------------------------------ training

    def _contrast(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, batch: dict) -> torch.Tensor:
        """Symmetric InfoNCE of a [n, Z] vs b [n, Z] with near-frame soft targets, across ranks."""
        cfg, n = self.cfg, a.shape[0]
        episode, frame = batch["episode_index"], batch["frame_index"]
        if parallel.world_size() > 1:
            episode = torch.cat(parallel.all_gather_equal(episode))
            frame = torch.cat(parallel.all_gather_equal(frame))
            offset = parallel.rank_offset(n)
            targets = soft_targets(episode, frame, radius=cfg.near_radius, weight=cfg.near_weight, offset=offset, rows=n)
            return info_nce(a, b, scale, soft_targets=targets, weight=batch["weight"], offset=offset,
                            a_all=parallel.gather_features(a), b_all=parallel.gather_features(b))
        targets = soft_targets(episode, frame, radius=cfg.near_radius, weight=cfg.near_weight)
        return info_nce(a, b, scale, soft_targets=targets, weight=batch["weight"])

    def losses(self, model, batch: dict, step: int, phase) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        frames, near, w = batch["frames"], batch["frames_near"], batch["weight"]  # [B, T, 3, H, W] uint8
        out = model.mvm(frames, mask_ratio=cfg.mask_ratio)
        scored = torch.ones(out.pred.shape[:2], dtype=torch.bool, device=out.pred.device)  # pred covers masked patches only
        losses = {"mvm": mvm(out.pred, out.target, scored, kind=cfg.mvm_kind, weight=w)}
        # one encoder pass over the three augmented inputs: x_t twice, x_{t+Δ} once   [3B, T, 3, H, W]
        views = torch.cat([augment_views(frames, cfg.augment), augment_views(frames, cfg.augment),
                           augment_views(near, cfg.augment)])
        z1, z2, zn = model.encode_vision(views).z.chunk(3)  # [B, Z] each
        scale = inverse_temperature(model, phase)
        losses["view_nce"] = self._contrast(z1, z2, scale, batch)
        losses["near_nce"] = self._contrast(z1, zn, scale, batch)
        losses["temporal"] = temporal_consistency(z1, zn.detach(), normalize=True, weight=w)
        losses["decollapse"] = decollapse(torch.cat([z1, z2]), weight=torch.cat([w, w]))
        return losses

    def batch_size(self, batch: dict) -> int:
        return int(batch["frames"].shape[0])

    # ------------------------------------------------------------------ held-out progress

    @torch.no_grad()
    def evaluate(self, model, loader, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.eval_seed)
        device = model.logit_scale.device
        z_a, z_b, z_clean, z_near, eps, frs, mvm_sum, mvm_n = [], [], [], [], [], [], 0.0, 0
        for batch in heldout_batches(loader, cfg.eval_max_samples, device):
            frames, near = batch["frames"], batch["frames_near"]
            views = torch.cat([augment_views(frames, cfg.augment, generator=gen), augment_views(frames, cfg.augment, generator=gen),
                               frames.float() / 255.0, near.float() / 255.0])
            a, b, clean, shifted = model.encode_vision(views).z.float().chunk(4)
            for keep, z in zip((z_a, z_b, z_clean, z_near), (a, b, clean, shifted)):
                keep.append(z.cpu().numpy())
            eps.append(batch["episode_index"].cpu().numpy())
            frs.append(batch["frame_index"].cpu().numpy())
            mask_gen = torch.Generator(device=frames.device).manual_seed(cfg.eval_seed + len(eps))
            out = model.mvm(frames, mask_ratio=cfg.mask_ratio, generator=mask_gen)
            scored = torch.ones(out.pred.shape[:2], dtype=torch.bool, device=out.pred.device)
            mvm_sum += float(mvm(out.pred.float(), out.target.float(), scored, kind=cfg.mvm_kind)) * len(frames)
            mvm_n += len(frames)
        if not eps:
            return {}
        episode, frame = np.concatenate(eps), np.concatenate(frs)
        same = episode[:, None] == episode[None, :]
        gap = np.abs(frame[:, None] - frame[None, :])
        view = retrieval_metrics(cosine_similarity(np.concatenate(z_a), np.concatenate(z_b)), same & (gap == 0), ks=(1, 5))
        near = retrieval_metrics(cosine_similarity(np.concatenate(z_clean), np.concatenate(z_near)), same & (gap <= cfg.near_radius), ks=(1, 5))
        return {"view_R@1": view["R@1"], "view_R@5": view["R@5"], "view_MRR": view["MRR"],
                "near_R@1": near["R@1"], "near_MRR": near["MRR"], "mvm": mvm_sum / mvm_n, "samples": float(len(episode))}
