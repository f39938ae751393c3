"""Vision: a ViT over the patches of a short frame history, with MAE-style tube masking (ch07 §7.2).

Tokens: every frame of the history [B, T, 3, H, W] is cut into Ns = (H/p)·(W/p) patches; a token is
one patch of one frame, embedded linearly, plus a spatial and a temporal position embedding.
Tube masking hides the SAME spatial patches in every frame (otherwise a masked patch could be copied
from the neighbouring frame), and the encoder sees only the visible tokens; the decoder (`MVMDecoder`,
living at `heads.mvm`) fills the masked positions with a learned mask token and predicts their pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.errors import BadInput
from stages.model.attention import Transformer, init_weights
from stages.model.config import ModelConfig, VisionConfig
from stages.model.outputs import VisionOut


def patchify(x: Tensor, patch: int) -> Tensor:
    """[B, T, C, H, W] -> [B, T, Ns, p·p·C], patches row-major, pixels ordered (row, col, channel)."""
    b, t, c, h, w = x.shape
    x = x.reshape(b, t, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 1, 3, 5, 4, 6, 2)  # [B, T, h/p, w/p, p, p, C]
    return x.reshape(b, t, (h // patch) * (w // patch), patch * patch * c)


def tube_mask(batch: int, num_patches: int, ratio: float, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """[B, Ns] bool, True = masked; exactly round(ratio·Ns) patches per sample (at least 1 kept)."""
    n_mask = min(max(int(round(ratio * num_patches)), 1), num_patches - 1)
    gen_device = generator.device if generator is not None else "cpu"
    noise = torch.rand(batch, num_patches, generator=generator, device=gen_device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # a random permutation rank per patch
    return (ranks < n_mask).to(device)


def split_mask(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Visible and masked patch indices, each ascending: ([B, Nk], [B, Nm]). Rows must agree on Nm."""
    counts = mask.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise BadInput("vision mask: every sample must mask the same number of patches",
                       caused_by=f"masked counts {sorted(set(counts.tolist()))}")
    n_mask = int(counts[0]) if counts.numel() else 0
    order = mask.to(torch.int8).argsort(dim=1, stable=True)  # visible (0) first, each group in place order
    return order[:, : mask.shape[1] - n_mask], order[:, mask.shape[1] - n_mask:]


