"""Checkpoints: layout, exact resume, atomic saves, --init merge and its error messages."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from stages.artifacts import read_json, schema_errors
from stages.errors import BadInput
from stages.training import checkpoint, determinism
from stages.training.loop import CheckpointConfig
from stages.training.metrics import read_jsonl
from tests.test_engine import ToyModel, ToyRecipe, make_trainer

RESUME_FILES = ["config.json", "model.safetensors", "optimizer.json", "optimizer.safetensors", "trainer_state.json",
                "trainer_state.safetensors"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, no tolerance


def run(out: Path, **kw):
    kw.setdefault("checkpoint", CheckpointConfig(every=3, keep_last=2))
    return make_trainer(out, ema_decay=0.9, steps=kw.pop("steps", 8), eval_every=kw.pop("eval_every", 4), **kw)


# ----------------------------------------------------------------------------- layout


def test_checkpoint_layout(tmp_path):
    out = tmp_path / "ckpt"
    run(out, steps=9).fit()
    assert sorted(p.name for p in out.iterdir()) == sorted([*RESUME_FILES, "checkpoints", "logs"])
    assert [p.name for p in checkpoint.snapshots(out)] == ["step-000006", "step-000009"]  # keep_last=2
    snap = out / "checkpoints" / "step-000006"
    assert sorted(p.name for p in snap.iterdir()) == sorted([*RESUME_FILES, "logs"])
    with safetensors.safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    config = read_json(out / "config.json", schema="checkpoint-config")
    assert meta["format_version"] == "1" and meta["preset"] == "toy" and meta["step"] == "9"
    assert meta["config_digest"] == checkpoint.config_digest(config)
    state = read_json(out / "trainer_state.json", schema="trainer-state")
    assert state["step"] == 9 and state["data"] == {"epoch": 1, "position": 3, "loader": None}  # 6 batches per epoch
    assert state["ema"] == {"decay": 0.9, "updates": 9} and state["recipe"]["seen"] == 72
    tensors = weights(out / "trainer_state.safetensors")
    assert {k for k in tensors if k.startswith("rng.")} == {"rng.0.torch", "rng.0.numpy", "rng.0.python"}
    assert all(tensors[k].dtype == torch.uint8 for k in tensors if k.startswith("rng."))
    assert "ema.vision.0.weight" in tensors
    groups = read_json(out / "optimizer.json", schema="optimizer-state")["param_groups"]
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    # only the final checkpoint's logs grow; a snapshot's logs stop at its step
    assert max(r["step"] for r in read_jsonl(snap / "logs" / "metrics.jsonl")) == 6
    assert max(r["step"] for r in read_jsonl(out / "logs" / "metrics.jsonl")) == 9


def test_rng_state_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gauss_next in python's state
    state = determinism.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    determinism.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2:] == again[2:]


# ----------------------------------------------------------------------------- resume


def test_resume_is_bit_identical(tmp_path):
    """Kill at step 9 (snapshots at 4 and 8; 6 batches per epoch, so the resume point lies in the
    second epoch), resume, finish: same weights, optimizer, EMA, recipe state, logs."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    every = CheckpointConfig(every=4, keep_last=2)
    run(full, steps=10, checkpoint=every).fit()
    with pytest.raises(KeyboardInterrupt):
        run(cut, steps=10, checkpoint=every, recipe=ToyRecipe(stop_at=9)).fit()
    assert not (cut / "model.safetensors").exists()  # no final checkpoint from a killed run
    assert [p.name for p in checkpoint.snapshots(cut)] == ["step-000004", "step-000008"]
    summary = run(cut, steps=10, checkpoint=every, resume=True).fit()
    assert summary["resumed_from"] == 8
    for name in ["model.safetensors", "optimizer.safetensors", "trainer_state.safetensors"]:
        a, b = weights(full / name), weights(cut / name)
        assert_same_tensors(a, b)
    state_a, state_b = (read_json(d / "trainer_state.json", schema="trainer-state") for d in (full, cut))
    for key in ["step", "data", "last_losses", "loss_weights", "recipe", "ema", "last_eval"]:
        assert state_a[key] == state_b[key], key
    # metrics rows after step 3 were replaced, not duplicated: the logs match except wall-clock fields
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(full / "logs" / "metrics.jsonl")) == strip(read_jsonl(cut / "logs" / "metrics.jsonl"))


