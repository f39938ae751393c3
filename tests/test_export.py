"""`vla export`: the bundle (weights in the chosen dtype, config, logs, probe report, RL init, model card,
manifest), `--require-pass`, `--verify`, and the probe → export → load_policy round trip."""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import pytest
import torch

from stages.artifacts import read_json, sha256_file, write_json
from stages.errors import BadInput
from stages.export import load_policy, verify
from stages.probe import run_probe
from stages.probes.context import ProbeConfig, load_model, windows
from tests.fixtures import flat, probe_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    train = probe_data.train_episodes(per_task=2, heldout_per_task=1, length=24)
    data = probe_data.write(root / "data", train)
    ckpt = probe_data.trained_checkpoint(data, root / "ckpt", steps=3, batch_size=8)  # a few steps: logs and trainer state
    passing = root / "pass.json"
    write_json(passing, run_probe(ckpt, data, only="10", config=ProbeConfig(max_samples=48)), schema="probe-report")
    failing = root / "fail.json"
    write_json(failing, run_probe(ckpt, data, only="3,10", config=ProbeConfig(max_samples=48)), schema="probe-report")
    return {"root": root, "data": data, "ckpt": ckpt, "pass": passing, "fail": failing}


def fixed_inputs(world):
    """Frames, instructions and raw state of four held-out frames."""
    model, _ = load_model(world["ckpt"], torch.device("cpu"))
    from stages.data.lerobot import open_dataset

    ds = open_dataset(world["data"])
    frames = ds.images("observation.images.camera")[:24]
    rows = np.array([3, 9, 15, 21])
    x = windows(frames, rows, model.config.vision.frames, 1)
    state = ds.column("observation.state")[rows]
    return model, x, [ds.tasks[0]] * 4, state


def test_bundle_round_trip_fp32_reproduces_the_policy(cli, world, tmp_path):
    out = tmp_path / "dist" / "tiny"
    result = cli("export", world["ckpt"], "--out", out, "--probe-report", world["pass"], "--require-pass", "--quiet")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["README.md", "config.json", "logs/metrics.jsonl", "manifest.json", "model.safetensors",
                     "probe_report.json", "rl_init.json"]
    manifest = read_json(out / "manifest.json", schema="export-manifest")
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {n: sha256_file(out / n) for n in names if n != "manifest.json"}
    assert manifest["source"]["model_sha256"] == sha256_file(world["ckpt"] / "model.safetensors")
    assert manifest["training"]["step"] == 3 and manifest["training"]["tau"] == pytest.approx(0.07, rel=0.05)  # init τ, 3 small steps
    assert manifest["probe"]["gate_passed"] is True

    model, frames, texts, state = fixed_inputs(world)
    policy = load_policy(out)
    got = policy.predict(frames, texts, state)
    with torch.no_grad():
        s = model.normalize("observation.state", torch.as_tensor(state))
        mean, log_std = model.policy(model.fuse(model.encode_vision(frames), model.encode_language(texts)), s)
    assert torch.equal(got["mean"], model.denormalize("action", mean))  # fp32 weights: bit-identical
    std = model.denormalize("action", log_std.exp()) - model.denormalize("action", torch.zeros_like(mean))
    assert torch.allclose(got["std"], std, rtol=0, atol=1e-6)  # std in robot units = σ_norm · action std


def test_bf16_bundle_is_half_the_size_and_close(cli, world, tmp_path):
    out32, out16 = tmp_path / "a", tmp_path / "b"
    assert cli("export", world["ckpt"], "--out", out32, "--quiet").exit_code == 0
    assert cli("export", world["ckpt"], "--out", out16, "--dtype", "bf16", "--quiet").exit_code == 0
    size32, size16 = ((o / "model.safetensors").stat().st_size for o in (out32, out16))
    assert size16 < 0.55 * size32  # 2 bytes a weight instead of 4 (plus a header)
    _, frames, texts, state = fixed_inputs(world)
    a = load_policy(out32).predict(frames, texts, state)["mean"]
    b = load_policy(out16).predict(frames, texts, state)["mean"]
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 per weight); errors compound over ~10 layers
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * float(a.abs().max()))
    assert read_json(out16 / "manifest.json", schema="export-manifest")["dtype"] == "bf16"


