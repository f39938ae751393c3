"""The main job, `examples/pipeline.sh`, end to end on a smaller configuration: the same script and
stages, fewer episodes and steps (slow: a few minutes on 2 cores; needs the sim extra)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from stages.artifacts import read_json
from stages.export import verify
from tests.fixtures.align_data import scaled_schedule, write_schedule

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason="needs the sim extra (metaworld, mujoco)"),
]


def test_pipeline_runs_every_stage_on_a_small_configuration(tmp_path):
    schedule = write_schedule(tmp_path / "sched.json", scaled_schedule(((0, 4), (4, 12), (12, 16), (16, 20)), exit_b=False,
                                                                       bogus_glob=False))
    run = tmp_path / "run"
    env = {
        **os.environ, "RUN": str(run), "EPISODES_PER_TASK": "4", "CLOSED_LOOP_EPISODES": "1", "SCHEDULE": str(schedule),
        "SIM_ARGS": "--tasks reach,drawer-close --eval-episodes-per-task 2",
        "PRETRAIN_ARGS": "--steps 6 --batch-size 16", "ALIGN_ARGS": "--batch-size 16",
        "FINETUNE_ARGS": "--steps 6 --batch-size 16", "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(["bash", "examples/pipeline.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Every stage left its artifact, valid against its schema.
    assert (tmp_path / "run" / "raw.truth.json").is_file()  # next to the dataset, never inside it
    clean = read_json(run / "clean" / "clean_report.json", schema="clean-report")
    assert clean["summary"]["kept"] > 0
    aligned = read_json(run / "aligned" / "align_report.json", schema="align-report")
    assert aligned["summary"]["kept"] + aligned["summary"]["downweighted"] > 0
    for name in ("vision", "language", "action", "align", "sft"):
        assert (run / "ckpt" / name / "model.safetensors").is_file(), name
    read_json(run / "ckpt" / "sft" / "closed_loop.json", schema="closed-loop-eval")
    probe = read_json(run / "probe.json", schema="probe-report")
    assert sorted(c["id"] for c in probe["checks"]) == list(range(1, 11))
    verify(run / "dist" / "vla-tiny-demo")  # the bundle's manifest checks out
    html = (run / "report.html").read_text(encoding="utf-8")
    assert html.count("<img") >= 5
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)  # self-contained: nothing to fetch

    # The last lines tell the user where the report and the bundle are.
    assert f"report:  {run}/report.html" in proc.stdout
    assert f"bundle:  {run}/dist/vla-tiny-demo" in proc.stdout