def test_resume_from_a_hard_killed_process(tmp_path):
    """SIGKILL (no cleanup at all) in the middle of a run; the resumed run ends like an uninterrupted one."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(full).fit()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "tests.test_checkpoint", str(cut)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not list(cut.glob(".*tmp*")) and not list((cut / "checkpoints").glob(".*"))  # temp dirs left behind: none
    run(cut, resume=True).fit()
    assert_same_tensors(weights(full / "model.safetensors"), weights(cut / "model.safetensors"))


def test_resume_without_checkpoint_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="nothing to resume"):
        run(tmp_path / "none", resume=True).fit()


def test_resume_with_another_model_config_is_bad_input(tmp_path):
    out = tmp_path / "run"
    run(out, steps=3).fit()
    trainer = run(out, steps=6, resume=True)
    trainer._model_config = {**trainer.model_config(), "width": 32}
    with pytest.raises(BadInput, match="model config differs"):
        trainer.fit()


def test_files_of_different_steps_are_refused(tmp_path):
    out = tmp_path / "run"
    run(out, steps=6).fit()
    shutil.copy(out / "checkpoints" / "step-000003" / "optimizer.safetensors", out / "optimizer.safetensors")
    with pytest.raises(BadInput, match="mixes files of different steps"):
        checkpoint.load(out)


def test_a_second_run_never_appends_to_the_first(tmp_path):
    out = tmp_path / "run"
    run(out, steps=3).fit()
    with pytest.raises(BadInput, match="already holds a training run"):
        run(out, steps=3)


def test_resume_removes_what_a_killed_save_left(tmp_path):
    out = tmp_path / "run"
    run(out, steps=3).fit()
    (out / "checkpoints" / ".step-000006.tmp-1-abcd").mkdir()
    (out / ".final-1-abcd").mkdir()
    run(out, steps=4, resume=True).fit()
    assert [p.name for p in checkpoint.snapshots(out)] == ["step-000003"]
    assert not list(out.glob(".*")) and not list((out / "checkpoints").glob(".*"))


# ----------------------------------------------------------------------------- atomic writes


def test_failed_snapshot_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 5:  # 4 files per snapshot: the 2nd snapshot's first file
            raise OSError("disk full")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        run(out, steps=8).fit()
    assert [p.name for p in checkpoint.snapshots(out)] == ["step-000003"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]  # no temp dir left
    assert checkpoint.load(out / "checkpoints" / "step-000003").step == 3


def test_failed_final_save_keeps_the_previous_final(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out, steps=3).fit()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(checkpoint, "write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        checkpoint.save_final(out, checkpoint.load(out / "checkpoints" / "step-000003"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(out.glob(".final-*"))


# ----------------------------------------------------------------------------- --init


def save_module(out: Path, model: torch.nn.Module, provides: list[str] | None) -> Path:
    ck = checkpoint.Checkpoint(step=1, weights=model.state_dict(), model_config=model.config.to_dict(), preset="toy", provides=provides)
    checkpoint.save_final(out, ck)
    return out


def test_init_merges_by_module_prefix(tmp_path):
    vision_src, language_src = ToyModel(seed=1), ToyModel(seed=2)
    dirs = [save_module(tmp_path / "vision", vision_src, ["vision"]), save_module(tmp_path / "language", language_src, ["language", "heads"])]
    target = ToyModel(seed=3)
    untouched = target.action.weight.detach().clone()
    owners = checkpoint.merge_init(target, dirs)
    assert owners == {"vision": str(dirs[0]), "language": str(dirs[1]), "heads": str(dirs[1])}
    assert torch.equal(target.vision[0].weight, vision_src.vision[0].weight)
    assert torch.equal(target.language.weight, language_src.language.weight)
    assert torch.equal(target.heads.bias, language_src.heads.bias)
    assert torch.equal(target.action.weight, untouched)


def test_init_mismatch_names_the_first_tensor(tmp_path):
    wide = save_module(tmp_path / "wide", ToyModel(width=32), ["vision"])
    with pytest.raises(BadInput, match=r"tensor `vision.0.weight` has shape \[32, 8\]") as err:
        checkpoint.merge_init(ToyModel(width=16), [wide])
    assert err.value.caused_by == "the model expects [16, 8]"
    # tensors the model does not have: the first in the file's (sorted) order
    extra = ToyModel()
    extra.vision.add_module("3", torch.nn.Linear(2, 2))
    with pytest.raises(BadInput, match="tensor `vision.3.bias` is unexpected"):
        checkpoint.merge_init(ToyModel(), [save_module(tmp_path / "extra", extra, ["vision"])])
    # tensors the checkpoint lacks: the first in the model's order
    with pytest.raises(BadInput, match="tensor `vision.3.weight` is missing"):
        checkpoint.merge_init(extra, [save_module(tmp_path / "plain", ToyModel(), ["vision"])])


def test_init_shared_prefix_comes_from_the_last_init(tmp_path, caplog):
    a_src, b_src = ToyModel(seed=1), ToyModel(seed=2)
    a = save_module(tmp_path / "a", a_src, ["vision.", "logit_scale"])  # a trailing dot is the same prefix
    with torch.no_grad():
        b_src.logit_scale.fill_(1.5)
    b = save_module(tmp_path / "b", b_src, ["language", "logit_scale"])
    target = ToyModel(seed=3)
    with caplog.at_level("WARNING", logger="vla"):
        owners = checkpoint.merge_init(target, [a, b])
    assert owners["logit_scale"] == str(b) and owners["vision"] == str(a)
    assert target.logit_scale.item() == 1.5 and "is in both" in caplog.text


def test_init_missing_files(tmp_path):
    b = save_module(tmp_path / "b", ToyModel(), ["vision"])
    (b / "config.json").unlink()
    with pytest.raises(BadInput, match="`config.json` is missing"):
        checkpoint.merge_init(ToyModel(), [b])
    (b / "model.safetensors").unlink()
    with pytest.raises(BadInput, match="`model.safetensors` is missing"):
        checkpoint.merge_init(ToyModel(), [b])
    with pytest.raises(BadInput, match="does not exist"):
        checkpoint.merge_init(ToyModel(), [tmp_path / "nope"])
    a = save_module(tmp_path / "a", ToyModel(), ["vision"])
    (a / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadInput, match="cannot read"):
        checkpoint.merge_init(ToyModel(), [a])


def test_optimizer_state_is_saved_by_name(tmp_path):
    out = tmp_path / "run"
    trainer = run(out, steps=3)
    trainer.fit()
    tensors = weights(out / "optimizer.safetensors")
    assert "state/vision.0.weight/exp_avg" in tensors and "state/logit_scale/exp_avg_sq" in tensors
    doc = json.loads((out / "optimizer.json").read_text())
    assert schema_errors(doc, "optimizer-state") == []


if __name__ == "__main__":  # the hard-kill test's child: SIGKILL itself at step 5 (snapshot at 3)
    class _Killer(ToyRecipe):
        def losses(self, model, batch, step, phase):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().losses(model, batch, step, phase)

    run(Path(sys.argv[1]), recipe=_Killer()).fit()
