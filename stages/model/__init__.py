"""The VLA model (ARCHITECTURE §6, CONTRACTS §D): encoders, fusion, heads, attention backend, presets.

    from stages.model import build_model
    model = build_model("tiny")
    v = model.encode_vision(batch["frames"])          # VisionOut(tokens, pooled, z)
    l = model.encode_language(batch["instruction"])   # LanguageOut(tokens, mask, pooled, z)
    a = model.encode_action(batch["action"], batch["state"], batch["action_valid"])
    mean, log_std = model.policy(model.fuse(v, l), batch["state"])
"""

from stages.model.attention import BACKENDS, attention
from stages.model.config import (ActionConfig, FusionConfig, HeadsConfig, LanguageConfig, ModelConfig,
                                 VisionConfig)
from stages.model.heads import energy_score, similarity_logits
from stages.model.language import LANGUAGE_ENCODERS
from stages.model.outputs import ActionOut, LanguageOut, MVMOut, VisionOut
from stages.model.presets import PRESETS, resolve_config
from stages.model.vla import MODALITY_PREFIXES, VLAModel, build_model

__all__ = [
    "ActionConfig", "ActionOut", "BACKENDS", "FusionConfig", "HeadsConfig", "LANGUAGE_ENCODERS", "LanguageConfig",
    "LanguageOut", "MODALITY_PREFIXES", "MVMOut", "ModelConfig", "PRESETS", "VLAModel", "VisionConfig", "VisionOut",
    "attention", "build_model", "energy_score", "resolve_config", "similarity_logits",
]
