"""Pieces of the stage-D recipe on hand-computed cases: KL regulariser, EMA, noise annealing,
constraint weighting, LoRA merge, renormalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stages.artifacts import atomic_dir
from stages.data.lerobot import AlignedEpisode, open_dataset, write_dataset
from stages.finetune import (FinetuneConfig, FinetuneRecipe, Renormalise, annealed, constraint_flags, ema_decay_at,
                             inject_lora, merge_lora, policy_kl, retention_weights)
from stages.model import build_model
from stages.training.ema import EMA

pytestmark = pytest.mark.usefixtures("one_thread")

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def test_policy_kl_known_answer():
    # KL(N(0, 1) ‖ N(1, 2²)) = log 2 + (1 + 1)/8 − ½ per element; 4 action dims summed per step
    per_step = 4 * (math.log(2.0) + 0.25 - 0.5)
    mean = torch.zeros(2, 3, 4)
    log_std = torch.zeros(2, 3, 4)
    ref_mean = torch.stack([torch.ones(3, 4), torch.zeros(3, 4)])  # sample 1 matches its reference exactly
    ref_log_std = torch.stack([torch.full((3, 4), math.log(2.0)), torch.zeros(3, 4)])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    kl = policy_kl(mean, log_std, ref_mean, ref_log_std, valid=valid, weight=torch.tensor([1.0, 3.0]))
    assert float(kl) == pytest.approx((1 * per_step + 3 * 0.0) / 4, rel=1e-6)  # float32 arithmetic
    # the student's side carries the gradient: the KL pulls its mean toward the reference's
    mean.requires_grad_(True)
    policy_kl(mean, log_std, ref_mean, ref_log_std).backward()
    assert float(mean.grad[0].sum()) < 0 and float(mean.grad[1].abs().sum()) == 0.0


def test_ema_with_warm_start_hand_computed():
    assert [ema_decay_at(0.99, s) for s in (0, 1, 2)] == [0.1, 2 / 11, 0.25]
    assert ema_decay_at(0.99, 10_000) == 0.99
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.99)
    for step, live in enumerate((1.0, 2.0, 3.0)):
        with torch.no_grad():
            model.weight.fill_(live)
        ema.decay = ema_decay_at(0.99, step)  # what the recipe does before the engine's update
        ema.update(model)
    # 0.1·0 + 0.9·1 = 0.9;  (2/11)·0.9 + (9/11)·2 = 1.8;  0.25·1.8 + 0.75·3 = 2.7
    assert float(ema.module.weight) == pytest.approx(2.7, abs=1e-6)


def test_noise_anneals_linearly_to_zero():
    assert [annealed(0.1, s, 11) for s in (0, 5, 10)] == pytest.approx([0.1, 0.05, 0.0])
    assert annealed(0.1, 0, 1) == 0.1


def _dataset(tmp_path, instructions, metas):
    eps = []
    for i, (text, meta) in enumerate(zip(instructions, metas)):
        n = 6
        eps.append(AlignedEpisode(
            source_id=f"ep{i}", instruction=text, images={"observation.images.camera": np.zeros((n, 16, 16, 3), np.uint8)},
            vectors={"observation.state": np.zeros((n, 2), np.float32) + i, "action": np.zeros((n, 2), np.float32) + i},
            names={"observation.state": ["a", "b"], "action": ["x", "y"]}, weight=np.ones(n, np.float32), valid=np.ones(n, bool),
            meta={"task_name": "reach", **meta}))
    with atomic_dir(tmp_path / "ds", overwrite=True) as tmp:
        write_dataset(tmp, eps, fps=20, robot_type="test", vla_meta={"source": "tests"})
    return open_dataset(tmp_path / "ds")


def test_constraint_flags_from_clean_meta_else_parsed(tmp_path):
    ds = _dataset(tmp_path, [
        "reach the goal, never faster than 0.3 m/s",  # clean said: no constraint (its decision wins)
        "reach the goal, never faster than 0.3 m/s",  # no clean meta: parsed
        "reach the goal",
        "reach the goal",  # clean found one
    ], [{"constraints": []}, {}, {}, {"constraints": [{"kind": "negation", "phrase": "x", "value": None, "unit": None}]}])
    assert constraint_flags(ds).tolist() == [False, True, False, True]


class _Stub(nn.Module):
    """A policy whose mean is a learnable per-sample offset; log σ = 0."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def encode_vision(self, frames):
        return frames

    def encode_language(self, texts):
        return texts

    def fuse(self, v, l):
        return v

    def policy(self, fused, state):
        b = state.shape[0]
        mean = torch.zeros(b, 2, 2) + self.bias
        return mean, torch.zeros_like(mean)


