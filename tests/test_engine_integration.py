"""The engine with the real pieces: LeRobot loader (its own state_dict path), the tiny VLA model,
a schedule with two phases (freeze globs, annealed weights, a PCGrad phase), EMA, --init merge."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from stages.data.lerobot import open_dataset
from stages.data.loader import LoaderConfig, build_loader
from stages.errors import BadInput
from stages.model import MODALITY_PREFIXES, build_model
from stages.objectives import info_nce
from stages.training import checkpoint
from stages.training.ema import EMA
from stages.training.loop import CheckpointConfig, TrainConfig, Trainer
from stages.training.metrics import read_jsonl
from stages.training.optim import OptimConfig
from stages.training.schedule import parse_schedule
from tests.fixtures.lerobot_datasets import make_episodes, write_ours

SCHEDULE = {
    "schema_version": 1, "name": "two-phase", "total_steps": 4,
    "phases": [
        {"name": "A", "start": 0, "end": 2, "weights": {"mvm": 1.0, "info_nce": {"curve": "linear", "from": 0.0, "to": 1.0}},
         "freeze": ["language.*"], "combiner": "fixed"},
        {"name": "B", "start": 2, "end": 4, "weights": {"mvm": 0.5, "info_nce": 1.0}, "lr_mult": 0.5,
         "combiner": {"name": "pcgrad", "params": {"seed": 3}}},
    ],
}


class VisionLanguageRecipe:
    """MVM on masked patches + V↔L InfoNCE, weighted by the schedule."""

    def losses(self, model, batch, step, phase):
        out = model.mvm(batch["frames"])
        lang = model.encode_language(batch["instruction"])
        return {"mvm": torch.nn.functional.mse_loss(out.pred, out.target),
                "info_nce": info_nce(out.vision.z, lang.z, model.clamped_logit_scale().exp())}

    def evaluate(self, model, loader, step):
        losses = [self.losses(model, b, step, None)["mvm"] for b in loader]
        return {"mvm": float(torch.stack(losses).mean())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    eps = make_episodes(lengths=(12, 20, 9, 15), size=32, splits=["train", "train", "val", "train"])
    return open_dataset(write_ours(tmp_path_factory.mktemp("eng") / "aligned", eps))


def trainer(dataset, out, **over):
    torch.manual_seed(0)
    model = build_model("tiny", vision={"image_size": 32}, action={"state_dim": 4, "action_dim": 3}, fusion={"modality_dropout": 0.0})
    cfg = LoaderConfig(batch_size=4, history=2, chunk=4)
    train = build_loader(dataset, cfg, split="train", seed=0)
    heldout = build_loader(dataset, cfg, split="heldout", seed=0)
    model.set_norm_stats(train.norm_stats())
    config = TrainConfig(seed=0, device="cpu", log_every=1, grad_stats_every=2, eval_every=2, resume=over.pop("resume", False),
                         optim=OptimConfig(lr=1e-3, warmup_steps=1), checkpoint=CheckpointConfig(every=2, keep_last=0, provides=list(MODALITY_PREFIXES["vision"])))
    return Trainer(model, over.pop("recipe", VisionLanguageRecipe()), train, config=config, out_dir=out,
                   schedule=parse_schedule(json.loads(json.dumps(SCHEDULE))), eval_loader=heldout, ema=EMA(model, 0.9))


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    """An uninterrupted 4-step run; records which phase saw the language tower frozen."""
    out = tmp_path_factory.mktemp("full") / "run"
    first = trainer(dataset, out)
    seen = []
    orig = first.train_step

    def spy(batch, step, phase, **kw):
        seen.append((phase.name, first.model.language.proj.weight.requires_grad, first.model.vision.proj.weight.requires_grad))
        return orig(batch, step, phase, **kw)

    first.train_step = spy
    first.fit()
    return out, seen


def test_schedule_phases_drive_freezing_weights_and_lr(full_run):
    full, seen = full_run
    assert seen == [("A", False, True)] * 2 + [("B", True, True)] * 2  # phase A freezes language.*, B does not
    rows = read_jsonl(full / "logs" / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["phase"] for r in train] == ["A", "A", "B", "B"]
    assert [r["loss_weights"]["info_nce"] for r in train[:2]] == pytest.approx([0.0, 0.5])  # linear 0 → 1 over A
    assert [r["loss_weights"]["mvm"] for r in train] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    # warmup 1 step, then cosine over steps 1..3 from 1e-3 to 1e-4 (min_lr_ratio 0.1); phase B multiplies by 0.5:
    # f(1) = 1, f(2) = 0.1 + 0.45 (1 + cos π/3) = 0.775, f(3) = 0.1 + 0.45 (1 + cos 2π/3) = 0.325
    assert [r["lr"] for r in train] == pytest.approx([1e-3, 1e-3, 0.5 * 0.775e-3, 0.5 * 0.325e-3], rel=1e-12)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]
    grads = read_jsonl(full / "logs" / "gradients.jsonl")
    assert [(g["step"], g["combiner"]) for g in grads] == [(2, "fixed"), (4, "pcgrad")]
    assert (full / "schedule.json").is_file()


@pytest.mark.slow  # three runs of the real model: ~30 s on a loaded 2-core machine
def test_resume_with_the_real_loader_is_bit_identical(dataset, full_run, tmp_path):
    full, _ = full_run
    cut = tmp_path / "cut"

    class Stop(VisionLanguageRecipe):
        def losses(self, model, batch, step, phase):
            if step == 3:
                raise KeyboardInterrupt
            return super().losses(model, batch, step, phase)

    with pytest.raises(KeyboardInterrupt):
        trainer(dataset, cut, recipe=Stop()).fit()
    state = json.loads((cut / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["data"]["loader"] == {"next_batch": 2} and state["phase"] == "A"
    trainer(dataset, cut, resume=True).fit()
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.safetensors"):
        a, b = (safetensors.torch.load_file(str(d / name)) for d in (full, cut))
        assert sorted(a) == sorted(b)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    state = json.loads((cut / "trainer_state.json").read_text())
    assert set(state["combiners"]) == {"fixed", "pcgrad:" + checkpoint.config_digest({"seed": 3})[:8]}


def test_vision_checkpoint_initialises_a_fresh_model(full_run):
    out, _ = full_run
    with safetensors.safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["provides"] == "vision,heads.mvm,logit_scale"
    torch.manual_seed(1)
    fresh = build_model("tiny", vision={"image_size": 32}, action={"state_dim": 4, "action_dim": 3})
    lang_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("language.")}
    owners = checkpoint.merge_init(fresh, [out])
    assert sorted(owners) == ["heads.mvm", "logit_scale", "vision"]
    saved = safetensors.torch.load_file(str(out / "model.safetensors"))
    state = fresh.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if k.startswith(("vision.", "heads.mvm.")))
    assert all(torch.equal(state[k], v) for k, v in lang_before.items())
    wrong = build_model("tiny", vision={"image_size": 64}, action={"state_dim": 4, "action_dim": 3})
    with pytest.raises(BadInput, match="does not match the model: tensor `vision"):
        checkpoint.merge_init(wrong, [out])
