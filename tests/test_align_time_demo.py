"""Demo data end to end: `vla sim record` -> `vla clean` -> `vla align-time`, scored against the truth file.

Slow (records 16 episodes in MuJoCo, about a minute on one core): run with `pytest -m slow`.
The 200-episode figures of the issue's targets come from `python bench/align_time.py`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason="needs the sim extra (metaworld, mujoco)"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from typer.testing import CliRunner

    from vlacli.app import app

    root = tmp_path_factory.mktemp("demo")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    code, out, err = run("sim", "record", "--out", root / "raw", "--episodes-per-task", "2", "--workers", "1", "--seed", "3",
                         "--json", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    truth = json.loads((root / "raw.truth.json").read_text())
    code, _, err = run("clean", root / "raw", "--out", root / "clean", "--quiet")
    assert code == 0, err
    lag = summary["action_lag_ms"]  # the recorder states the demo robot's plant lag in its summary
    code, out, err = run("align-time", root / "clean", "--out", root / "aligned", "--action-lag-ms", lag, "--json", "--quiet")
    assert code == 0, err
    raw_run = run("align-time", root / "raw", "--out", root / "from_raw", "--action-lag-ms", lag, "--quiet")
    return root, truth, json.loads(out), raw_run


def test_offsets_match_the_truth(demo):
    _, truth, report, _ = demo
    err: dict[str, list[float]] = {}
    for ep in report["episodes"]:
        true = truth["episodes"][ep["episode_id"]]["offset_ms"]
        for stream in ("camera", "imu", "action"):
            err.setdefault(stream, []).append(ep["streams"][stream]["offset_ms"] - (true[stream] - true["state"]))
    err = {k: np.abs(v) for k, v in err.items()}
    assert len(err["camera"]) >= 14  # clean drops the injected duplicates and placeholder texts, not more
    # the targets; on 2 sessions of ~8 short (1–2.6 s) episodes a session can be off by ~15 ms,
    # so the P95 target is checked on 200 episodes by bench/align_time.py and here only the worst case
    assert np.median(err["camera"]) <= 5.0 and err["camera"].max() <= 25.0, err["camera"]
    assert np.median(err["imu"]) <= 5.0 and np.percentile(err["imu"], 95) <= 15.0, err["imu"]
    assert np.median(err["action"]) <= 12.5, err["action"]
    assert report["summary"]["dropped"] == 0


def test_raw_with_timestamp_faults_is_refused(demo):
    _, truth, _, (code, _, err) = demo
    kinds = {f["kind"] for ep in truth["episodes"].values() for f in ep["faults"]}
    if not kinds & {"non_monotonic_timestamps", "duplicate_timestamps"}:
        pytest.skip("this recording has no timestamp faults")
    text = " ".join(err.split())
    assert code == 2 and "field `t` does not increase" in text and "vla clean" in text


def test_aligned_dataset_reads_back(demo):
    from stages.data.lerobot import open_dataset

    root, _, report, _ = demo
    ds = open_dataset(root / "aligned")
    assert ds.num_episodes == report["summary"]["kept"] + report["summary"]["downweighted"]
    assert {"observation.images.camera", "observation.state", "observation.imu", "action"} <= set(ds.features)
    assert ds.features["observation.state"]["names"][:3] == ["ee_x", "ee_y", "ee_z"]
    assert ds.fps == 20 and ds.num_frames == report["summary"]["frames"]


@pytest.mark.skipif(shutil.which("lerobot-doctor") is None, reason="lerobot-doctor is not installed (dev extra)")
def test_lerobot_doctor_accepts_demo_dataset(demo):
    root = demo[0]
    proc = subprocess.run(["lerobot-doctor", "check", str(root / "aligned"), "--ci"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
