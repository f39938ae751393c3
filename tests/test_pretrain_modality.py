"""`vla pretrain-modality` end to end through the Typer app: layout, logs, provides, bad input, --init merge, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from stages.artifacts import read_json, schema_errors
from stages.training import checkpoint
from stages.training.metrics import read_jsonl
from tests.fixtures.lerobot_datasets import make_episodes, write_ours
from tests.fixtures.pretrain_data import drop_images, without_action, write_pretrain_dataset

FAST = ("--steps", "4", "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "2", "--quiet")
EVAL_KEYS = {
    "vision": {"view_R@1", "near_R@1", "mvm"},
    "language": {"para_R@1", "task_R@1", "negation_cos"},
    "action": {"recon_mae", "bc_mae", "jerk_pred", "jerk_data", "jerk_ratio"},
}
PROVIDES = {"vision": "vision,heads.mvm,logit_scale", "language": "language,logit_scale", "action": "action,heads.chunk"}

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_pretrain_dataset(tmp_path_factory.mktemp("pm") / "aligned")


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """One short run per modality (shared by the tests below); -> {modality: (CliResult, out)}."""
    from typer.testing import CliRunner

    from vlacli.app import app

    root = tmp_path_factory.mktemp("ckpt")
    done = {}
    for modality in ("vision", "language", "action"):
        out = root / modality
        result = CliRunner().invoke(app, ["pretrain-modality", "--modality", modality, "--data", str(dataset), "--out", str(out),
                                          *FAST, "--json"], catch_exceptions=False)
        done[modality] = (result, out)
    return done


def _err(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("modality", ["vision", "language", "action"])
def test_each_modality_writes_a_checkpoint(runs, modality):
    result, out = runs[modality]
    assert result.exit_code == 0, result.stderr
    for name in (*checkpoint.RESUME_FILES, "logs/metrics.jsonl", "checkpoints/step-000002", "checkpoints/step-000004"):
        assert (out / name).exists(), name
    summary = json.loads(result.stdout)
    assert schema_errors(summary, "pretrain-summary") == []
    assert summary["modality"] == modality and summary["steps"] == 4
    # what --init takes from it: the modality's prefixes (ARCHITECTURE §5, MODALITY_PREFIXES)
    weights, meta = _weights(out)
    assert meta["provides"] == PROVIDES[modality]
    assert meta["step"] == "4"
    config = read_json(out / "config.json", schema="checkpoint-config")
    assert set(config["norm_stats"]) == {"observation.state", "action"}
    assert config["vision"]["image_size"] == 32 and config["action"]["action_dim"] == 3 and config["action"]["state_dim"] == 4
    rows = read_jsonl(out / "logs/metrics.jsonl")
    assert all(schema_errors(row, "metrics-log") == [] for row in rows)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    assert EVAL_KEYS[modality] <= set(evals[-1]["metrics"])
    assert all(v is None or v == v for v in evals[-1]["metrics"].values())  # NaN is written as null
    train = [r for r in rows if r["kind"] == "train"]
    assert train and all(r["loss"] is not None for r in train)


def _fresh_init(out: Path):
    """The seeded initial weights every run of the fixture started from (seed 0)."""
    from stages.model import ModelConfig
    from stages.training.setup import build_training_model

    config = ModelConfig.from_dict(read_json(out / "config.json", schema=None))
    return build_training_model(config, norm_stats=config.norm_stats, seed=0)[0].state_dict(), config


TRAINS = {"vision": ("vision.", "heads.mvm.", "logit_scale"), "language": ("language.", "logit_scale"), "action": ("action.", "heads.chunk.")}


@pytest.mark.parametrize("modality", ["vision", "language", "action"])
def test_a_run_trains_only_its_modules(runs, modality):
    """Tensors outside the modality's prefixes keep their seeded initial values; its own moved."""
    weights, _ = _weights(runs[modality][1])
    init, _ = _fresh_init(runs[modality][1])
    mine = [k for k in weights if k.startswith(TRAINS[modality]) or k in TRAINS[modality]]
    others = [k for k in weights if k not in mine]
    assert all(torch.equal(weights[k], init[k]) for k in others), [k for k in others if not torch.equal(weights[k], init[k])][:3]
    moved = [k for k in mine if not torch.equal(weights[k], init[k])]
    assert len(moved) > 0.8 * len(mine)  # a few tensors get no gradient (e.g. the action encoder's null-state token)


def test_init_merges_the_three_checkpoints_by_prefix(runs):
    from stages.model import ModelConfig
    from stages.training.setup import build_training_model

    dirs = [runs[m][1] for m in ("vision", "language", "action")]
    config = ModelConfig.from_dict(read_json(dirs[0] / "config.json", schema=None))
    model, owners = build_training_model(config, norm_stats=config.norm_stats, seed=123, init=dirs)
    assert owners == {"vision": str(dirs[0]), "heads.mvm": str(dirs[0]), "language": str(dirs[1]), "logit_scale": str(dirs[1]),
                      "action": str(dirs[2]), "heads.chunk": str(dirs[2])}
    merged = model.state_dict()
    sources = {m: _weights(d)[0] for m, d in zip(("vision", "language", "action"), dirs)}
    fresh, _ = build_training_model(config, norm_stats=config.norm_stats, seed=123)
    for key, value in merged.items():
        if key.startswith(("vision.", "heads.mvm.")):
            assert torch.equal(value, sources["vision"][key]), key
        elif key.startswith("language.") or key == "logit_scale":
            assert torch.equal(value, sources["language"][key]), key  # logit_scale: language is the later --init providing it
        elif key.startswith(("action.", "heads.chunk.")):
            assert torch.equal(value, sources["action"][key]), key
        else:
            assert torch.equal(value, fresh.state_dict()[key]), key  # fusion and the other heads: the new model's own init


