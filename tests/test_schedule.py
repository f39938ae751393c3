"""Schedule: annealing curves, phase lookup, exit conditions, the ch07 §7.5.1 prototype, bad input."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest

from stages.errors import BadInput
from stages.training.schedule import Curve, check_globs, load_schedule, parse_curve, parse_schedule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tiny(**phase_b) -> dict:
    """A two-phase schedule over 10 steps; keyword arguments patch phase B."""
    return {
        "schema_version": 1,
        "total_steps": 10,
        "losses": {"vl": {"loss": "info_nce"}, "la": {"loss": "info_nce"}},
        "phases": [
            {"name": "A", "start": 0, "end": 4, "weights": {"mvm": 1.0}},
            {"name": "B", "start": 4, "end": 10, "weights": {"vl": {"curve": "linear", "from": 1.0, "to": 0.0}}, **phase_b},
        ],
    }


# ----------------------------------------------------------------------------- curves


def test_annealing_curves_known_answers():
    lin = parse_curve({"curve": "linear", "from": 1.0, "to": 0.0})
    cos = parse_curve({"curve": "cosine", "from": 1.0, "to": 0.0})
    const = parse_curve(0.3)
    assert lin(0.25) == pytest.approx(0.75)
    # cosine: to + (from − to)(1 + cos(πu))/2 → (1 + cos(π/4))/2 at u = 1/4
    assert cos(0.25) == pytest.approx((1 + math.sqrt(2) / 2) / 2)
    assert cos(0.5) == pytest.approx(0.5) and cos(0.0) == 1.0 and cos(1.0) == pytest.approx(0.0)
    assert const(0.9) == 0.3
    # `over`: hold `from` before 0.5, ramp over [0.5, 1]
    late = parse_curve({"curve": "linear", "from": 2.0, "to": 4.0, "over": [0.5, 1.0]})
    assert late(0.25) == 2.0 and late(0.75) == pytest.approx(3.0) and late(1.0) == 4.0
    # vector values (a difficulty range) anneal element-wise
    rng = parse_curve({"curve": "linear", "from": [0.0, 0.5], "to": [0.0, 1.0]})
    assert rng(0.5) == pytest.approx((0.0, 0.75))
    assert Curve("constant", 1.0, 1.0)(0.5) == 1.0


def test_at_anneals_over_the_phase():
    s = parse_schedule(tiny())
    a, b = s.at(3), s.at(7)
    # every term of the schedule has a weight; the ones a phase does not list are 0
    assert (a.name, a.index, a.weights) == ("A", 0, {"vl": 0.0, "la": 0.0, "mvm": 1.0})
    assert (b.name, b.start, b.end) == ("B", 4, 10)
    assert b.progress == pytest.approx(0.5) and b.weights == {"vl": pytest.approx(0.5), "la": 0.0, "mvm": 0.0}
    assert s.loss_names == ["vl", "la", "mvm"]  # declared terms first, then registered names used directly
    assert s.at(4).weights["vl"] == 1.0
    # after the last step (logs written with done == total_steps): the last phase at its end
    assert s.at(10).name == "B" and s.at(10).progress == 1.0 and s.at(10).weights["vl"] == 0.0
    with pytest.raises(ValueError, match="before the schedule"):
        s.at(-1)


def test_phase_fields_and_defaults():
    s = parse_schedule(tiny(
        temperature={"curve": "cosine", "from": 0.1, "to": 0.05},
        lr_mult=0.5, difficulty=[0.2, 0.6], mix={"vision": 2.0}, min_weights={"la": 0.1},
        combiner={"name": "gradnorm", "params": {"alpha": 0.5}},
        ema_decay={"curve": "linear", "from": 0.99, "to": 0.999}, noise=0.1, modality_dropout=0.2,
        freeze=["fusion.*"], unfreeze=["fusion.gate.*", {"glob": "fusion.blocks.*", "at": 0.5}],
    ))
    a, b = s.at(0), s.at(4)
    assert a.temperature is None and a.learn_temperature and a.logit_scale is None
    assert a.combiner == "fixed" and a.lr_mult == 1.0 and a.difficulty == (0.0, 1.0)
    assert b.temperature == pytest.approx(0.1) and b.logit_scale == pytest.approx(10.0) and not b.learn_temperature
    assert (b.lr_mult, b.difficulty, b.mix, b.min_weights) == (0.5, (0.2, 0.6), {"vision": 2.0}, {"la": 0.1})
    assert (b.combiner, b.combiner_params) == ("gradnorm", {"alpha": 0.5})
    assert (b.ema_decay, b.noise, b.modality_dropout) == (pytest.approx(0.99), 0.1, 0.2)
    # progressive unfreezing: the second glob becomes active halfway through B
    assert b.unfreeze == ("fusion.gate.*",) and s.at(7).unfreeze == ("fusion.gate.*", "fusion.blocks.*")
    assert b.is_frozen("fusion.blocks.0.attn.q.weight") and not s.at(7).is_frozen("fusion.blocks.0.attn.q.weight")
    assert not b.is_frozen("fusion.gate.weight") and not b.is_frozen("vision.proj.weight")
    assert b.frozen(["fusion.norm.bias", "vision.x"]) == {"fusion.norm.bias"}


# ----------------------------------------------------------------------------- exit conditions


def test_exit_condition_ends_a_phase_early_and_resumes():
    obj = tiny()
    obj["phases"][0]["exit"] = [{"metric": "r1", "op": ">=", "value": 0.5, "min_steps": 2}]
    s = parse_schedule(obj)
    assert s.check_exit(1, {"r1": 0.9}) is None  # min_steps not reached
    assert s.check_exit(2, {"r1": 0.4}) is None  # below the threshold
    assert s.check_exit(2, {}) is None  # metric absent: never an exit
    assert s.check_exit(2, {"r1": 0.6}) == "A"
    assert s.at(2).name == "B" and s.at(2).start == 2 and s.at(2).progress == 0.0
    assert s.at(6).progress == pytest.approx(0.5)  # B now spans [2, 10)
    state = json.loads(json.dumps(s.state_dict()))
    fresh = parse_schedule(obj)
    fresh.load_state_dict(state)
    assert fresh.at(2).name == "B" and fresh.exits == {"A": 2}


def test_exit_condition_parsed_from_json_and_last_phase_shortens_the_run():
    s = parse_schedule(tiny(exit=[{"metric": "loss", "op": "<", "value": 0.1}]))
    assert s.check_exit(6, {"loss": 0.05}) == "B"
    assert s.end_step == 6 and s.at(8).name == "B"


# ----------------------------------------------------------------------------- the ch07 §7.5.1 prototype


@pytest.mark.parametrize(("file", "total"), [("sched.json", 400), ("sched-full.json", 500_000)])
def test_prototype_schedules_express_the_chapter(file, total):
    s = load_schedule(EXAMPLES / file)
    assert s.total_steps == total
    assert [p.name for p in s.phases] == ["A", "B", "C", "D"]
    # boundaries at 0 / 100k / 300k / 450k / 500k of 500k, scaled
    assert [(p.start, p.end) for p in s.phases] == [
        (0, total // 5), (total // 5, total * 3 // 5), (total * 3 // 5, total * 9 // 10), (total * 9 // 10, total)]
    a, b, c, d = (s.phases[i] for i in range(4))
    assert a.mix == {"vision": 0.60, "action": 0.25, "language": 0.15}
    assert "fusion.*" in a.freeze and {u.glob for u in a.unfreeze} == {"fusion.gate.*", "fusion.norm.*"}
    # B: contrastive 40 / reconstruction 25 / distillation 20 / spectral 15, as phase means of the curves
    mean = lambda name: sum(b.weights[name](k / 1000) for k in range(1001)) / 1001  # noqa: E731
    groups = {"contrastive": ("vl", "la"), "reconstruction": ("mvm", "bc"), "distillation": ("distill",), "spectral": ("spectral",)}
    shares = {g: sum(mean(n) for n in names) for g, names in groups.items()}
    assert shares == pytest.approx({"contrastive": 0.40, "reconstruction": 0.25, "distillation": 0.20, "spectral": 0.15}, abs=1e-3)
    assert set(b.weights) == {n for names in groups.values() for n in names}
    # C: tri-modal with cycle and ch05 §5.6 initial weights, progressive unfreezing; D: SFT + EMA/noise annealing
    mid_c = s.at((c.start + c.end) // 2)
    assert {k: mid_c.weights[k] for k in ("vl", "la", "va", "cycle")} == {"vl": 1.0, "la": 1.0, "va": 0.5, "cycle": 0.2}
    assert len({u.at for u in c.unfreeze}) > 1
    assert "sft" in d.weights and d.ema_decay is not None and d.noise is not None
    assert [p.combiner for p in s.phases] == ["fixed", "pcgrad", "gradnorm", "uncertainty"]
    assert s.at(d.start).lr_mult < 1.0 and s.at(d.start).ema_decay == pytest.approx(0.99)
    assert s.buckets is not None and len(s.buckets.clusters) == 7


def test_check_globs_warns_about_unmatched_globs(caplog):
    s = load_schedule(EXAMPLES / "sched.json")
    names = ["fusion.gate.weight", "fusion.norm.bias", "fusion.blocks.0.attn.q.weight", "fusion.blocks.0.mlp.fc1.weight",
             "fusion.blocks.0.norm2.weight", "fusion.blocks.0.norm_q.weight", "fusion.blocks.0.norm_kv.weight",
             "heads.cycle_vl.mlp.fc1.weight", "language.backbone.embed.weight", "vision.patch_embed.weight",
             "vision.encoder.blocks.0.mlp.fc1.weight"]
    with caplog.at_level(logging.WARNING, logger="vla"):
        assert check_globs(s, names) == []
        missing = check_globs(s, names[:-1])
    assert missing == [f"`{EXAMPLES / 'sched.json'}`: phases[1].freeze[3] `vision.encoder.blocks.0.*` matches no parameter name"]
    assert "vision.encoder.blocks.0.*" in caplog.text


# ----------------------------------------------------------------------------- bad input


def bad(obj: dict, path: str, reason: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_schedule(obj, source="sched.json")
    text = f"{exc.value.message} {exc.value.caused_by}"
    assert f"field `{path}`" in exc.value.message, text
    assert reason in text, text


def test_phase_boundary_errors_name_the_json_path():
    overlap = tiny()
    overlap["phases"][1]["start"] = 3
    bad(overlap, "phases[1].start", "overlaps the previous phase")
    gap = tiny()
    gap["phases"][1]["start"] = 5
    bad(gap, "phases[1].start", "leaves a gap")
    short = tiny()
    short["phases"][1]["end"] = 9
    bad(short, "phases[1].end", "total_steps is 10")
    empty = tiny()
    empty["phases"][1]["end"] = 4
    bad(empty, "phases[1].end", "must be greater than start 4")
    late = tiny()
    late["phases"][0]["start"] = 1
    bad(late, "phases[0].start", "start at step 0")
    twice = tiny()
    twice["phases"][1]["name"] = "A"
    bad(twice, "phases[1].name", "duplicate")


def test_name_errors_ask_the_registries():
    bad(tiny(weights={"telepathy": 1.0}), "phases[1].weights.telepathy", "unknown loss `telepathy`")
    declared = tiny()
    declared["losses"]["vl"]["loss"] = "clip"
    bad(declared, "losses.vl.loss", "unknown loss `clip`")
    params = tiny()
    params["losses"]["vl"]["params"] = {"temperature": 0.1}
    bad(params, "losses.vl.params.temperature", "no parameter `temperature`")
    bad(tiny(combiner="adam"), "phases[1].combiner.name", "unknown combiner `adam`")
    bad(tiny(combiner={"name": "gradnorm", "params": {"beta": 1}}), "phases[1].combiner.params.beta", "no parameter `beta`")
    bad(tiny(min_weights={"ghost": 0.1}), "phases[1].min_weights.ghost", "unknown loss")


def test_value_errors_name_the_json_path():
    bad(tiny(weights={"vl": -1.0}), "phases[1].weights.vl", "must be >= 0")
    bad(tiny(weights={"vl": {"curve": "cosine", "from": 1.0, "to": -0.5}}), "phases[1].weights.vl", "must be >= 0")
    bad(tiny(weights={"vl": {"curve": "linear", "from": 1.0, "over": [0.6, 0.2]}}), "phases[1].weights.vl.over", "over[0] < over[1]")
    bad(tiny(min_weights={"la": -0.1}), "phases[1].min_weights.la", ">= 0")
    bad(tiny(temperature=0.0), "phases[1].temperature", "must be > 0")
    bad(tiny(difficulty=[0.8, 0.2]), "phases[1].difficulty", "lo > hi")
    bad(tiny(difficulty=[0.0, 1.5]), "phases[1].difficulty", "<= 1")
    bad(tiny(unfreeze=[{"glob": "x.*", "at": 1.0}]), "phases[1].unfreeze[0].at", "[0, 1)")
    bad(tiny(mix={"vision": -1.0}), "phases[1].mix.vision", ">= 0")
    bad(tiny(ema_decay=1.5), "phases[1].ema_decay", "<= 1")


def test_schema_errors_name_the_json_path():
    typo = tiny()
    typo["phases"][1]["wieghts"] = typo["phases"][1].pop("weights")
    with pytest.raises(BadInput, match=r"field `phases\[1\]`"):
        parse_schedule(typo, source="sched.json")
    wrong_type = tiny()
    wrong_type["phases"][1]["end"] = "ten"
    with pytest.raises(BadInput, match=r"field `phases\[1\]\.end`"):
        parse_schedule(wrong_type, source="sched.json")
    curve = tiny(weights={"vl": {"curve": "exponential", "from": 1.0}})
    with pytest.raises(BadInput, match=r"field `phases\[1\]\.weights\.vl`"):
        parse_schedule(curve, source="sched.json")


def test_bucket_errors_name_the_json_path():
    base = tiny(mix={"vision": 1.0})
    base["buckets"] = {"clusters": [{"name": "v", "modality": "vision", "capacity": 10.0}]}
    parse_schedule(copy.deepcopy(base))
    unknown = copy.deepcopy(base)
    unknown["phases"][1]["mix"] = {"smell": 1.0}
    bad(unknown, "phases[1].mix.smell", "no bucket cluster has modality `smell`")
    floors = copy.deepcopy(base)
    floors["buckets"]["p_min"] = 0.6
    floors["buckets"]["clusters"].append({"name": "w", "modality": "vision", "capacity": 5.0})
    bad(floors, "buckets.p_min", "sum to 1.2")
    dup = copy.deepcopy(base)
    dup["buckets"]["clusters"].append({"name": "v", "capacity": 5.0})
    bad(dup, "buckets.clusters[1].name", "duplicate")
    cap = copy.deepcopy(base)
    cap["buckets"]["clusters"][0]["capacity"] = 0
    bad(cap, "buckets.clusters[0].capacity", "> 0")
    off = copy.deepcopy(base)
    off["buckets"]["clusters"][0]["difficulty"] = 0.9
    off["phases"][1]["difficulty"] = [0.0, 0.5]
    bad(off, "phases[1]", "switch every bucket cluster off")


def test_load_schedule_names_the_file(tmp_path):
    path = tmp_path / "s.json"
    obj = tiny()
    obj["phases"][1]["start"] = 5
    path.write_text(json.dumps(obj))
    with pytest.raises(BadInput, match=r"s\.json`: field `phases\[1\]\.start`"):
        load_schedule(path)
    with pytest.raises(BadInput, match="no such file"):
        load_schedule(tmp_path / "missing.json")