def _recipe(cfg: FinetuneConfig, identity: np.ndarray) -> FinetuneRecipe:
    """Episodes 7 (unconstrained) and 9 (constrained) at dataset positions 0 and 1; identity stats."""
    unit = {k: {"mean": [0, 0], "std": [1, 1]} for k in ("observation.state", "action")}
    return FinetuneRecipe(cfg, reference=_Stub(), ema=None, constrained=np.array([False, True]), episode_positions={7: 0, 9: 1},
                          renorm=Renormalise(unit, unit), init={"path": "x", "step": 0, "config_digest": "d"}, lora_modules=[],
                          identity=identity)


def _batch() -> dict:
    return {"frames": torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8), "instruction": ["a", "b"], "state": torch.zeros(2, 2),
            "action": torch.stack([torch.zeros(2, 2), torch.ones(2, 2)]), "action_valid": torch.ones(2, 2, dtype=torch.bool),
            "weight": torch.ones(2), "episode_index": torch.tensor([7, 9]), "frame_index": torch.tensor([0, 0])}


class _Embedded(_Stub):
    """The stub with unit embeddings: every modality maps sample i to e_i, and 1/τ = 2."""

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(2.0)))

    def clamped_logit_scale(self):
        return self.logit_scale

    @staticmethod
    def _unit(n):
        return type("E", (), {"z": torch.eye(n)})()

    def encode_vision(self, frames):
        return self._unit(frames.shape[0])

    def encode_language(self, texts):
        return self._unit(len(texts))

    def encode_action(self, action, state, valid):
        return self._unit(action.shape[0])

    def fuse(self, v, l):
        return v.z


def test_retention_terms_known_answer():
    """InfoNCE with 1/τ = 2 on orthonormal pairs: log(1 + e^-2) per row when the two samples are
    different commands; with one command for both episodes V↔L and L↔A take both as positives
    (targets ½, ½): ½ log(1 + e^-2) + ½ log(1 + e^2). V↔A: the episodes differ, so no near frame."""
    cfg = FinetuneConfig(steps=10, align_weight=0.5, pixel_noise=0, state_noise=0, action_noise=0)
    distinct = math.log1p(math.exp(-2.0))
    same = 0.5 * distinct + 0.5 * math.log1p(math.exp(2.0))
    for identity, expected in ((np.array([0, 1]), distinct), (np.array([0, 0]), same)):
        losses = _recipe(cfg, identity).losses(_Embedded(), _batch(), 0, None)
        losses = {k: v.detach() for k, v in losses.items()}
        assert float(losses["vl"]) == pytest.approx(expected, rel=1e-6)
        assert float(losses["la"]) == pytest.approx(expected, rel=1e-6)
        assert float(losses["va"]) == pytest.approx(distinct, rel=1e-6)
    assert retention_weights(0.5) == {"vl": 0.5, "la": 0.5, "va": 0.25}  # ch07 §7.5.1 D ratios
    assert retention_weights(0.0) == {}


