"""What the encoders return (CONTRACTS §D). `z` is NOT normalised: the losses normalise."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class VisionOut:
    tokens: Tensor  # [B, N, D] patch tokens (only the visible ones when a mask was given)
    pooled: Tensor  # [B, D] mean of the tokens
    z: Tensor  # [B, Z] projection to the shared space


@dataclass
class LanguageOut:
    tokens: Tensor  # [B, L, D]
    mask: Tensor  # [B, L] bool, True = a real token, False = padding
    pooled: Tensor  # [B, D] mean over the real tokens
    z: Tensor  # [B, Z]


@dataclass
class ActionOut:
    tokens: Tensor  # [B, 1 + H, D]: the proprio token, then one token per chunk step
    mask: Tensor  # [B, 1 + H] bool, True = proprio or a valid step
    pooled: Tensor  # [B, D] mean over the valid step tokens
    z: Tensor  # [B, Z]


@dataclass
class MVMOut:
    pred: Tensor  # [B, M, P] predicted pixels of the masked patches, M = T · masked patches per frame
    target: Tensor  # [B, M, P] their (normalised) pixels; no gradient
    mask: Tensor  # [B, Ns] bool tube mask over the spatial patches, True = masked in every frame
    vision: VisionOut  # the encoder's output on the visible tokens only