def test_rl_init_and_model_card(world, tmp_path):
    from stages.export import export

    out = tmp_path / "b"
    export(world["ckpt"], out, probe_report=world["fail"])
    rl = read_json(out / "rl_init.json", schema="rl-init")
    names = [n for n, _ in load_model(world["ckpt"], torch.device("cpu"))[0].named_parameters()]
    for glob in [*rl["freeze"], *rl["learning_rates"], *rl["unfreeze_later"]["modules"]]:
        assert fnmatch.filter(names, glob), f"glob {glob!r} matches no parameter"
    trainable = [n for n in names if not any(fnmatch.fnmatchcase(n, g) for g in rl["freeze"])]
    assert trainable and all(n.startswith(("heads.policy.", "fusion.")) for n in trainable)
    assert rl["kl"]["coefficient"] == 0.1  # the bundled report's open-set check did not pass: closer to the prior
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "可迁移性体检" in card and "门限未通过" in card and "load_policy" in card


def test_require_pass_refuses_missing_or_failed_reports(cli, world, tmp_path):
    missing = cli("export", world["ckpt"], "--out", tmp_path / "x", "--require-pass")
    assert missing.exit_code == 1 and "no probe report" in flat(missing.stderr)
    failed = cli("export", world["ckpt"], "--out", tmp_path / "x", "--probe-report", world["fail"], "--require-pass")
    assert failed.exit_code == 1 and "failed its gate" in flat(failed.stderr)
    assert not (tmp_path / "x").exists()


def test_report_of_other_weights_is_bad_input(cli, world, tmp_path):
    other = json.loads(world["pass"].read_text(encoding="utf-8"))
    other["checkpoint"]["model_sha256"] = "0" * 64
    write_json(tmp_path / "other.json", other, schema="probe-report")
    result = cli("export", world["ckpt"], "--out", tmp_path / "x", "--probe-report", tmp_path / "other.json")
    assert result.exit_code == 2 and "is the report of other weights" in flat(result.stderr)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("drop", ["config.json", "model.safetensors"])
def test_checkpoint_missing_files_exits_2(cli, world, tmp_path, drop):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        if name != drop:
            (broken / name).write_bytes((world["ckpt"] / name).read_bytes())
    result = cli("export", broken, "--out", tmp_path / "x")
    assert result.exit_code == 2 and f"`{drop}` is missing" in flat(result.stderr)
    assert not (tmp_path / "x").exists()


def test_bad_dtype_and_usage(cli, world, tmp_path):
    assert cli("export", world["ckpt"], "--out", tmp_path / "x", "--dtype", "int8").exit_code == 2
    assert cli("export", world["ckpt"]).exit_code == 2
    assert cli("export", world["ckpt"], "--verify", tmp_path).exit_code == 2
    assert not (tmp_path / "x").exists()


def test_verify_names_the_tampered_file(cli, world, tmp_path):
    out = tmp_path / "bundle"
    assert cli("export", world["ckpt"], "--out", out, "--probe-report", world["pass"], "--quiet").exit_code == 0
    ok = cli("export", "--verify", out)
    assert ok.exit_code == 0 and "6 verified" in flat(ok.stderr)
    report = json.loads((out / "probe_report.json").read_text(encoding="utf-8"))
    report["summary"]["gate_passed"] = not report["summary"]["gate_passed"]  # someone flips the verdict
    (out / "probe_report.json").write_text(json.dumps(report), encoding="utf-8")
    bad = cli("export", "--verify", out)
    assert bad.exit_code == 2 and "file `probe_report.json` was modified" in flat(bad.stderr)
    with pytest.raises(BadInput, match="probe_report.json"):
        load_policy(out)


def test_verify_missing_and_unlisted_files(world, tmp_path):
    from stages.export import export

    out = tmp_path / "bundle"
    export(world["ckpt"], out)
    (out / "extra.bin").write_bytes(b"x")
    with pytest.raises(BadInput, match="`extra.bin` is not in the manifest"):
        verify(out)
    (out / "extra.bin").unlink()
    (out / "rl_init.json").unlink()
    with pytest.raises(BadInput, match="`rl_init.json` is missing"):
        verify(out)


def test_probe_export_load_end_to_end(cli, world, tmp_path):
    report = tmp_path / "probe.json"
    probed = cli("probe", world["ckpt"], "--data", world["data"], "--report", report, "--only", "10", "--quiet")
    assert probed.exit_code == 0, probed.stderr
    out = tmp_path / "dist" / "e2e"
    assert cli("export", world["ckpt"], "--out", out, "--probe-report", report, "--require-pass", "--quiet").exit_code == 0
    assert cli("export", "--verify", out).exit_code == 0
    assert read_json(out / "probe_report.json", schema="probe-report") == read_json(report, schema="probe-report")
    model, frames, texts, state = fixed_inputs(world)
    policy = load_policy(out)
    assert policy.config.to_dict() == model.config.to_dict()
    for (name, p), q in zip(model.state_dict().items(), policy.model.state_dict().values()):
        assert torch.equal(p, q), name
