"""`vla probe` through the stage API: the check-up can say no (untrained, damaged, leaked), its
choices and thresholds are validated, and the report is what the schema and docs say."""

from __future__ import annotations

import math

import pytest

from stages.artifacts import schema_errors
from stages.errors import BadInput
from stages.probe import run_probe
from stages.probes import CHECKS, ordered
from stages.probes.context import ProbeConfig
from stages.probes.report import read_thresholds, select
from tests.fixtures import probe_data

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ProbeConfig(max_samples=96)  # the fixture has 6 held-out episodes of 32 frames


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return probe_data.build(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def untrained(world):
    return run_probe(world["ckpt"], world["data"], eval_dir=world["eval"], config=CONFIG)


def by_id(report: dict) -> dict[int, dict]:
    return {c["id"]: c for c in report["checks"]}


# ----------------------------------------------------------------------------- the probe says no


def test_untrained_checkpoint_fails_the_gate(untrained):
    checks = by_id(untrained)
    assert sorted(checks) == list(range(1, 11))
    assert schema_errors(untrained, "probe-report") == []
    # An untrained policy does not follow the teacher: no phase to read (check 1), no retrieval skill to
    # stress (6), no V–A alignment for near frames to degrade (9) — undefined values, never a pass.
    for number in (1, 6, 9):
        assert checks[number]["status"] == "fail" and checks[number]["value"] is None and checks[number]["reason"]
    assert checks[3]["value"] < 0.75  # open set: close to a coin toss (0.5) for random embeddings
    assert checks[4]["value"] > 1.0  # two random cycle heads disagree (unrelated vectors: ≈ 1.41)
    assert checks[8]["value"] > 1.0  # σ_s = 1 against σ_t = 0.5 alone costs 2·1 − log 2 − ½ ≈ 0.81 per dim
    for number in (1, 3, 4, 6, 8, 9):
        assert not checks[number]["passed"] and checks[number]["suggestion"]
    assert checks[10]["status"] == "pass" and checks[10]["value"] == 0.0 and checks[10]["suggestion"] is None
    s = untrained["summary"]
    assert s["passed"] < 8 and not s["gate_passed"] and s["min_pass"] == 8
    assert s["passed"] + s["failed"] + s["skipped"] == s["run"] == 10


def test_report_records_sets_and_teacher_sanity(untrained, world):
    data = untrained["data"]
    assert data["train_tasks"] == ["lift", "push", "reach"] and data["unknown_tasks"] == ["spin", "wave"]
    assert data["heldout_episodes"] == 6  # 3 held-out of --data + 3 known-task episodes of --eval
    compliance = by_id(untrained)[5]["details"]
    assert compliance["teacher_rate"] == 1.0  # the QP-projected teacher obeys its own speed limit
    assert compliance["cases"] == {"recorded": 3, "injected": 3}
    assert any("never faster than" in text or "不超速" in text for text in compliance["examples"])
    h = untrained["health"]
    assert set(h["retrieval"]) == {"V->L", "L->V", "L->A", "A->L", "V->A", "A->V"}
    assert h["calibration"]["bins"] == 15 and h["amat"]["k"] == 5 and len(h["amat"]["matrix"]) == 3
    assert h["amat"]["matrix"][1][1] == 1.0  # L→L leave-one-out: every instruction has a same-task twin
    for pair in ("V-L", "L-A", "V-A"):
        mi = h["mutual_information"][pair]
        assert mi["mi_bound"] == pytest.approx(math.log(mi["n"]) - mi["loss"], abs=1e-9)


def test_damaged_checkpoint_fails_what_the_untrained_one_passed(untrained, world):
    report = run_probe(world["damaged"], world["data"], eval_dir=world["eval"], config=CONFIG, only="2,5,7,8")
    before, after = by_id(untrained), by_id(report)
    assert before[7]["status"] == "pass"
    # pixel noise drives the output: a third of the command now lies beyond the 5 Hz actuator band
    assert after[7]["status"] == "fail" and after[7]["value"] > 2 * before[7]["value"]
    assert after[5]["value"] < 0.1 < before[5]["value"]  # a ×10 policy ignores every speed limit
    assert after[2]["value"] > 2 * before[2]["value"]
    assert after[8]["value"] > 10 * before[8]["value"]
    assert report["summary"] == {"run": 4, "passed": 0, "failed": 4, "skipped": 0, "min_pass": 4, "gate_passed": False}


def test_leaked_eval_episode_is_found(world):
    report = run_probe(world["ckpt"], world["leaky"], eval_dir=world["eval"], config=CONFIG, only="10")
    leak = by_id(report)[10]
    assert leak["status"] == "fail" and leak["value"] == 1.0
    assert leak["details"]["leaked"] == [world["leaked_id"]]
    match = leak["details"]["matches"][0]
    assert match["exact"] and match["b"] == f"copy_of_{world['leaked_id']}"
    assert report["summary"]["gate_passed"] is False and report["summary"]["min_pass"] == 1


def test_open_set_is_skipped_without_unseen_tasks(world):
    report = run_probe(world["ckpt"], world["data"], config=CONFIG, only="3")
    check = by_id(report)[3]
    assert check["status"] == "skipped" and not check["passed"] and "--eval" in check["reason"]
    assert report["summary"]["passed"] == 0 and not report["summary"]["gate_passed"]


# ----------------------------------------------------------------------------- choices and thresholds


def test_registry_order_and_names():
    assert [c.spec.id for c in ordered()] == list(range(1, 11))
    assert len(CHECKS) == 10
    assert [c.spec.name for c in select("5,3,open_set_rejection")] == ["open_set_rejection", "constraint_compliance"]


@pytest.mark.parametrize("only", ["11", "0,3", "latency", "3,,nope"])
def test_unknown_only_is_bad_input(only):
    with pytest.raises(BadInput, match="--only: unknown check"):
        select(only)


def test_thresholds_override_gate_and_params(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("latency_robustness: 40\nspectral_smoothness:\n  threshold: 1.3\n  bandwidth_hz: 4\n"
                    "constraint_compliance:\n  action_unit_mps: 0.5\n  inject: false\n", encoding="utf-8")
    params = read_thresholds(path)
    assert params["latency_robustness"].threshold == 40.0
    assert params["spectral_smoothness"].threshold == 1.3 and params["spectral_smoothness"].bandwidth_hz == 4
    assert params["constraint_compliance"].action_unit_mps == 0.5 and params["constraint_compliance"].inject is False
    assert params["open_set_rejection"].threshold == 0.9  # untouched: the chapter's default


def test_example_thresholds_file_holds_the_defaults():
    from pathlib import Path

    example = read_thresholds(Path(__file__).resolve().parents[1] / "examples" / "probe-thresholds.yaml")
    assert example == read_thresholds(None)  # the documented file and the code agree on every default


def test_same_seed_same_measurements(world):
    a, b = (run_probe(world["ckpt"], world["data"], eval_dir=world["eval"], config=CONFIG, only="5,6") for _ in range(2))
    assert [c["details"] for c in a["checks"]] == [c["details"] for c in b["checks"]]
    assert a["health"] == b["health"]


@pytest.mark.parametrize("text, message", [
    ("lantency_robustness: 40\n", "unknown check `lantency_robustness`"),
    ("spectral_smoothness:\n  bandwith_hz: 4\n", "unknown parameter `spectral_smoothness.bandwith_hz`"),
    ("open_set_rejection: high\n", "field `open_set_rejection` is invalid"),
    ("cycle_consistency:\n  threshold: [1]\n", "is invalid"),
    ("teacher_consistency:\n  teacher_std: 0\n", "field `teacher_consistency.teacher_std` is invalid"),
    ("spectral_smoothness:\n  bandwidth_hz: fast\n", "field `spectral_smoothness.bandwidth_hz` must be float or null"),
    ("schema_version: 2\ncycle_consistency: 0.3\n", "field `schema_version` is invalid"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("a: [\n", "cannot parse thresholds"),
])
def test_bad_thresholds_name_the_field(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BadInput, match=message.replace("[", r"\[")):
        read_thresholds(path)


def test_bandwidth_above_nyquist_is_bad_input(tmp_path, world):
    path = tmp_path / "t.yaml"
    path.write_text("low_bandwidth_executability:\n  bandwidth_hz: 12\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"low_bandwidth_executability.bandwidth_hz` is 12 Hz"):
        run_probe(world["ckpt"], world["data"], thresholds=path, only="7", config=CONFIG)


def test_probe_validates_before_loading(tmp_path, world):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(BadInput, match="`model.safetensors` is missing"):
        run_probe(tmp_path / "ckpt", world["data"], config=CONFIG)
    with pytest.raises(BadInput, match="--eval: dataset"):
        run_probe(world["ckpt"], world["data"], eval_dir=tmp_path / "nope", config=CONFIG)
    with pytest.raises(BadInput, match="--min-pass"):
        run_probe(world["ckpt"], world["data"], min_pass=11, config=CONFIG)


@pytest.mark.slow
def test_trained_checkpoint_passes_what_alignment_teaches(world, untrained, tmp_path_factory):
    """A few hundred steps of the small alignment recipe: retrieval, cycle and stress checks come alive."""
    ckpt = probe_data.trained_checkpoint(world["data"], tmp_path_factory.mktemp("trained") / "ckpt", steps=200, batch_size=32)
    report = run_probe(ckpt, world["data"], eval_dir=world["eval"], config=CONFIG)
    before, after = by_id(untrained), by_id(report)
    assert after[4]["passed"] and after[4]["value"] < 0.1 < before[4]["value"]  # trained with the cycle loss
    assert after[6]["value"] is not None  # V→L retrieval above chance: there is something to stress
    assert after[3]["value"] > before[3]["value"]
    assert report["health"]["retrieval"]["V->L"]["R@1"] > untrained["health"]["retrieval"]["V->L"]["R@1"]
    assert report["summary"]["passed"] > untrained["summary"]["passed"]


def _recorded(episodes, rng):
    """Give every episode its own raw-recording signature, as `vla clean` → `vla align-time` carry it."""
    for ep in episodes:
        ep.meta["recording"] = {"digest": f"{rng.integers(2**63):064x}", "timing": list(rng.uniform(0.0120, 0.0130, 64))}
    return episodes


def test_leak_scan_tells_a_copy_from_a_look_alike_by_recording(world, tmp_path):
    """With recording signatures, a copy of an eval recording is a leak and a content look-alike with
    its own recording is not; the report says which matching it used."""
    import numpy as np

    from stages.data.lerobot import AlignedEpisode

    rng = np.random.default_rng(7)
    train = _recorded(probe_data.train_episodes(per_task=2, heldout_per_task=1, length=32), rng)
    evaluation = _recorded(probe_data.eval_episodes(per_task=1, length=32), rng)
    src = evaluation[probe_data.LEAKED]
    # Another recording of the same motion: content within the near-duplicate thresholds (sensor noise,
    # ±1 grey level), its own clock jitter.
    noisy = {k: (v + rng.normal(0, 1e-3, v.shape) * v.std(axis=0)).astype(np.float32) for k, v in src.vectors.items()}
    frames = {k: np.clip(v.astype(np.int16) + rng.integers(-1, 2, v.shape), 0, 255).astype(np.uint8) for k, v in src.images.items()}
    look_alike = AlignedEpisode(
        source_id="look_alike", instruction=src.instruction, images=frames, vectors=noisy,
        names=dict(src.names), weight=src.weight.copy(), valid=src.valid.copy(), meta={**src.meta, "split": "train"})
    _recorded([look_alike], rng)
    data = probe_data.write(tmp_path / "data", probe_data.leaked(train, evaluation, which=probe_data.LEAKED) + [look_alike])
    eval_dir = probe_data.write(tmp_path / "eval", evaluation)
    leak = by_id(run_probe(world["ckpt"], data, eval_dir=eval_dir, config=CONFIG, only="10"))[10]
    assert leak["details"]["timing"] == "recorded"
    assert leak["details"]["leaked"] == [src.source_id]
    assert [m["b"] for m in leak["details"]["matches"]] == [f"copy_of_{src.source_id}"]
    # Without the signatures the look-alike is a near duplicate on content alone.
    for ep in (*train, *evaluation, look_alike):
        del ep.meta["recording"]
    bare = probe_data.write(tmp_path / "bare", probe_data.leaked(train, evaluation, which=probe_data.LEAKED) + [look_alike])
    eval_bare = probe_data.write(tmp_path / "eval_bare", evaluation)
    content_only = by_id(run_probe(world["ckpt"], bare, eval_dir=eval_bare, config=CONFIG, only="10"))[10]
    assert content_only["details"]["timing"].startswith("unavailable")
    assert sorted(m["b"] for m in content_only["details"]["matches"]) == [f"copy_of_{src.source_id}", "look_alike"]
