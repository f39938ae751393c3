"""The VLA model (CONTRACTS §D): config, shapes of every API, determinism, masked video, logit scale, heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.artifacts import schema_errors
from stages.errors import BadInput
from stages.model import (MODALITY_PREFIXES, PRESETS, ModelConfig, VLAModel, build_model, energy_score,
                          resolve_config)
from stages.model.vision import patchify, tube_mask

B, T, H, DA, DS = 3, 2, 16, 4, 8
TEXTS = ["push the puck to the goal", "把杯子推到目标位置，不要越界", "open the drawer"]


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(B, H, dtype=torch.bool)
    valid[1, 10:] = False  # a chunk running past its episode's end
    return {
        "frames": torch.randint(0, 256, (B, T, 3, 64, 64), dtype=torch.uint8, generator=g),
        "instruction": TEXTS,
        "state": torch.randn(B, DS, generator=g),
        "action": torch.randn(B, H, DA, generator=g),
        "action_valid": valid,
    }


@pytest.fixture(scope="module")
def tiny() -> VLAModel:
    torch.manual_seed(0)
    return build_model("tiny").eval()


# ----------------------------------------------------------------------------- config


def test_presets_registered_and_unknown_lists_them():
    assert PRESETS.names() == ["base", "small", "tiny"]
    with pytest.raises(BadInput) as exc:
        build_model("huge")
    assert "huge" in exc.value.message and "base, small, tiny" in exc.value.caused_by


def test_config_round_trip_and_schema():
    for name in PRESETS:
        cfg = resolve_config(name)
        d = cfg.to_dict()
        assert d["schema_version"] == 1
        assert schema_errors(d, "model-config") == []
        assert ModelConfig.from_dict(d) == cfg
        assert ModelConfig.from_dict(d).digest() == cfg.digest()
    small = resolve_config("small")
    assert 256 <= small.z_dim <= 1024 and 256 <= resolve_config("base").z_dim <= 1024


def test_config_rejects_unknown_and_mistyped_fields():
    d = resolve_config("tiny").to_dict()
    d["vision"]["dpth"] = 3
    with pytest.raises(BadInput, match="vision.dpth"):
        ModelConfig.from_dict(d)
    d = resolve_config("tiny").to_dict()
    d["width"] = "wide"
    with pytest.raises(BadInput, match="`width` must be int"):
        ModelConfig.from_dict(d)
    with pytest.raises(BadInput, match="num_heads"):
        resolve_config("tiny", num_heads=5)  # 96 is not a multiple of 5
    with pytest.raises(BadInput, match="action.horizon"):
        resolve_config("tiny", action={"horizon": 17})


def test_overrides_nested_dotted_and_unknown():
    cfg = resolve_config("tiny", attention="math", vision={"depth": 1}, **{"action.state_dim": 9})
    assert (cfg.attention, cfg.vision.depth, cfg.action.state_dim) == ("math", 1, 9)
    assert cfg.vision.patch_size == resolve_config("tiny").vision.patch_size  # a merge, not a replacement
    with pytest.raises(BadInput, match="unknown model config field `vision.nope`"):
        resolve_config("tiny", vision={"nope": 1})


def test_tiny_size_budget():
    # the CPU demo preset must stay small (brief: ~0.5-2 M parameters)
    n = build_model("tiny").parameter_counts()["all"]["total"]
    assert 500_000 <= n <= 2_000_000


# ----------------------------------------------------------------------------- shapes of every API


def test_encoder_shapes(tiny):
    cfg, x = tiny.config, batch()
    d, z = cfg.width, cfg.z_dim
    with torch.no_grad():
        v = tiny.encode_vision(x["frames"])
        lang = tiny.encode_language(x["instruction"])
        a = tiny.encode_action(x["action"], x["state"], x["action_valid"])
        fused = tiny.fuse(v, lang)
        mean, log_std = tiny.policy(fused, x["state"])
        rec_mean, rec_log_std = tiny.decode_action(a)
        la_vl, va = tiny.cycle(v.z)
    ns = (64 // cfg.vision.patch_size) ** 2
    assert v.tokens.shape == (B, T * ns, d) and v.pooled.shape == (B, d) and v.z.shape == (B, z)
    L = lang.tokens.shape[1]
    assert lang.mask.shape == (B, L) and lang.mask.dtype == torch.bool and lang.pooled.shape == (B, d)
    assert lang.z.shape == (B, z)
    # Chinese is 3 UTF-8 bytes per character: the byte tokenizer keeps it (BOS + bytes + EOS)
    assert int(lang.mask[1].sum()) == len(TEXTS[1].encode("utf-8")) + 2
    assert a.tokens.shape == (B, 1 + H, d) and a.pooled.shape == (B, d) and a.z.shape == (B, z)
    assert fused.shape == (B, d)
    assert mean.shape == log_std.shape == rec_mean.shape == rec_log_std.shape == (B, H, DA)
    assert la_vl.shape == va.shape == (B, z)


def test_z_is_not_normalised(tiny):
    with torch.no_grad():
        z = tiny.encode_vision(batch()["frames"]).z
    assert not torch.allclose(z.norm(dim=-1), torch.ones(B))


def test_bad_shapes_are_bad_input(tiny):
    x = batch()
    with pytest.raises(BadInput, match="frames"):
        tiny.encode_vision(x["frames"][..., :32])
    with pytest.raises(BadInput, match="state"):
        tiny.encode_action(x["action"], x["state"][:, :5], x["action_valid"])
    with pytest.raises(BadInput, match="list of strings"):
        tiny.encode_language("one string")


def test_shorter_history_uses_the_last_temporal_embeddings(tiny):
    x = batch()
    with torch.no_grad():
        one = tiny.encode_vision(x["frames"][:, -1:])
    assert one.tokens.shape[1] == tiny.vision.num_patches


def test_module_prefixes():
    names = {n.split(".")[0] for n in build_model("tiny").state_dict()}
    assert names == {"vision", "language", "action", "fusion", "heads", "logit_scale"}
    keys = build_model("tiny").state_dict().keys()
    for prefixes in MODALITY_PREFIXES.values():
        assert all(any(k.startswith(p) for k in keys) for p in prefixes)
    # each modality checkpoint carries its projection to Z
    assert {"vision.proj.weight", "language.proj.weight", "action.proj.weight"} <= set(keys)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_and_outputs():
    torch.manual_seed(7)
    m1 = build_model("tiny").eval()
    torch.manual_seed(7)
    m2 = build_model("tiny").eval()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    x = batch()
    with torch.no_grad():
        o1 = m1.mvm(x["frames"], 0.75, torch.Generator().manual_seed(3))
        o2 = m2.mvm(x["frames"], 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(o1.mask, o2.mask) and torch.equal(o1.pred, o2.pred)
    torch.manual_seed(8)
    m3 = build_model("tiny")
    assert not torch.equal(m3.state_dict()["vision.patch_embed.weight"], s1["vision.patch_embed.weight"])


# ----------------------------------------------------------------------------- masked video (ch07 §7.2)


def test_patchify_layout_known_answer():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 1, 2, 4, 4)  # C=2, H=W=4
    p = patchify(x, 2)  # [1, 1, 4 patches, 2·2·2]
    assert p.shape == (1, 1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3; pixels (row, col, channel): channel 1 is offset by 16
    assert p[0, 0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_tube_mask_ratio_exact_per_sample(ratio):
    mask = tube_mask(16, 64, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (16, 64)
    assert (mask.sum(dim=1) == round(ratio * 64)).all()
    assert len({tuple(r.tolist()) for r in mask}) > 1  # different patches per sample


def test_mvm_encoder_sees_only_visible_tokens(tiny):
    x = batch()
    seen = []
    hook = tiny.vision.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            out = tiny.mvm(x["frames"], 0.75, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    ns = tiny.vision.num_patches
    n_mask = round(0.75 * ns)
    assert seen == [torch.Size([B, T * (ns - n_mask), tiny.config.width])]
    assert out.vision.tokens.shape == (B, T * (ns - n_mask), tiny.config.width)
    p = tiny.config.vision.patch_size ** 2 * 3
    assert out.pred.shape == out.target.shape == (B, T * n_mask, p)
    assert (out.mask.sum(dim=1) == n_mask).all()


def test_mvm_masked_pixels_never_reach_the_model_and_target_is_the_masked_tube(tiny):
    x = batch()
    p = tiny.config.vision.patch_size
    side = 64 // p
    mask = tube_mask(B, side * side, 0.75, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = tiny.mvm(x["frames"], mask=mask)
        # scribble over every masked patch in every frame: prediction and encoder output must not move
        pix = x["frames"].clone()
        grid = mask.view(B, side, side).repeat_interleave(p, 1).repeat_interleave(p, 2)  # [B, 64, 64] pixels
        pix.masked_fill_(grid[:, None, None], 255)
        moved = tiny.mvm(pix, mask=mask)
    assert not torch.equal(pix, x["frames"])
    assert torch.equal(base.pred, moved.pred) and torch.equal(base.vision.tokens, moved.vision.tokens)
    # raw-pixel target (norm_pix off) equals the normalised pixels of the masked tube, frame-major
    m = build_model("tiny", vision={"norm_pix_target": False}).eval()
    with torch.no_grad():
        out = m.mvm(x["frames"], mask=mask)
    px = (x["frames"].float() / 255 - 0.5) / 0.5
    expect = patchify(px, p)[0][:, mask[0]].reshape(-1, p * p * 3)  # sample 0: [T·Nm, P]
    assert torch.allclose(out.target[0], expect)


def test_mvm_norm_pix_target_is_per_patch_standardised(tiny):
    out = tiny.mvm(batch()["frames"], 0.75, torch.Generator().manual_seed(0))
    # mean 0, variance var/(var+1e-6) ≈ 1 for random patches (var ≈ 0.33 in [-1, 1] units)
    assert out.target.mean(-1).abs().max() < 1e-5
    assert torch.allclose(out.target.var(-1, unbiased=False), torch.ones(()), atol=1e-4)


# ----------------------------------------------------------------------------- logit scale


def test_logit_scale_init_and_clamp():
    m = build_model("tiny")
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.clamped_logit_scale().item() == pytest.approx(math.log(100), abs=1e-6)
    assert m.logit_scale.item() == 10.0  # the forward clamp leaves the parameter alone
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)


# ----------------------------------------------------------------------------- action, fusion, heads


def test_invalid_action_steps_are_padding(tiny):
    x = batch()
    garbage = x["action"].clone()
    garbage[1, 10:] = float("nan")  # whatever sits past the episode's end must not matter
    with torch.no_grad():
        a = tiny.encode_action(x["action"], x["state"], x["action_valid"])
        b = tiny.encode_action(garbage, x["state"], x["action_valid"])
    assert torch.isfinite(b.z).all()
    assert torch.allclose(a.pooled, b.pooled, atol=1e-6)  # same computation; atol for float reorder only


def test_modality_dropout_replaces_a_modality():
    torch.manual_seed(0)
    m = build_model("tiny", fusion={"modality_dropout": 0.5})
    x = batch()
    v, lang = m.encode_vision(x["frames"]), m.encode_language(x["instruction"])
    m.eval()
    keep = torch.zeros(B, dtype=torch.bool)
    drop = torch.tensor([True, False, False])
    clean = m.fuse(v, lang, drop_vision=keep, drop_language=keep)
    assert torch.equal(clean, m.fuse(v, lang))  # eval mode: no dropout
    dropped = m.fuse(v, lang, drop_vision=drop, drop_language=keep)
    assert not torch.allclose(dropped[0], clean[0]) and torch.allclose(dropped[1:], clean[1:])
    # with vision dropped, the fused vector no longer depends on the frames
    other = m.encode_vision(batch(seed=5)["frames"])
    assert torch.allclose(m.fuse(other, lang, drop_vision=drop, drop_language=keep)[0], dropped[0], atol=1e-6)
    m.train()
    dv, dl = m.fusion.sample_dropout(10_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert not (dv & dl).any()
    assert dv.float().mean().item() == pytest.approx(0.25, abs=0.02)  # 3σ of a binomial at n=10⁴ is ≈0.013


def test_policy_is_a_bounded_gaussian_and_film_starts_identity(tiny):
    x = batch()
    with torch.no_grad():
        mean, log_std = tiny.policy(None, x["state"])  # no context: the learned null context
    cfg = tiny.config.heads
    assert mean.shape == (B, H, DA)
    assert (log_std >= cfg.log_std_min).all() and (log_std <= cfg.log_std_max).all()
    fresh = build_model("tiny")
    _, ls = fresh.policy(None, x["state"])
    # the read-out MLP starts near zero, so log σ starts near log_std_init
    assert ls.mean().item() == pytest.approx(cfg.log_std_init, abs=0.1)
    assert torch.count_nonzero(fresh.heads.policy.film.weight) == 0


def test_similarity_logits_and_energy_score_known_answer():
    m = build_model("tiny")
    protos = torch.eye(3, 64)
    z = torch.zeros(2, 64)
    z[0, 0] = 5.0  # identical direction to prototype 0
    z[1, 10] = 1.0  # orthogonal to all prototypes
    logits = m.similarity_logits(z, protos)
    s = 1 / 0.07
    assert torch.allclose(logits, torch.tensor([[s, 0, 0], [0, 0, 0]]), atol=1e-4)
    e = energy_score(logits)
    assert e[0].item() == pytest.approx(-math.log(math.exp(s) + 2), rel=1e-5)
    assert e[1].item() == pytest.approx(-math.log(3), rel=1e-6)
    assert e[0] < e[1]  # a known-task sample has lower energy


def test_norm_stats_saved_and_missing_stat_raises():
    m = build_model("tiny")
    with pytest.raises(BadInput, match="no normalisation stat"):
        m.denormalize("action", torch.zeros(2, 4))
    m.set_norm_stats({"action": {"mean": np.array([1.0, 2.0, 3.0, 4.0]), "std": torch.full((4,), 2.0)}})
    assert m.config.norm_stats["action"]["std"] == [2.0, 2.0, 2.0, 2.0]  # stored as JSON lists
    x = torch.ones(2, 4)
    assert torch.allclose(m.denormalize("action", m.normalize("action", x)), x)
    assert torch.allclose(m.denormalize("action", torch.zeros(1, 4)), torch.tensor([[1.0, 2, 3, 4]]))
    again = ModelConfig.from_dict(m.config.to_dict())
    assert again.norm_stats == m.config.norm_stats


def test_one_training_step_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    m = build_model("tiny", fusion={"modality_dropout": 0.0})
    x = batch()
    v, lang = m.encode_vision(x["frames"]), m.encode_language(x["instruction"])
    a = m.encode_action(x["action"], x["state"], x["action_valid"])
    mean, log_std = m.policy(m.fuse(v, lang), x["state"])
    rec, _ = m.decode_action(a)
    mvm = m.mvm(x["frames"], 0.75, torch.Generator().manual_seed(0))
    la, va = m.cycle(v.z)
    scale = m.clamped_logit_scale().exp()
    loss = (mean - x["action"]).pow(2).mean() + log_std.mean() + rec.pow(2).mean() + (mvm.pred - mvm.target).abs().mean() \
        + (la - va).abs().mean() + scale * (v.z * lang.z).sum(-1).mean() + (a.z * lang.z).sum(-1).mean()
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    # only the stand-ins for absent inputs (no proprio, masked steps, dropped modality, no context) stay untouched
    assert set(missing) == {"action.null_state", "action.mask_token", "fusion.null_vision", "fusion.null_language",
                            "heads.policy.null_context"}
