"""`vla finetune` end to end on a tiny simulator dataset: training, delivered weights, closed loop, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.artifacts import atomic_dir, read_json
from stages.cleaning.constraints import extract
from stages.data.lerobot import AlignedEpisode, open_dataset, write_dataset
from stages.data.loader import LoaderConfig, build_loader
from stages.model import build_model
from stages.objectives import bc_nll
from stages.sim import instructions
from stages.sim.constraints import SPEED_LIMIT, Constraint
from stages.sim.envs import ROBOT_TYPE, SimEnv
from stages.sim.rig import ACTION_COLUMNS, STATE_COLUMNS
from stages.sim.rollout import run_episode
from stages.training import checkpoint
from stages.training.loop import CheckpointConfig, TrainConfig, Trainer
from stages.training.metrics import read_jsonl
from stages.training.optim import OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32  # frames rendered at 32x32: 4 patches of 16 for the tiny ViT
STEPS = 48  # control steps per recorded episode (12 frames at 20 fps)


def record_dataset(out: Path, *, episodes: int = 4, seed: int = 0) -> Path:
    """A LeRobot dataset of reach episodes as align-time would write them from a fault-free recording:
    every 4th control step (20 fps) of the expert rollout, the rig's state columns, the recorded actions."""
    env = SimEnv("reach", height=SIZE, width=SIZE)
    rng = np.random.default_rng(seed)
    eps = []
    try:
        for i in range(episodes):
            constraint = Constraint(SPEED_LIMIT, 0.3) if i % 2 else None
            ro = run_episode(env, 100 + i, STEPS, constraint, camera_every=4)
            k = np.arange(0, STEPS, 4)
            state = np.hstack([ro.ee_pos, ro.ee_vel, np.linalg.norm(ro.ee_vel, axis=1, keepdims=True), ro.gripper[:, None]])[k]
            text = instructions.compose("reach", "en" if i % 3 else "zh", constraint, rng)
            eps.append(AlignedEpisode(
                source_id=f"ep_{i:05d}", instruction=text, images={"observation.images.camera": ro.frames},
                vectors={"observation.state": state.astype(np.float32), "action": ro.action[k].astype(np.float32)},
                names={"observation.state": list(STATE_COLUMNS), "action": list(ACTION_COLUMNS)},
                weight=np.ones(len(k), np.float32), valid=np.ones(len(k), bool),
                meta={"task_name": "reach", "session": "S000", "language": "en", "constraints": extract(text)}))
    finally:
        env.close()
    with atomic_dir(out, overwrite=True) as tmp:
        write_dataset(tmp, eps, fps=20, robot_type=ROBOT_TYPE, vla_meta={"source": "tests"})
    return out


class _AlignStandIn:
    """A minimal recipe standing in for `vla align`: the checkpoint it leaves records stage `align`."""

    stage = "align"

    def losses(self, model, batch, step, phase):
        v, l = model.encode_vision(batch["frames"]), model.encode_language(batch["instruction"])
        mean, log_std = model.policy(model.fuse(v, l), batch["state"])
        return {"bc": bc_nll(mean, log_std, batch["action"], valid=batch["action_valid"])}

    def evaluate(self, model, loader, step):
        return {}

    def state_dict(self):
        return {"stage": self.stage}

    def load_state_dict(self, state):
        pass


