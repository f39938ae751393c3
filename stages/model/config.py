"""The model configuration: small dataclasses per component, JSON round trip, unknown keys rejected.

`ModelConfig.to_dict()` is what a checkpoint's `config.json` holds (schema `model-config`);
`ModelConfig.from_dict()` reads it back and names the first bad field (`vision.depth`), so a typo
never silently falls back to a default. Fields marked "from the dataset" are overridden by the
training stage from the dataset it trains on (image size, action/state dims, normalisation stats).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from stages.errors import BadInput

CONFIG_SCHEMA_VERSION = 1


@dataclass
class VisionConfig:
    image_size: int = 64  # frame height = width in pixels (from the dataset)
    patch_size: int = 8  # square patches; image_size must be a multiple
    frames: int = 2  # history length T the temporal embedding covers (a batch may bring fewer)
    depth: int = 3  # ViT blocks
    decoder_width: int = 64  # masked-video decoder (MAE-style, lighter than the encoder)
    decoder_depth: int = 1
    decoder_heads: int = 2
    mask_ratio: float = 0.75  # default tube-masking ratio for `VLAModel.mvm` (VideoMAE uses 0.75–0.9)
    norm_pix_target: bool = True  # MVM target = per-patch normalised pixels (MAE's norm_pix_loss)
    pixel_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # frames/255 are normalised
    pixel_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # with these, per RGB channel


@dataclass
class LanguageConfig:
    encoder: str = "bytes"  # registry `LANGUAGE_ENCODERS`: `bytes` (from scratch) | `minilm` (frozen + LoRA)
    max_len: int = 64  # tokens per instruction after truncation (bytes: UTF-8 bytes + BOS/EOS)
    depth: int = 2  # `bytes` encoder blocks (unused by `minilm`)
    pretrained_dir: str | None = None  # `minilm`: a local Hugging Face directory; None = the packaged copy
    lora_rank: int = 8  # `minilm`: rank of the LoRA update on query/value (0 = adapter only)
    lora_alpha: float = 16.0  # LoRA scale = alpha / rank
    tokenizer: dict | None = None  # filled at build time; a rebuild must find the same tokenizer


@dataclass
class ActionConfig:
    action_dim: int = 4  # Da (from the dataset)
    state_dim: int = 8  # Ds, the proprio vector (from the dataset)
    horizon: int = 16  # H, the action chunk length (≤ 16)
    depth: int = 2


@dataclass
class FusionConfig:
    depth: int = 1  # cross-attention blocks (language queries vision patches)
    modality_dropout: float = 0.1  # in training mode, share of samples that lose vision or language


@dataclass
class HeadsConfig:
    policy_hidden: int = 256  # per-step MLP of the Gaussian chunk policy
    cycle_hidden: int = 256  # g_{V→L}, g_{L→A}, g_{V→A} MLPs in Z
    log_std_min: float = -5.0  # policy log-std is squashed into [min, max]
    log_std_max: float = 2.0
    log_std_init: float = 0.0  # log-std at initialisation (std 1 on normalised actions)


@dataclass
class ModelConfig:
    preset: str = "custom"
    width: int = 128  # D, the token width shared by every encoder (so fusion needs no resizing)
    num_heads: int = 4  # attention heads of every encoder block
    mlp_ratio: float = 4.0
    z_dim: int = 128  # Z, the shared contrastive space
    attention: str = "auto"  # auto | flash | sdpa | math
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP: τ = 0.07
    logit_scale_max: float = math.log(100.0)  # clamp, so τ never drops below 0.01
    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    norm_stats: dict | None = None  # feature -> {mean, std, ...}, from the loader (`loader.norm_stats()`)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": CONFIG_SCHEMA_VERSION}
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "model config") -> ModelConfig:
        if not isinstance(obj, dict):
            raise BadInput(f"`{source}`: expected a JSON object, got {type(obj).__name__}")
        obj = dict(obj)
        version = obj.pop("schema_version", CONFIG_SCHEMA_VERSION)
        if version != CONFIG_SCHEMA_VERSION:
            raise BadInput(f"`{source}`: field `schema_version` is {version!r}",
                           caused_by=f"expected {CONFIG_SCHEMA_VERSION}")
        config = _build(cls, obj, source, "")
        config.validate(source=source)
        return config

    def digest(self) -> str:
        """sha256 of the canonical JSON (for checkpoint metadata)."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def copy(self) -> ModelConfig:
        return ModelConfig.from_dict(self.to_dict())

    # ------------------------------------------------------------------ checks

    def validate(self, *, source: str = "model config") -> None:
        from stages.model.attention import BACKENDS

        def bad(name: str, why: str) -> BadInput:
            return BadInput(f"`{source}`: field `{name}` is invalid", caused_by=why)

        v, lang, a = self.vision, self.language, self.action
        for name, value in [("width", self.width), ("num_heads", self.num_heads), ("z_dim", self.z_dim),
                            ("vision.image_size", v.image_size), ("vision.patch_size", v.patch_size),
                            ("vision.frames", v.frames), ("vision.depth", v.depth),
                            ("vision.decoder_width", v.decoder_width), ("vision.decoder_heads", v.decoder_heads),
                            ("language.max_len", lang.max_len), ("action.action_dim", a.action_dim),
                            ("action.state_dim", a.state_dim), ("action.horizon", a.horizon)]:
            if value < 1:
                raise bad(name, f"{value} < 1")
        if self.width % self.num_heads:
            raise bad("num_heads", f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        if v.decoder_width % v.decoder_heads:
            raise bad("vision.decoder_heads", f"decoder_width {v.decoder_width} is not a multiple of {v.decoder_heads}")
        if v.image_size % v.patch_size:
            raise bad("vision.patch_size", f"image_size {v.image_size} is not a multiple of {v.patch_size}")
        if not 0.0 < v.mask_ratio < 1.0:
            raise bad("vision.mask_ratio", f"{v.mask_ratio} is not in (0, 1)")
        if len(v.pixel_mean) != 3 or len(v.pixel_std) != 3 or min(v.pixel_std) <= 0:
            raise bad("vision.pixel_std", "pixel_mean/pixel_std need 3 values, std > 0")
        if a.horizon > 16:
            raise bad("action.horizon", f"{a.horizon} > 16 (ARCHITECTURE §6: H ≤ 16)")
        if self.attention not in BACKENDS:
            raise bad("attention", f"`{self.attention}` is not one of {', '.join(BACKENDS)}")
        if not 0.0 <= self.fusion.modality_dropout < 1.0:
            raise bad("fusion.modality_dropout", f"{self.fusion.modality_dropout} is not in [0, 1)")
        if not self.logit_scale_init <= self.logit_scale_max:
            raise bad("logit_scale_init", f"{self.logit_scale_init} > logit_scale_max {self.logit_scale_max}")
        h = self.heads
        if not h.log_std_min < h.log_std_init < h.log_std_max:
            raise bad("heads.log_std_init", f"{h.log_std_init} is not inside ({h.log_std_min}, {h.log_std_max})")
        if lang.lora_rank < 0:
            raise bad("language.lora_rank", f"{lang.lora_rank} < 0")


# ----------------------------------------------------------------------------- dict -> dataclass


def _build(cls: type, obj: dict, source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise BadInput(f"`{source}`: unknown field `{prefix}{unknown[0]}`", caused_by=f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in obj.items():
        kwargs[name] = _coerce(value, hints[name], source, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, source: str, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BadInput(f"`{source}`: field `{path}` must be an object", caused_by=f"got {type(value).__name__}")
        return _build(hint, value, source, f"{path}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"`{source}`: field `{path}` must be a list", caused_by=f"got {value!r}")
        return [_coerce(v, item, source, f"{path}[{i}]") for i, v in enumerate(value)]
    expected = origin or hint
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[expected]
    if not ok:
        raise BadInput(f"`{source}`: field `{path}` must be {expected.__name__}", caused_by=f"got {value!r}")
    return float(value) if expected is float else value
