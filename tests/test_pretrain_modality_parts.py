"""Stage-I building blocks: instruction identity and hard negatives, view augmentations, near-frame
soft targets, dynamics limits from data, the shared training setup, and each recipe lowering its loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.data.augment import ViewAugmentConfig, augment_views
from stages.data.instructions import constraint_signature, hard_negatives, instruction_identity
from stages.errors import BadInput
from tests.fixtures.lerobot_datasets import make_episodes, write_ours
from tests.fixtures.pretrain_data import write_pretrain_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- instructions


def test_paraphrases_in_two_languages_share_an_identity():
    en = instruction_identity("push", "push the puck to the goal, slowly, never faster than 0.3 m/s")
    zh = instruction_identity("push", "把冰球推到目标位置，慢慢来，不超速：速度不超过 0.3 米/秒")
    from_meta = instruction_identity("push", "whatever", [{"kind": "speed_limit", "value": 0.3, "unit": "m/s"}])
    assert en == zh == from_meta == ("push", (("speed_limit", 0.3),), "")
    assert instruction_identity("push", "push the puck to the goal, at most 0.5 m/s") != en  # another limit, another command
    assert instruction_identity("push", "push the puck to the goal") == ("push", (), "")
    # two phrases naming one limit ("stay above the table" + "at least 10 cm up") are one constraint
    assert constraint_signature("reach it, stay above the table, keeping the hand at least 10 cm up") == (("workspace_boundary", 0.1),)


@pytest.mark.parametrize(("text", "removed", "negated"), [
    ("push the puck to the goal, slowly, never faster than 0.3 m/s", "push the puck to the goal",
     "push the puck to the goal, quickly, faster than 0.3 m/s"),
    ("reach the target point, keeping the speed under 0.4 m/s", "reach the target point",
     "reach the target point, keeping the speed over 0.4 m/s"),
    ("push the puck to the goal, never go lower than 8 cm above the table", "push the puck to the goal",
     "push the puck to the goal, go lower than 8 cm above the table"),  # one edit: "lower"/"above" must not both flip
    ("把冰球推到目标位置，慢慢来，不超速：速度不超过 0.3 米/秒", "把冰球推到目标位置", "把冰球推到目标位置，快一点，超速：速度超过 0.3 米/秒"),
    ("开窗，保持在台面 12 厘米以上，不越界", "开窗", "开窗，保持在台面 12 厘米以下，越界"),
])
def test_hard_negatives_known_answers(text, removed, negated):
    identity = instruction_identity("t", text)
    got = {h.kind: h for h in hard_negatives(text, identity)}
    assert got["removed"].text == removed and got["removed"].identity == ("t", (), "")
    assert got["negated"].text == negated and got["negated"].identity == ("t", identity[1], "negated")
    assert got["negated"].identity != identity


def test_no_hard_negatives_without_a_constraint():
    assert hard_negatives("open the drawer", instruction_identity("drawer-open", "open the drawer")) == []


# ----------------------------------------------------------------------------- augmentations


def _frames(b=4, t=2, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)


def test_augment_views_shape_range_and_determinism():
    frames = _frames()
    a = augment_views(frames, ViewAugmentConfig(), generator=torch.Generator().manual_seed(1))
    b = augment_views(frames, ViewAugmentConfig(), generator=torch.Generator().manual_seed(1))
    c = augment_views(frames, ViewAugmentConfig(), generator=torch.Generator().manual_seed(2))
    assert a.shape == frames.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_views_identity_and_one_transform_per_window():
    frames = _frames()
    none = ViewAugmentConfig(max_shift=0.0, min_scale=1.0, brightness=0.0, contrast=0.0, noise_std=0.0)
    out = augment_views(frames, none)
    assert torch.allclose(out, frames.float() / 255.0, atol=1e-5)  # identity grid samples pixel centres exactly (float32 rounding)
    still = frames[:, :1].expand(-1, 3, -1, -1, -1)  # a window of three identical frames
    views = augment_views(still, replace(ViewAugmentConfig(), noise_std=0.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(views[:, 0], views[:, 1]) and torch.equal(views[:, 1], views[:, 2])


# ----------------------------------------------------------------------------- near-frame soft targets


def test_soft_targets_known_answer():
    from stages.pretraining.vision import soft_targets

    episode = torch.tensor([0, 0, 0, 1, 0])
    frame = torch.tensor([10, 12, 20, 10, 10])  # row 4 duplicates row 0
    t = soft_targets(episode, frame, radius=3, weight=0.5)
    expected = torch.tensor([
        [1.0, 0.5, 0.0, 0.0, 1.0],
        [0.5, 1.0, 0.0, 0.0, 0.5],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [1.0, 0.5, 0.0, 0.0, 1.0],
    ])
    assert torch.equal(t, expected)
    assert torch.equal(soft_targets(episode, frame, radius=3, weight=0.5, offset=1, rows=2), expected[1:3])


# ----------------------------------------------------------------------------- dynamics limits


def test_dynamics_limits_from_data(tmp_path):
    """Velocity-like actions on a ramp: Δa = c per step (acc), Δ²a = 0 (jerk). Episode boundaries and
    masked frames carry huge jumps that must not leak into the limits."""
    from stages.data.loader import LoaderConfig, build_loader
    from stages.pretraining.action import dynamics_limits

    eps = make_episodes((20, 20, 20), size=32, splits=["train", "train", "val"], masked={1: slice(5, 7)})
    for i, ep in enumerate(eps):
        ramp = (np.arange(ep.length, dtype=np.float32) * 0.1 + 3.0 * i)[:, None]  # per-episode offset: a jump at each boundary
        action = np.repeat(ramp, 3, axis=1) * np.array([1.0, 2.0, -1.0], np.float32)
        if i == 1:
            action[5:7] = 50.0  # garbage in the masked (invalid) frames
        ep.vectors["action"] = action
    ds = write_ours(tmp_path / "ramp", eps)
    loader = build_loader(ds, LoaderConfig(batch_size=4, chunk=4), split="train", seed=0)
    std = np.asarray(loader.norm_stats()["action"]["std"])
    limits = dynamics_limits(loader, signal="velocity", quantile=0.999)
    expected = 0.1 * np.array([1.0, 2.0, 1.0]) / std
    assert expected.min() > 5e-3  # well above the 1e-3 floor, and a leaked jump (≥ 3/std) would be far above it
    np.testing.assert_allclose(limits["acc_max"], expected, rtol=1e-4)  # float32 actions
    assert limits["jerk_max"] == [1e-3] * 3  # zero jerk: the floor
    position = dynamics_limits(loader, signal="position", quantile=0.999)
    assert position["acc_max"] == [1e-3] * 3  # Δ²a = 0


# ----------------------------------------------------------------------------- shared setup


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_pretrain_dataset(tmp_path_factory.mktemp("parts") / "aligned")


def test_prepare_fills_the_model_from_the_dataset(dataset):
    from stages.training.setup import SetupConfig, prepare, restrict_trainable

    setup = prepare(SetupConfig(data=dataset, needs=(("image", None),)), batch_size=4)
    c = setup.model.config
    assert (c.vision.image_size, c.vision.frames, c.action.action_dim, c.action.state_dim, c.action.horizon) == (32, 2, 3, 4, 16)
    assert c.norm_stats == setup.train_loader.norm_stats()
    assert setup.eval_loader is not None and setup.eval_loader.split == "heldout"
    names = restrict_trainable(setup.model, ("action.", "heads.chunk."))
    assert names and all(n.startswith(("action.", "heads.chunk.")) for n in names)
    assert {n for n, p in setup.model.named_parameters() if p.requires_grad} == set(names)


def test_select_device_and_run_directory(tmp_path):
    from stages.training.setup import run_directory, select_device

    assert select_device("cpu") == ("cpu", "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA device"):
            select_device("cuda")
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(BadInput, match="already exists"):
        with run_directory(out):
            pass
    with pytest.raises(RuntimeError):  # --overwrite: a failed run leaves the old OUT untouched
        with run_directory(out, overwrite=True) as tmp:
            assert tmp != out
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("training failed")
    assert (out / "old.txt").exists() and not (out / "new.txt").exists()
    with run_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (out / "new.txt").exists() and not (out / "old.txt").exists()


# ----------------------------------------------------------------------------- each recipe lowers its loss


@pytest.mark.parametrize(("modality", "watched", "steps"), [
    ("vision", ("mvm", "view_nce"), 25), ("language", ("paraphrase_nce",), 25), ("action", ("bc",), 40)])
def test_loss_goes_down_on_a_fixed_batch(dataset, tmp_path, modality, watched, steps):
    """Training on one batch lowers that batch's loss, measured with the same random masks and
    augmentations before and after (the global RNG is re-seeded; mean over three draws)."""
    from stages.pretrain_modality import MODALITIES, PretrainConfig
    from stages.training.loop import TrainConfig, Trainer
    from stages.training.optim import OptimConfig
    from stages.training.setup import SetupConfig, prepare, restrict_trainable

    spec = MODALITIES.get(modality)
    setup = prepare(SetupConfig(data=dataset, needs=spec.needs, eval=False), batch_size=8)
    restrict_trainable(setup.model, spec.trains)
    recipe = spec.build(PretrainConfig(modality=modality, data=dataset, out=tmp_path), setup)
    batch = setup.train_loader.batch(0)

    def measured() -> float:
        total = 0.0
        for seed in range(3):
            torch.manual_seed(seed)
            with torch.no_grad():
                losses = recipe.losses(setup.model, batch, 0, None)
            total += sum(float(losses[k]) for k in watched)
        return total / 3

    before = measured()
    cfg = TrainConfig(steps=steps, seed=0, device="cpu", eval_every=0, grad_stats_every=0, loss_weights=dict(spec.loss_weights),
                      optim=OptimConfig(lr=1e-3))
    Trainer(setup.model, recipe, [batch] * steps, config=cfg, out_dir=tmp_path / "run").fit()
    after = measured()
    assert after < 0.9 * before, (before, after)  # a fair claim on a memorised batch: at least 10 % lower
