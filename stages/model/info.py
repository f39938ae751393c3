"""`vla model info`: parameter counts per top-level module and FLOPs per sample (schema `model-info`).

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` records every matrix
multiply of a forward pass on ONE sample (2 FLOPs per multiply-add; attention's QKᵀ and ·V included,
elementwise ops, norms and softmax not). The count runs on the `math` attention backend, whose
matmuls the counter sees on every device (the fused kernels compute the same products). Each
top-level module is counted in its own pass:

- vision: a full frame history (T = vision.frames) without masking;
- language: an instruction of `language.max_len` tokens (the longest the tokenizer keeps);
- action: a full chunk (H = action.horizon) and the proprio token;
- fusion: cross-attention of those text tokens over those vision tokens, and the gate;
- heads: policy + chunk decoder + the three cycle heads (the MVM decoder is in `mvm`);
- mvm: one masked-video pass at vision.mask_ratio (encoder on visible tokens + decoder).

`train_step_estimate` = 3 × forward (backward ≈ 2 × forward), an upper bound when parts are frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.artifacts import schema_errors
from stages.errors import VlaError
from stages.model.config import ModelConfig
from stages.model.vla import VLAModel, build_model

FLOP_METHOD = ("torch.utils.flop_counter.FlopCounterMode on a forward pass of one sample, math attention backend; "
               "counts matrix multiplies (attention included), not elementwise ops")


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_sample(model: VLAModel) -> dict[str, Any]:
    cfg = model.config
    v, lang, a = cfg.vision, cfg.language, cfg.action
    backend = cfg.attention
    model.set_attention_backend("math")
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, v.frames, 3, v.image_size, v.image_size), dtype=torch.uint8, generator=gen)
    text = " ".join(["move"] * lang.max_len)  # truncated to max_len tokens by either tokenizer
    action = torch.randn(1, a.horizon, a.action_dim, generator=gen)
    state = torch.randn(1, a.state_dim, generator=gen)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            vis = model.encode_vision(frames)
            lan = model.encode_language([text])
            act = model.encode_action(action, state)
            fused = model.fuse(vis, lan)
            forward = {
                "vision": _count(lambda: model.encode_vision(frames)),
                "language": _count(lambda: model.encode_language([text])),
                "action": _count(lambda: model.encode_action(action, state)),
                "fusion": _count(lambda: model.fuse(vis, lan)),
                "heads": _count(lambda: (model.policy(fused, state), model.decode_action(act), model.cycle(vis.z))),
            }
            mvm = _count(lambda: model.mvm(frames, generator=torch.Generator().manual_seed(0)))
        model.train(was_training)
    finally:
        model.set_attention_backend(backend)
    total = sum(forward.values())
    return {
        "method": FLOP_METHOD,
        "inputs": {"frames": v.frames, "image_size": v.image_size, "vision_tokens": int(vis.tokens.shape[1]),
                   "text_tokens": int(lan.tokens.shape[1]), "horizon": a.horizon},
        "forward": {**forward, "total": total},
        "mvm_forward": mvm,
        "train_step_estimate": 3 * total,
    }


def model_info(preset: str | ModelConfig, **overrides: Any) -> dict[str, Any]:
    """The `model-info` artifact for a preset (with overrides)."""
    model = build_model(preset, **overrides)
    info = {
        "schema_version": 1,
        "preset": model.config.preset,
        "config": model.config.to_dict(),
        "parameters": model.parameter_counts(),
        "flops_per_sample": flops_per_sample(model),
    }
    errors = schema_errors(info, "model-info") + schema_errors(info["config"], "model-config")
    if errors:
        raise VlaError("model info violates schema `model-info`", caused_by=errors[0])
    return info