def test_init_through_the_cli_and_a_mismatch_names_the_tensor(cli, runs, dataset, tmp_path):
    ok = cli("pretrain-modality", "--modality", "action", "--data", dataset, "--out", tmp_path / "a2", "--init", runs["action"][1],
             "--steps", "1", "--batch-size", "8", "--eval-every", "0", "--quiet", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["init"] == {"action": str(runs["action"][1]), "heads.chunk": str(runs["action"][1])}
    larger = write_ours(tmp_path / "64px", make_episodes(size=64))  # 4×4 patches: a different vision.pos_space
    bad = cli("pretrain-modality", "--modality", "vision", "--data", larger, "--out", tmp_path / "a3", "--init", runs["vision"][1],
              "--steps", "1", "--quiet")
    assert bad.exit_code == 2
    assert "does not match the model: tensor `vision.pos_space` has shape [4, 96]" in _err(bad)
    assert not (tmp_path / "a3").exists()


# ----------------------------------------------------------------------------- bad input: exit 2, nothing written


def test_vision_needs_an_image_feature(cli, tmp_path):
    data = drop_images(write_pretrain_dataset(tmp_path / "noimg"))
    result = cli("pretrain-modality", "--modality", "vision", "--data", data, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2
    assert "has no image feature" in _err(result) and "noimg/meta/info.json" in "".join(result.stderr.split())
    assert not (tmp_path / "out").exists()


def test_action_needs_the_action_feature(cli, tmp_path):
    data = without_action(tmp_path / "noact")
    result = cli("pretrain-modality", "--modality", "action", "--data", data, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2
    assert "feature `action` is missing" in _err(result)
    assert not (tmp_path / "out").exists()


def test_init_with_missing_files(cli, dataset, runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["vision"][1], broken)
    (broken / "model.safetensors").unlink()
    result = cli("pretrain-modality", "--modality", "vision", "--data", dataset, "--out", tmp_path / "out", "--init", broken, *FAST)
    assert result.exit_code == 2
    assert "`model.safetensors` is missing" in _err(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--preset", "huge", "unknown model preset `huge`"),
    ("--modality", "smell", "unknown modality `smell`"),
    ("--text-encoder", "gpt", "unknown text encoder `gpt`"),
    ("--device", "tpu", "unknown device `tpu`"),
    ("--bc", "mse", "unknown BC loss `mse`"),
])
def test_bad_options(cli, dataset, tmp_path, option, value, message):
    options = {"--modality": "action", option: value}
    result = cli("pretrain-modality", *[x for kv in options.items() for x in kv], "--data", dataset, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2, result.stderr
    assert message in _err(result)
    assert not (tmp_path / "out").exists()


def test_existing_out_is_refused_and_resume_needs_a_run(cli, dataset, runs, tmp_path):
    result = cli("pretrain-modality", "--modality", "vision", "--data", dataset, "--out", runs["vision"][1], *FAST)
    assert result.exit_code == 2 and "already exists" in _err(result)
    result = cli("pretrain-modality", "--modality", "vision", "--data", dataset, "--out", tmp_path / "none", "--resume", *FAST)
    assert result.exit_code == 2 and "nothing to resume" in _err(result)


# ----------------------------------------------------------------------------- resume through the CLI


def test_resume_after_a_kill_is_bit_identical(cli, dataset, runs, tmp_path, monkeypatch):
    """Kill an action run at step 3 (snapshot at step 2), resume it: the weights equal the uninterrupted
    fixture run with the same options (evaluation and snapshots never touch the training RNG)."""
    from stages.pretraining.action import ActionRecipe

    original = ActionRecipe.losses

    def killed_at_step_3(self, model, batch, step, phase):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, model, batch, step, phase)

    args = ("pretrain-modality", "--modality", "action", "--data", dataset, "--out", tmp_path / "cut", *FAST)
    monkeypatch.setattr(ActionRecipe, "losses", killed_at_step_3)
    cut = cli(*args)
    assert cut.exit_code == 130
    assert (tmp_path / "cut/checkpoints/step-000002").is_dir() and not (tmp_path / "cut/model.safetensors").exists()
    monkeypatch.setattr(ActionRecipe, "losses", original)
    resumed = cli(*args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] == 2
    whole, _ = _weights(runs["action"][1])
    again, _ = _weights(tmp_path / "cut")
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole)  # CPU, fixed seed: bit-identical
    rows = read_jsonl(tmp_path / "cut/logs/metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]  # the killed run's rows after step 2 are gone