def test_constraint_episodes_are_upweighted_in_bc():
    cfg = FinetuneConfig(steps=10, constraint_weight=3.0, align_weight=0, pixel_noise=0, state_noise=0, action_noise=0)
    stub = _Stub()
    recipe = _recipe(cfg, np.array([0, 1]))
    losses = recipe.losses(stub, _batch(), 0, None)
    assert set(losses) == {"bc", "kl"}  # align_weight 0: no retention term
    # NLL per element = ½(a − 0)² + ½ log 2π: 0 for the first sample's target, ½ for the second's
    expected = (1 * HALF_LOG_2PI + 3 * (0.5 + HALF_LOG_2PI)) / 4
    assert float(losses["bc"].detach()) == pytest.approx(expected, rel=1e-6)
    assert float(losses["kl"].detach()) == 0.0  # same stub as its reference
    assert recipe.state_dict()["stage"] == "finetune"


def test_lora_starts_as_the_identity_and_merges_exactly():
    torch.manual_seed(0)
    model = build_model("tiny", vision={"image_size": 32}, action={"horizon": 4}).eval()
    frames = torch.randint(0, 255, (2, 2, 3, 32, 32), dtype=torch.uint8)
    texts = ["reach the target", "按下按钮"]

    def out(m):
        with torch.no_grad():
            return m.fuse(m.encode_vision(frames), m.encode_language(texts))

    before = out(model)
    plain = build_model("tiny", vision={"image_size": 32}, action={"horizon": 4}).eval()
    plain.load_state_dict(model.state_dict())
    wrapped = inject_lora(model, rank=4, alpha=8.0, seed=0)
    assert "vision.encoder.blocks.0.attn.qkv" in wrapped and all(n.startswith(("vision.", "language.")) for n in wrapped)
    torch.testing.assert_close(out(model), before, rtol=0, atol=0)  # B = 0: exactly the pretrained function
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith((".lora_a", ".lora_b")) for n in trainable if n.startswith(("vision.", "language.")))
    assert "fusion.gate.weight" in trainable and "heads.policy.out.fc1.weight" in trainable
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".lora_b"):
                p.normal_(0, 0.05)
    merged = merge_lora(model.state_dict(), wrapped, 8.0 / 4)
    plain.load_state_dict(merged)  # strict: the plain architecture's keys exactly
    torch.testing.assert_close(out(plain), out(model), rtol=1e-4, atol=1e-5)  # float32 reassociation
    assert not torch.allclose(out(plain), before)


def test_merge_lora_known_answer():
    w = {"m.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "m.bias": torch.zeros(2),
         "m.lora_a": torch.tensor([[1.0, 2.0]]), "m.lora_b": torch.tensor([[3.0], [4.0]])}
    merged = merge_lora(w, ["m"], 0.5)
    # W + 0.5 · B·A = I + 0.5 · [[3, 6], [4, 8]]
    torch.testing.assert_close(merged["m.weight"], torch.tensor([[2.5, 3.0], [2.0, 5.0]]))
    assert set(merged) == {"m.weight", "m.bias"}


def test_renormalise_maps_dataset_units_to_the_models():
    model = {"observation.state": {"mean": [1.0], "std": [2.0]}, "action": {"mean": [0.0], "std": [1.0]}}
    data = {"observation.state": {"mean": [3.0], "std": [4.0]}, "action": {"mean": [0.0], "std": [1.0]}}
    r = Renormalise(model, data)
    # raw x = 7: dataset-normalised (7 − 3)/4 = 1, model-normalised (7 − 1)/2 = 3
    assert float(r("observation.state", torch.tensor([1.0]))) == pytest.approx(3.0)
    assert "action" not in r.maps  # identical stats: the identity, no arithmetic
    x = torch.tensor([0.25])
    assert r("action", x) is x


def test_config_rejects_bad_values():
    from stages.errors import BadInput

    for bad in (dict(lr=0.0), dict(ema_decay=1.0), dict(constraint_weight=0.0), dict(kl_weight=-1.0), dict(steps=0)):
        with pytest.raises(BadInput):
            FinetuneConfig(**bad).check()
