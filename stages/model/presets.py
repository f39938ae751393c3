"""Model presets (registry `PRESETS`) and how overrides apply to them.

- `tiny`: CPU tests and the demo (64×64 frames in 16×16 patches, ≈1 M parameters, a few ms of CPU
  per sample for a forward + backward).
- `small`: one GPU, quick experiments (Z = 256).
- `base`: GPU pretraining (Z = 512).

Image size, action/state dims and normalisation stats are dataset properties: the training stage
overrides them (`build_model("small", vision={"image_size": 96}, action={"state_dim": 9})`).
Every preset uses the byte-level text encoder; the frozen MiniLM is one override away
(`language={"encoder": "minilm"}`), so no preset depends on the optional `text` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stages.errors import BadInput
from stages.model.config import ActionConfig, FusionConfig, HeadsConfig, LanguageConfig, ModelConfig, VisionConfig
from stages.registry import Registry

PRESETS: Registry[Callable[[], ModelConfig]] = Registry("model preset")


@PRESETS.register("tiny")
def tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny", width=96, num_heads=4, mlp_ratio=3.0, z_dim=64,
        vision=VisionConfig(image_size=64, patch_size=16, frames=2, depth=3,
                            decoder_width=64, decoder_depth=1, decoder_heads=2),
        language=LanguageConfig(encoder="bytes", max_len=48, depth=2),
        action=ActionConfig(horizon=16, depth=2),
        fusion=FusionConfig(depth=1),
        heads=HeadsConfig(policy_hidden=128, cycle_hidden=128),
    )


@PRESETS.register("small")
def small() -> ModelConfig:
    return ModelConfig(
        preset="small", width=384, num_heads=6, mlp_ratio=4.0, z_dim=256,
        vision=VisionConfig(image_size=64, patch_size=8, frames=4, depth=6,
                            decoder_width=192, decoder_depth=2, decoder_heads=3),
        language=LanguageConfig(encoder="bytes", max_len=96, depth=4),
        action=ActionConfig(horizon=16, depth=3),
        fusion=FusionConfig(depth=2),
        heads=HeadsConfig(policy_hidden=512, cycle_hidden=512),
    )


@PRESETS.register("base")
def base() -> ModelConfig:
    return ModelConfig(
        preset="base", width=768, num_heads=12, mlp_ratio=4.0, z_dim=512,
        vision=VisionConfig(image_size=128, patch_size=16, frames=4, depth=12,
                            decoder_width=384, decoder_depth=4, decoder_heads=6, mask_ratio=0.9),
        language=LanguageConfig(encoder="bytes", max_len=128, depth=6),
        action=ActionConfig(horizon=16, depth=4),
        fusion=FusionConfig(depth=2),
        heads=HeadsConfig(policy_hidden=1024, cycle_hidden=1024),
    )


def resolve_config(preset: str | ModelConfig, **overrides: Any) -> ModelConfig:
    """A preset's config (or a copy of the given one) with overrides applied, validated.

    Overrides are field names (`attention="math"`), nested dicts merged into a sub-config
    (`vision={"depth": 2}`), or dotted paths (`**{"vision.depth": 2}`); unknown names are `BadInput`.
    """
    if isinstance(preset, ModelConfig):
        base_dict = preset.to_dict()
    elif isinstance(preset, str):
        base_dict = PRESETS.get(preset)().to_dict()
    else:
        raise BadInput(f"model preset must be a name or a ModelConfig, got {type(preset).__name__}")
    for key, value in overrides.items():
        _apply(base_dict, key.split("."), value, key)
    return ModelConfig.from_dict(base_dict, source="model overrides" if overrides else "model preset")


def _apply(target: dict, path: list[str], value: Any, full: str) -> None:
    head, rest = path[0], path[1:]
    if head not in target:
        raise BadInput(f"unknown model config field `{full}`", caused_by=f"known here: {', '.join(sorted(target))}")
    if rest:
        if not isinstance(target[head], dict):
            raise BadInput(f"model config field `{full}`: `{head}` has no sub-fields")
        _apply(target[head], rest, value, full)
    elif isinstance(value, dict) and isinstance(target[head], dict) and head != "norm_stats" and head != "tokenizer":
        for k, v in value.items():
            _apply(target[head], [k], v, f"{full}.{k}")
    else:
        target[head] = value
