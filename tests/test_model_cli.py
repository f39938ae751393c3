"""`vla model info` through the Typer app: counts that match the model, FLOPs with a known answer, bad input."""

from __future__ import annotations

import json

import torch

from stages.artifacts import schema_errors
from stages.model import build_model


def vision_flops(n_tokens: int, patch_dim: int, d: int, hidden: int, depth: int, z: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of the ViT forward on one sample, by hand."""
    per_block = 2 * n_tokens * d * 3 * d + 2 * n_tokens * d * d + 2 * 2 * n_tokens * n_tokens * d \
        + 2 * 2 * n_tokens * d * hidden
    return 2 * n_tokens * patch_dim * d + depth * per_block + 2 * d * z


def test_model_info_json_counts_and_flops(cli):
    result = cli("model", "info", "--preset", "tiny", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert schema_errors(info, "model-info") == []
    model = build_model("tiny")
    for name in ("vision", "language", "action", "fusion", "heads"):
        module = getattr(model, name)
        assert info["parameters"][name]["total"] == sum(p.numel() for p in module.parameters())
    assert info["parameters"]["logit_scale"] == {"total": 1, "trainable": 1}
    assert info["parameters"]["all"]["total"] == sum(p.numel() for p in model.parameters())
    cfg = model.config
    v = cfg.vision
    n = v.frames * (v.image_size // v.patch_size) ** 2
    flops = info["flops_per_sample"]
    assert flops["inputs"]["vision_tokens"] == n
    expect = vision_flops(n, v.patch_size ** 2 * 3, cfg.width, int(cfg.width * cfg.mlp_ratio), v.depth, cfg.z_dim)
    assert flops["forward"]["vision"] == expect
    parts = [flops["forward"][k] for k in ("vision", "language", "action", "fusion", "heads")]
    assert flops["forward"]["total"] == sum(parts) and all(p > 0 for p in parts)
    assert flops["forward"]["vision"] > flops["mvm_forward"] / 2  # MVM's encoder sees a quarter of the tokens
    assert flops["train_step_estimate"] == 3 * flops["forward"]["total"]


def test_model_info_table_and_overrides(cli):
    result = cli("model", "info", "--preset", "tiny", "--set", "vision.depth=1", "--set", "attention=math")
    assert result.exit_code == 0, result.stderr
    assert "vision" in result.stdout and "parameters" in result.stdout
    torch.manual_seed(0)
    total = build_model("tiny", vision={"depth": 1}).parameter_counts()["all"]["total"]
    assert f"{total:,}" in result.stdout


def test_model_info_unknown_preset_is_exit_2(cli):
    result = cli("model", "info", "--preset", "huge")
    assert result.exit_code == 2
    assert "unknown model preset `huge`" in result.stderr and "base, small, tiny" in result.stderr
    assert result.stdout == ""


def test_model_info_bad_override_is_exit_2(cli):
    assert cli("model", "info", "--set", "vision.dpth=2").exit_code == 2
    result = cli("model", "info", "--set", "novalue")
    assert result.exit_code == 2 and "path=value" in result.stderr