def write_checkpoint(out: Path, data: Path, *, stage: str = "align", provides=None) -> Path:
    ds = open_dataset(data)
    loader = build_loader(ds, LoaderConfig(batch_size=4, history=2, chunk=8), split="train", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny", vision={"image_size": SIZE}, action={"horizon": 8})
    model.set_norm_stats(loader.norm_stats())
    recipe = _AlignStandIn()
    recipe.stage = stage
    cfg = TrainConfig(steps=2, device="cpu", log_every=1, optim=OptimConfig(lr=1e-3), checkpoint=CheckpointConfig(provides=provides))
    Trainer(model, recipe, loader, config=cfg, out_dir=out).fit()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("finetune")
    data = record_dataset(root / "aligned")
    align = write_checkpoint(root / "align", data)
    return root, data, align


def _text(res) -> str:
    return " ".join(res.stderr.split())  # rich wraps long lines


def _run(cli, tiny, out: Path, *extra: str):
    root, data, align = tiny
    return cli("finetune", "--init", align, "--data", data, "--out", out, "--steps", "4", "--batch-size", "8",
               "--workers", "1", "--device", "cpu", "--quiet", *extra)


def test_finetune_end_to_end_with_closed_loop(cli, tiny):
    root, data, align = tiny
    out = root / "sft"
    res = _run(cli, tiny, out, "--eval-episodes", "1", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 4 and set(summary["losses"]) == {"bc", "kl", "vl", "la", "va"}  # + alignment retention
    assert summary["constraint_episodes"] == 2 and summary["delivered"] == "ema"
    # the delivered weights are the EMA teacher's; the training weights stay in the final snapshot
    top = checkpoint.load(out)
    snap = checkpoint.load(out / "checkpoints" / "step-000004")
    assert top.trainer_state["recipe"]["stage"] == "finetune"
    for name, w in top.weights.items():
        torch.testing.assert_close(w, snap.state_tensors[f"ema.{name}"], rtol=0, atol=0)
    assert any(not torch.equal(top.weights[n], snap.weights[n]) for n in top.weights)  # EMA ≠ live after 4 steps
    assert checkpoint.latest(out) == out / "checkpoints" / "step-000004"  # --resume continues the training state
    # closed loop: one reach episode (unconstrained at 1 episode per task), scored with the expert on the same seed
    doc = read_json(out / "closed_loop.json", schema="closed-loop-eval")
    (row,) = doc["episodes"]
    assert row["episode"]["seed"] >= 2**32 and row["episode"]["task"] == "reach"
    assert row["expert"]["success"] is True  # the reach expert solves every seed
    assert doc["overall"]["episodes"] == 1 and doc["execution"]["mode"] == "receding_horizon"
    rows = read_jsonl(out / "logs" / "metrics.jsonl")
    last = rows[-1]
    assert last["kind"] == "eval" and last["phase"] == "closed_loop"
    assert last["metrics"]["closed_loop.expert_success_rate"] == 1.0
    assert last["metrics"]["closed_loop.reach.success_rate"] == doc["tasks"]["reach"]["success_rate"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [4]  # one row per 10 steps, and one at the end
    held_out = [r for r in rows if r["kind"] == "eval" and r["phase"] == "main"]
    assert held_out and {"bc_nll", "kl_init", "action_mae", "ema_action_mae", "v2l_r1", "v2l_chance_r1"} <= set(held_out[-1]["metrics"])


def test_finetune_lora_delivers_a_plain_model(cli, tiny):
    root, data, align = tiny
    out = root / "sft-lora"
    res = _run(cli, tiny, out, "--lora", "--eval-episodes", "0", "--ema-decay", "0", "--align-weight", "0", "--json")
    assert res.exit_code == 0, res.stderr
    assert set(json.loads(res.stdout)["losses"]) == {"bc", "kl"}  # --align-weight 0: the policy losses only
    top = checkpoint.load(out, resume=False)
    assert not any(".lora_" in k for k in top.weights if k.startswith(("vision.", "language.")))
    snap = checkpoint.load(out / "checkpoints" / "step-000004", resume=False)
    assert any(k.endswith(".lora_a") for k in snap.weights)  # the training state keeps the factors
    init = checkpoint.load(align, resume=False)
    # frozen backbone parts (position embeddings, norms) are untouched; the wrapped linear layers moved
    for key in ("vision.pos_space", "vision.encoder.blocks.0.norm1.weight"):
        torch.testing.assert_close(top.weights[key], init.weights[key], rtol=0, atol=0)
    assert not torch.equal(top.weights["vision.encoder.blocks.0.attn.qkv.weight"], init.weights["vision.encoder.blocks.0.attn.qkv.weight"])
    from stages.probes.context import load_model  # the delivered checkpoint loads as a plain model

    load_model(out, torch.device("cpu"))


def test_resume_of_a_finished_run_is_idempotent(cli, tiny):
    root, data, align = tiny
    out = root / "sft-resume"
    assert _run(cli, tiny, out, "--eval-episodes", "0").exit_code == 0
    before = checkpoint.load(out, resume=False).weights
    res = _run(cli, tiny, out, "--eval-episodes", "0", "--resume")
    assert res.exit_code == 0, res.stderr
    after = checkpoint.load(out, resume=False).weights
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_not_an_aligned_checkpoint_exits_2_and_writes_nothing(cli, tiny, tmp_path):
    root, data, align = tiny
    vision_only = write_checkpoint(tmp_path / "vision", data, stage="vision", provides=["vision", "heads.mvm", "logit_scale"])
    sft_like = write_checkpoint(tmp_path / "sft-like", data, stage="finetune")
    for init, why in ((vision_only, "the policy also needs"), (sft_like, "written by stage `finetune`"),
                      (tmp_path / "missing", "does not exist")):
        out = tmp_path / f"out-{init.name}"
        res = cli("finetune", "--init", init, "--data", data, "--out", out, "--steps", "2", "--quiet")
        assert res.exit_code == 2, res.stderr
        assert why in _text(res)
        assert not out.exists()


def test_unwritable_or_existing_output_exits_2(cli, tiny, tmp_path):
    root, data, align = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = cli("finetune", "--init", align, "--data", data, "--out", blocker / "sft", "--quiet")
    assert res.exit_code == 2 and "cannot write" in _text(res)
    existing = tmp_path / "exists"
    existing.mkdir()
    res = cli("finetune", "--init", align, "--data", data, "--out", existing, "--quiet")
    assert res.exit_code == 2 and "already exists" in _text(res)
    assert list(existing.iterdir()) == []


def test_closed_loop_needs_a_simulator_dataset(cli, tiny, tmp_path):
    """A dataset whose state columns are not the rig's cannot be evaluated in the simulator: refused up front."""
    root, data, align = tiny
    other = tmp_path / "renamed"
    ds = open_dataset(data)
    import shutil

    shutil.copytree(data, other)
    info = json.loads((other / "meta" / "info.json").read_text())
    info["features"]["observation.state"]["names"] = [f"q{i}" for i in range(len(STATE_COLUMNS))]
    (other / "meta" / "info.json").write_text(json.dumps(info))
    out = tmp_path / "sft"
    res = cli("finetune", "--init", align, "--data", other, "--out", out, "--steps", "2", "--eval-episodes", "1", "--quiet")
    assert res.exit_code == 2 and "names" in _text(res)
    assert not out.exists()
    assert ds.num_episodes == 4


def test_interrupted_run_resumes_bit_identically(tiny, tmp_path):
    """A run killed after its step-2 snapshot, resumed, delivers the weights of an uninterrupted run."""
    import shutil

    from stages.finetune import FinetuneConfig, FinetuneRun, finetune

    root, data, align = tiny

    def run(out, resume=False):
        cfg = FinetuneConfig(steps=4, batch_size=8, lora=True)
        return finetune(FinetuneRun(init=align, data=data, out=out, config=cfg, eval_episodes=0, device="cpu",
                                    checkpoint_every=2, resume=resume))

    run(tmp_path / "straight")
    cut = tmp_path / "cut"
    run(cut)
    for p in cut.iterdir():  # keep only what a run killed between steps 2 and 4 leaves: the step-2 snapshot and logs
        if p.is_file():
            p.unlink()
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    assert run(cut, resume=True)["resumed_from"] == 2
    a, b = checkpoint.load(tmp_path / "straight", resume=False).weights, checkpoint.load(cut, resume=False).weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
