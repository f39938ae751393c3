"""`vla align` end to end through the Typer app: layout, logs, early exit, resume exactness, bad schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import torch

from stages.artifacts import read_json, schema_errors
from stages.training import checkpoint
from stages.training.metrics import read_jsonl
from tests.fixtures.align_data import scaled_schedule, stage_one_checkpoints, write_align_dataset, write_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("--batch-size", "4", "--eval-every", "3", "--checkpoint-every", "4", "--log-every", "2", "--grad-stats-every", "1")
STEPS = 10
DIRECTIONS = ("v2l", "l2v", "l2a", "a2l", "v2a")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    data = write_align_dataset(root / "aligned")
    ckpts = stage_one_checkpoints(data, root / "stage1")
    schedule = write_schedule(root / "sched.json", scaled_schedule())
    return {"data": data, "init": ckpts, "schedule": schedule, "root": root}


def _args(inputs, out: Path, schedule: Path | None = None) -> list:
    init = [x for c in inputs["init"] for x in ("--init", c)]
    return ["align", "--schedule", schedule or inputs["schedule"], "--data", inputs["data"], *init, "--out", out, *FAST]


@pytest.fixture(scope="module")
def run(inputs):
    from typer.testing import CliRunner

    from vlacli.app import app

    out = inputs["root"] / "run"
    result = CliRunner().invoke(app, [str(a) for a in _args(inputs, out)] + ["--json"], catch_exceptions=False)
    return result, out


def _err(result) -> str:
    return " ".join(result.stderr.split())  # undo rich's line wrapping


def test_run_writes_an_aligned_checkpoint(run):
    result, out = run
    assert result.exit_code == 0, result.stderr
    for name in (*checkpoint.RESUME_FILES, "schedule.json", "logs/metrics.jsonl", "logs/buckets.jsonl", "logs/gradients.jsonl",
                 "checkpoints/step-000004", "checkpoints/step-000008"):
        assert (out / name).exists(), name
    summary = json.loads(result.stdout)
    assert schema_errors(summary, "align-summary") == []
    assert summary["steps"] == STEPS and summary["batch_size"] == 4
    assert set(summary["init"]) >= {"vision", "language", "action"}
    # finetune takes it as an aligned checkpoint: every module provided, recipe stage `align`
    from stages.finetune import check_aligned

    assert check_aligned(out)["recipe"]["stage"] == "align"


def test_phase_b_exits_early_and_the_schedule_position_is_saved(run):
    result, out = run
    summary = json.loads(result.stdout)
    phases = {p["name"]: p for p in summary["phases"]}
    assert phases["B"]["ended_early_at"] == 3  # first evaluation inside B: v2l_r1 ≥ 0 holds after min_steps 1
    state = read_json(out / checkpoint.STATE, schema="trainer-state")
    assert state["schedule"]["state"] == {"exits": {"B": 3}}
    rows = [r for r in read_jsonl(out / "logs/metrics.jsonl") if r["kind"] == "train"]
    assert {r["step"]: r["phase"] for r in rows}[4] == "C"  # C starts where B ended, not at its planned 6


def test_held_out_retrieval_every_n_steps(run):
    _, out = run
    evals = [r for r in read_jsonl(out / "logs/metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6, 9, 10]
    m = evals[-1]["metrics"]
    for d in DIRECTIONS:
        for k in ("r1", "r5", "r10", "mrr", "chance_r1"):
            assert 0.0 <= m[f"{d}_{k}"] <= 1.0, (d, k)
        assert m[f"{d}_r1"] <= m[f"{d}_r5"] <= m[f"{d}_r10"]
    # 4 held-out episodes, 2 per task: chance of R@1 is the relevant share of each gallery
    assert m["v2l_chance_r1"] == pytest.approx(0.5)  # 2 of the 4 held-out instructions share the query's task
    for name in ("mi_vl", "mi_la", "mi_va"):
        assert m[name] <= m["log_n"] + 1e-9  # I ≥ log N − L with L ≥ 0


def test_bucket_log_rows_every_log_every_steps(run):
    _, out = run
    rows = read_jsonl(out / "logs/buckets.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    for r in rows:
        assert schema_errors(r, "bucket-log") == []
        assert sum(b["p"] for b in r["buckets"]) == pytest.approx(1.0)  # a distribution
    consumed = [sum(b["consumed_total"] for b in r["buckets"]) for r in rows]
    assert consumed == [4.0 * r["step"] for r in rows]  # one token per sample, batch 4 per step
    first = {b["name"]: b for b in rows[0]["buckets"]}
    assert first["vision-hard"]["consumed_total"] == first["vision-hard"]["p"] == 0.0  # phase A's difficulty range [0, 0.5]


def test_gradient_log_has_norms_cosines_and_pcgrad_hits(run):
    _, out = run
    rows = {r["step"]: r for r in read_jsonl(out / "logs/gradients.jsonl")}
    assert set(rows) == set(range(1, STEPS + 1))  # row `step` = steps done; it describes step − 1
    phases = {s: (r["phase"], r["combiner"]) for s, r in rows.items()}
    assert phases[2] == ("A", "fixed") and phases[3] == ("B", "pcgrad") and phases[4] == ("C", "gradnorm")
    assert phases[10] == ("D", "uncertainty")
    b = rows[3]
    assert 0.0 <= b["pcgrad_hit_rate"] <= 1.0
    assert set(b["grad_norms"]) == {"mvm", "bc", "spectral", "vl", "la", "distill"}  # phase B's terms (weight or floor > 0)
    assert all(v >= 0 for v in b["grad_norms"].values())
    assert len(b["cosines"]) == 15 and all(-1.0 - 1e-6 <= c["cos"] <= 1.0 + 1e-6 for c in b["cosines"])  # 6 choose 2, up to rounding
    assert set(rows[4]["gradnorm_weights"]) and set(rows[10]["log_sigma"])


def test_freeze_glob_matching_nothing_warns(run):
    result, _ = run
    assert "phases[3].freeze[0] `no_such_module.*` matches no parameter name" in _err(result)


# ----------------------------------------------------------------------------- resume


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_resume_after_a_kill_restores_buckets_schedule_combiner_and_ema(cli, inputs, run, tmp_path, monkeypatch):
    """Kill a run at step 6 (snapshot at 4, after B's early exit, inside the GradNorm phase C) and
    resume: weights, bucket state, schedule position, combiner states and the EMA teacher equal the
    uninterrupted run's bit for bit (CPU, fixed seed)."""
    from stages.align import AlignRecipe

    original = AlignRecipe.losses

    def killed_at_step_6(self, model, batch, step, phase):
        if step == 6:
            raise KeyboardInterrupt
        return original(self, model, batch, step, phase)

    out = tmp_path / "cut"
    monkeypatch.setattr(AlignRecipe, "losses", killed_at_step_6)
    assert cli(*_args(inputs, out)).exit_code == 130
    monkeypatch.setattr(AlignRecipe, "losses", original)
    resumed = cli(*_args(inputs, out), "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] == 4
    whole, again = run[1], out
    a, b = read_json(whole / checkpoint.STATE, schema="trainer-state"), read_json(again / checkpoint.STATE, schema="trainer-state")
    assert a["data"]["loader"] == b["data"]["loader"]  # bucket state: u_k, consumed, clock; batch counter
    assert a["schedule"] == b["schedule"] and a["combiners"] == b["combiners"] and a["ema"] == b["ema"]
    ta, tb = _tensors(whole / checkpoint.STATE_TENSORS), _tensors(again / checkpoint.STATE_TENSORS)
    kept = [k for k in ta if k.startswith(("ema.", "combiner."))]
    assert any(k.startswith("ema.") for k in kept) and any(k.startswith("combiner.") for k in kept)
    for k in kept:  # bit-identical; GradNorm keeps NaN for the L_i(0) of losses not seen yet
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0, equal_nan=True, msg=k)
    wa, wb = _tensors(whole / checkpoint.MODEL), _tensors(again / checkpoint.MODEL)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_jsonl(again / "logs/buckets.jsonl") == read_jsonl(whole / "logs/buckets.jsonl")


# ----------------------------------------------------------------------------- bad schedules (exit 2, nothing written)


def _bad(doc: dict, edit) -> dict:
    edit(doc)
    return doc


def _set(path, value):
    def edit(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


BAD = [
    ("overlap", _set(["phases", 1, "start"], 1), "phases[1].start", "overlaps the previous phase"),
    ("gap", _set(["phases", 2, "start"], 7), "phases[2].start", "leaves a gap"),
    ("end", _set(["phases", 1, "end"], 2), "phases[1].end", "must be greater than start"),
    ("unknown loss", _set(["phases", 0, "weights", "no_such_loss"], 1.0), "phases[0].weights.no_such_loss", "unknown loss"),
    ("unknown combiner", _set(["phases", 1, "combiner"], {"name": "magic"}), "phases[1].combiner.name", "unknown combiner"),
    ("negative weight", _set(["phases", 2, "weights", "vl"], -1.0), "phases[2].weights.vl", "must be >= 0"),
    ("term align does not compute", _set(["losses", "audio_nce"], {"loss": "info_nce"}), "losses.audio_nce",
     "the align recipe computes no term"),
    ("wrong loss for a term", _set(["losses", "vl"], {"loss": "cycle"}), "losses.vl.loss", "computes `vl` with info_nce"),
    ("coherence band without bins", _set(["losses", "coherence", "params"], {"band": [0.1, 1.0]}), "losses.coherence.params",
     "holds no frequency bin"),
]


@pytest.mark.parametrize("name, edit, field, cause", BAD, ids=[b[0] for b in BAD])
def test_bad_schedule_exits_2_naming_the_field(cli, inputs, tmp_path, name, edit, field, cause):
    path = write_schedule(tmp_path / "bad.json", _bad(scaled_schedule(), edit))
    result = cli(*_args(inputs, tmp_path / "out", path))
    assert result.exit_code == 2, result.stderr
    err = _err(result)
    assert f"field `{field}`" in err and cause in err, err
    assert not (tmp_path / "out").exists()


def test_schedule_without_buckets_is_refused(cli, inputs, tmp_path):
    doc = scaled_schedule()
    del doc["buckets"]
    for phase in doc["phases"]:
        phase.pop("mix", None)
    result = cli(*_args(inputs, tmp_path / "out", write_schedule(tmp_path / "nobuckets.json", doc)))
    assert result.exit_code == 2 and "field `buckets` is missing" in _err(result)
    assert not (tmp_path / "out").exists()
