"""Cheap, vectorised view augmentations of frame windows for contrastive vision training (ch07 §7.2).

    views = augment_views(batch["frames"], ViewAugmentConfig(), generator=None)   # float [B, T, 3, H, W] in [0, 1]

Two calls on one batch give the two "views" of SimCLR-style InfoNCE (self-supervised-learning.md
§2.1.2: random crop + scale, colour jitter, noise). Every draw is per sample and shared by the T
frames of its window, so a window stays a coherent clip (the temporal structure the vision encoder
reads is not scrambled). Everything runs on the whole batch at once: one `affine_grid` +
`grid_sample` for crop/shift/zoom, broadcast arithmetic for brightness, contrast and noise.
Random numbers come from `generator` (CPU) when given, else from torch's global RNG, which the
training engine seeds and restores on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ViewAugmentConfig:
    # Defaults are mild on purpose: on scenes where frames differ mainly by the arm's pose (the
    # Meta-World demo), stronger jitter makes two views of one frame less alike than two frames,
    # and the contrastive loss then collapses to log N (measured: ±12 % shift, 0.8 zoom, ±0.15
    # brightness collapsed within 10 steps; these settings learn). Raise them for varied scenes.
    max_shift: float = 0.03         # translation, as a share of the image side, up to ± this
    min_scale: float = 0.95         # zoom-in crop: the visible side shrinks to [min_scale, 1] of the image
    brightness: float = 0.05        # additive shift of all pixels, ± this (pixels in [0, 1])
    contrast: float = 0.05          # contrast factor in [1 − c, 1 + c], about each window's mean
    noise_std: float = 0.01         # Gaussian pixel noise (pixels in [0, 1])

    def check(self) -> None:
        if not (0.0 <= self.max_shift < 1.0 and 0.0 < self.min_scale <= 1.0 and self.brightness >= 0.0
                and 0.0 <= self.contrast < 1.0 and self.noise_std >= 0.0):
            raise ValueError(f"view augmentation parameters out of range: {self}")


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def augment_views(frames: torch.Tensor, cfg: ViewAugmentConfig, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (or float in [0, 1]) windows [B, T, 3, H, W] -> augmented float windows in [0, 1], same shape.

    Per sample: a zoom s ∈ [min_scale, 1] and a shift (tx, ty) with the crop kept mostly inside the
    frame (border pixels repeat past the edge), brightness b, contrast c, then noise per pixel.
    """
    cfg.check()
    b, t, c, h, w = frames.shape
    device = frames.device
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    scale = _uniform((b,), cfg.min_scale, 1.0, generator)  # [B]
    shift = _uniform((b, 2), -cfg.max_shift, cfg.max_shift, generator) * 2.0  # [B, 2] in grid units ([-1, 1] spans the image)
    bright = _uniform((b,), -cfg.brightness, cfg.brightness, generator)
    contrast = _uniform((b,), 1.0 - cfg.contrast, 1.0 + cfg.contrast, generator)
    noise = torch.randn((b, t, c, h, w), generator=generator) * cfg.noise_std if cfg.noise_std > 0 else None

    theta = torch.zeros(b, 2, 3)  # sample at scale·grid + shift: a zoomed, shifted crop
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    theta = theta.to(device).repeat_interleave(t, dim=0)  # [B·T, 2, 3], one transform per window
    grid = F.affine_grid(theta, [b * t, c, h, w], align_corners=False)
    x = F.grid_sample(x.reshape(b * t, c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.reshape(b, t, c, h, w)

    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)  # [B, 1, 1, 1, 1] per window
    x = (x - mean) * contrast.to(device).view(b, 1, 1, 1, 1) + mean + bright.to(device).view(b, 1, 1, 1, 1)
    if noise is not None:
        x = x + noise.to(device)
    return x.clamp_(0.0, 1.0)
