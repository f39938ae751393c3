"""`VLAModel`: the three encoders, their projections to Z, fusion, heads and the logit scale.

Module prefixes (checkpoints merge by them, ARCHITECTURE §5):

    vision.    ViT + vision.proj                  (stage I vision also trains heads.mvm)
    language.  text backbone (+ LoRA/adapter) + language.proj
    action.    action-chunk encoder + action.proj (stage I action also trains heads.chunk)
    fusion.    cross-attention + gate
    heads.     policy, chunk, mvm, cycle_vl, cycle_la, cycle_va
    logit_scale

Written for one device; data parallelism is applied outside (stages/training/parallel.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stages.errors import BadInput
from stages.model.action import ActionEncoder
from stages.model.attention import BACKENDS
from stages.model.config import ModelConfig
from stages.model.fusion import Fusion
from stages.model.heads import Heads, similarity_logits
from stages.model.language import LanguageEncoder
from stages.model.outputs import ActionOut, LanguageOut, MVMOut, VisionOut
from stages.model.presets import resolve_config
from stages.model.vision import VisionEncoder, mvm_target, tube_mask

# What each stage-I modality checkpoint carries, for `--init` merging by prefix.
MODALITY_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision": ("vision.", "heads.mvm.", "logit_scale"),
    "language": ("language.", "logit_scale"),
    "action": ("action.", "heads.chunk.", "logit_scale"),
}
TOP_LEVEL = ("vision", "language", "action", "fusion", "heads", "logit_scale")


class VLAModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config = config.copy()  # the model owns its config (it fills in the tokenizer, norm stats)
        self.config = config
        self.vision = VisionEncoder(config)
        self.language = LanguageEncoder(config)
        self.action = ActionEncoder(config)
        self.fusion = Fusion(config)
        self.heads = Heads(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        described = self.language.backbone.describe_tokenizer()
        if config.language.tokenizer is not None and config.language.tokenizer != described:
            raise BadInput("model config field `language.tokenizer` does not match the tokenizer being built",
                           caused_by=f"config has {config.language.tokenizer}, built {described}")
        config.language.tokenizer = described

    # ------------------------------------------------------------------ encoders (CONTRACTS §D)

    def encode_vision(self, frames: Tensor, mask: Tensor | None = None) -> VisionOut:
        """frames uint8 [B, T, 3, H, W]; mask [B, Ns] bool (True = hidden in every frame)."""
        return self.vision(frames, mask)

    def encode_language(self, texts: Sequence[str]) -> LanguageOut:
        return self.language(texts)

    def encode_action(self, action: Tensor, state: Tensor | None = None, valid: Tensor | None = None,
                      step_mask: Tensor | None = None) -> ActionOut:
        """action [B, H, Da] (normalised), state [B, Ds], valid [B, H] bool, step_mask [B, H] bool."""
        return self.action(action, state, valid, step_mask)

    def fuse(self, vision_out: VisionOut, language_out: LanguageOut, **dropout: Any) -> Tensor:
        """-> fused [B, D]; keyword `drop_vision` / `drop_language` [B] bool force modality dropout."""
        return self.fusion(vision_out, language_out, **dropout)

    # ------------------------------------------------------------------ heads

    def policy(self, fused: Tensor | None, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> (mean [B, H, Da], log_std [B, H, Da]); fused None = no vision/language context."""
        return self.heads.policy(fused, state)

    def decode_action(self, action_out: ActionOut) -> tuple[Tensor, Tensor]:
        """Chunk reconstruction from the step tokens -> (mean [B, H, Da], log_std [B, H, Da])."""
        return self.heads.chunk(action_out.tokens[:, 1:])

    def mvm(self, frames: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None,
            mask: Tensor | None = None) -> MVMOut:
        """Masked video modelling with tube masking (ch07 §7.2). The encoder sees only visible tokens;
        the loss belongs on `pred` vs `target`, which cover the masked patches only."""
        v = self.config.vision
        self.vision.check_frames(frames)
        if mask is None:
            ratio = v.mask_ratio if mask_ratio is None else mask_ratio
            if not 0.0 < ratio < 1.0:
                raise BadInput(f"mvm `mask_ratio` {ratio} is not in (0, 1)")
            mask = tube_mask(frames.shape[0], self.vision.num_patches, ratio, generator=generator, device=frames.device)
        out = self.vision(frames, mask)
        pred = self.heads.mvm(out.tokens, mask, frames.shape[1])
        target = mvm_target(self.vision.normalise(frames), mask, v.patch_size, v.norm_pix_target)
        return MVMOut(pred=pred, target=target, mask=mask, vision=out)

    def cycle(self, z_v: Tensor) -> tuple[Tensor, Tensor]:
        """(g_{L→A}(g_{V→L}(z_v)), g_{V→A}(z_v)), both [B, Z] (ch07 §7.7, probe check 4)."""
        return self.heads.cycle_la(self.heads.cycle_vl(z_v)), self.heads.cycle_va(z_v)

    def similarity_logits(self, z: Tensor, prototypes: Tensor) -> Tensor:
        """[B, K] = exp(logit_scale)·cos(z, prototype_k); feed to `heads.energy_score` for open-set use."""
        return similarity_logits(z, prototypes, self.clamped_logit_scale())

    # ------------------------------------------------------------------ temperature

    def clamped_logit_scale(self) -> Tensor:
        """log(1/τ) clamped to [0, ln 100] in the forward pass (the loss sees at most ×100)."""
        return self.logit_scale.clamp(0.0, self.config.logit_scale_max)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the stored parameter in place; the trainer calls it after each optimizer step."""
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)

    # ------------------------------------------------------------------ utilities

    def set_attention_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise BadInput(f"unknown attention backend `{backend}`", caused_by=f"known: {', '.join(BACKENDS)}")
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend
        self.config.attention = backend

    def set_norm_stats(self, stats: dict) -> None:
        """Keep the dataset's normalisation stats with the model config (saved in config.json).

        Arrays and tensors become lists, so the config stays JSON."""
        clean = {}
        for feature, entry in stats.items():
            if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
                raise BadInput(f"normalisation stats: feature `{feature}` has no mean/std")
            clean[feature] = {k: np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v).tolist()
                              for k, v in entry.items()}
        self.config.norm_stats = clean

    def pretrained_keys(self) -> set[str]:
        """State-dict keys copied verbatim from a pinned pretrained file (the frozen text backbone).

        `build_model` restores them from that file, so a checkpoint writer may leave them out and
        load the rest with strict=False on exactly these keys."""
        keys = set()
        for name, p in self.named_parameters():
            if name.startswith("language.backbone.bert.") and ".lora_" not in name and not p.requires_grad:
                keys.add(name)
        return keys

    def _stat(self, feature: str, key: str, like: Tensor) -> Tensor:
        stats = self.config.norm_stats or {}
        if feature not in stats or key not in stats[feature]:
            raise BadInput(f"model config has no normalisation stat `{key}` for `{feature}`",
                           caused_by=f"stats known for: {', '.join(sorted(stats)) or 'none'}")
        return torch.as_tensor(stats[feature][key], dtype=like.dtype, device=like.device)

    def normalize(self, feature: str, x: Tensor) -> Tensor:
        return (x - self._stat(feature, "mean", x)) / self._stat(feature, "std", x).clamp_min(1e-8)

    def denormalize(self, feature: str, x: Tensor) -> Tensor:
        """E.g. `model.denormalize("action", mean)` back to the robot's units."""
        return x * self._stat(feature, "std", x).clamp_min(1e-8) + self._stat(feature, "mean", x)

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """{top-level module: {"total", "trainable"}} plus "all"."""
        counts = {name: {"total": 0, "trainable": 0} for name in (*TOP_LEVEL, "all")}
        for name, p in self.named_parameters():
            for key in (name.split(".")[0], "all"):
                counts[key]["total"] += p.numel()
                counts[key]["trainable"] += p.numel() if p.requires_grad else 0
        return counts


def build_model(preset: str | ModelConfig, **overrides: Any) -> VLAModel:
    """`build_model("tiny")`, `build_model("small", attention="math", action={"state_dim": 9})`.

    Unknown preset or field is `BadInput` listing what exists. Weights come from torch's global RNG
    (seed it first for a reproducible init); the frozen text backbone comes from its pinned file.
    """
    config = resolve_config(preset, **overrides)
    return VLAModel(config)