def gather_patches(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, T, Ns, C], idx [B, K] -> [B, T, K, C] (the same patches in every frame)."""
    b, t, _, c = x.shape
    return x.gather(2, idx[:, None, :, None].expand(b, t, idx.shape[1], c))


class VisionEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        v: VisionConfig = config.vision
        self.cfg = v
        self.num_patches = (v.image_size // v.patch_size) ** 2
        self.patch_dim = v.patch_size * v.patch_size * 3
        self.patch_embed = nn.Linear(self.patch_dim, config.width)
        self.pos_space = nn.Parameter(torch.zeros(self.num_patches, config.width))
        self.pos_time = nn.Parameter(torch.zeros(v.frames, config.width))
        self.encoder = Transformer(config.width, v.depth, config.num_heads, config.mlp_ratio, config.attention)
        self.proj = nn.Linear(config.width, config.z_dim, bias=False)
        # constants of the config, not weights: kept out of the state dict
        self.register_buffer("pixel_mean", torch.tensor(v.pixel_mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(v.pixel_std).view(1, 1, 3, 1, 1), persistent=False)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)

    def check_frames(self, frames: Tensor) -> None:
        v = self.cfg
        ok = frames.ndim == 5 and frames.shape[2] == 3 and 1 <= frames.shape[1] <= v.frames \
            and frames.shape[3] == v.image_size and frames.shape[4] == v.image_size
        if not ok or not (frames.dtype == torch.uint8 or frames.is_floating_point()):
            raise BadInput(f"`frames` has shape {tuple(frames.shape)} and dtype {frames.dtype}",
                           caused_by=f"expected uint8 [B, T<={v.frames}, 3, {v.image_size}, {v.image_size}]",
                           hint="set the model's vision.image_size / vision.frames from the dataset")

    def normalise(self, frames: Tensor) -> Tensor:
        """uint8 [0, 255] (or float already in [0, 1]) -> float, normalised per channel."""
        x = frames.to(self.pixel_mean.dtype) / 255.0 if frames.dtype == torch.uint8 else frames.to(self.pixel_mean.dtype)
        return (x - self.pixel_mean) / self.pixel_std

    def embed(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, T, 3, H, W] -> tokens with positions [B, T, Ns, D]."""
        t = pixels.shape[1]
        x = self.patch_embed(patchify(pixels, self.cfg.patch_size))
        # the history ends at the current frame: a shorter window takes the LAST temporal embeddings
        return x + self.pos_space[None, None] + self.pos_time[self.cfg.frames - t:][None, :, None]

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> VisionOut:
        """frames [B, T, 3, H, W]; mask [B, Ns] bool (True = hidden in every frame) or None."""
        self.check_frames(frames)
        x = self.embed(self.normalise(frames))  # [B, T, Ns, D]
        if mask is not None:
            if mask.shape != (frames.shape[0], self.num_patches) or mask.dtype != torch.bool:
                raise BadInput(f"vision `mask` has shape {tuple(mask.shape)}",
                               caused_by=f"expected bool [{frames.shape[0]}, {self.num_patches}]")
            keep, _ = split_mask(mask)
            x = gather_patches(x, keep)  # [B, T, Nk, D]: the encoder never sees a masked token
        tokens = self.encoder(x.flatten(1, 2))  # [B, T·Nk, D]
        pooled = tokens.mean(dim=1)
        return VisionOut(tokens=tokens, pooled=pooled, z=self.proj(pooled))


class MVMDecoder(nn.Module):
    """Light MAE decoder: visible tokens + mask tokens at the masked positions -> pixels of masked patches."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        v = config.vision
        self.frames = v.frames
        num_patches = (v.image_size // v.patch_size) ** 2
        self.embed = nn.Linear(config.width, v.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(v.decoder_width))
        self.pos_space = nn.Parameter(torch.zeros(num_patches, v.decoder_width))
        self.pos_time = nn.Parameter(torch.zeros(v.frames, v.decoder_width))
        self.decoder = Transformer(v.decoder_width, v.decoder_depth, v.decoder_heads, config.mlp_ratio, config.attention)
        self.pred = nn.Linear(v.decoder_width, v.patch_size * v.patch_size * 3)
        init_weights(self)
        for p in (self.mask_token, self.pos_space, self.pos_time):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor, frames: int) -> Tensor:
        """tokens [B, T·Nk, D] (visible, from the encoder), mask [B, Ns] -> pred [B, T·Nm, P]."""
        b, ns = mask.shape
        keep, hidden = split_mask(mask)
        x = self.embed(tokens).view(b, frames, keep.shape[1], -1)  # [B, T, Nk, Dd]
        filler = self.mask_token.expand(b, frames, hidden.shape[1], -1)
        x = torch.cat([x, filler], dim=2)  # [B, T, Ns, Dd] in (visible, masked) order
        restore = torch.cat([keep, hidden], dim=1).argsort(dim=1)  # back to patch order
        x = gather_patches(x, restore)
        x = x + self.pos_space[None, None] + self.pos_time[self.frames - frames:][None, :, None]
        x = self.decoder(x.flatten(1, 2)).view(b, frames, ns, -1)
        return self.pred(gather_patches(x, hidden)).flatten(1, 2)  # [B, T·Nm, P]


def mvm_target(pixels: Tensor, mask: Tensor, patch: int, norm_pix: bool) -> Tensor:
    """Pixels of the masked patches [B, T·Nm, P], frame-major like the decoder's prediction."""
    _, hidden = split_mask(mask)
    target = gather_patches(patchify(pixels, patch), hidden).flatten(1, 2)
    if norm_pix:  # MAE: normalise each patch by its own mean/variance
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target.detach()
