"""Token buckets (ch07 §7.6): probabilities over time on a hand-computed case, floors, schedule coupling."""

from __future__ import annotations

import json

import pytest
import torch

from stages.artifacts import schema_errors
from stages.training.buckets import BucketConfig, ClusterSpec, TokenBuckets, apply_floors
from stages.training.schedule import parse_schedule


def probs(buckets: TokenBuckets, step: int) -> list[float]:
    return buckets.probabilities(step).tolist()


def three(gamma: float = 1.0, p_min: float = 0.1) -> TokenBuckets:
    clusters = (
        ClusterSpec("a", capacity=100.0, leak=10.0),
        ClusterSpec("b", capacity=100.0, leak=0.0),
        ClusterSpec("c", capacity=100.0, leak=5.0),
    )
    return TokenBuckets(BucketConfig(clusters=clusters, gamma=gamma, p_min=p_min))


def test_probabilities_over_time_hand_computed():
    tb = three()
    # step 0: all full → uniform
    assert probs(tb, 0) == pytest.approx([1 / 3] * 3)
    tb.consume([60, 30, 90])  # u = [60, 30, 90]
    # step 1: leak r = [10, 0, 5] → u = [50, 30, 85], remaining [50, 70, 15] → / 135 (all ≥ p_min 0.1)
    assert probs(tb, 1) == pytest.approx([50 / 135, 70 / 135, 15 / 135])
    tb.consume({"b": 70})  # u = [50, 100, 85]
    # step 3 (two leaks): u = [30, 100, 75], remaining [70, 0, 25] → raw [70/95, 0, 25/95];
    # b is below the floor: it gets 0.1 and the others share 0.9 in proportion 70 : 25.
    assert probs(tb, 3) == pytest.approx([0.9 * 70 / 95, 0.1, 0.9 * 25 / 95])
    tb.consume([30, 0, 0])  # u = [60, 100, 75]
    # step 13 (ten leaks): u = [max(0, 60 − 100), 100, 75 − 50] = [0, 100, 25] → remaining [100, 0, 75]
    assert probs(tb, 13) == pytest.approx([0.9 * 100 / 175, 0.1, 0.9 * 75 / 175])
    assert tb.used.tolist() == [0.0, 100.0, 25.0] and tb.consumed_total.tolist() == [90.0, 100.0, 90.0]


def test_switched_off_cluster_is_never_sampled_and_gets_no_floor():
    tb = three(p_min=0.1)
    tb.switch_off(["b"])
    # b is off: q_b = 0, so p = remaining of a and c only (equal, full) and b gets no p_min floor.
    assert probs(tb, 0) == pytest.approx([0.5, 0.0, 0.5])
    assert set(tb.sample(200, torch.Generator().manual_seed(0)).tolist()) == {0, 2}
    with pytest.raises(ValueError, match="unknown bucket cluster"):
        tb.switch_off(["z"])


def test_gamma_sharpens_towards_full_buckets():
    tb = three(gamma=2.0, p_min=0.0)
    tb.probabilities(0)
    tb.consume([60, 30, 90])
    # remaining [50, 70, 15] squared: [2500, 4900, 225] / 7625
    assert probs(tb, 1) == pytest.approx([2500 / 7625, 4900 / 7625, 225 / 7625])


def test_floors_water_filling_takes_several_rounds():
    p = torch.tensor([0.5, 0.45, 0.05], dtype=torch.float64)
    floor = torch.tensor([0.0, 0.4, 0.3], dtype=torch.float64)
    eligible = torch.ones(3, dtype=torch.bool)
    # round 1 lifts c to 0.3; a, b share 0.7 as 0.5 : 0.45 → b = 0.3316 < 0.4; round 2 lifts b → a = 0.3
    assert apply_floors(p, floor, eligible).tolist() == pytest.approx([0.3, 0.4, 0.3])
    # an ineligible cluster stays at 0 whatever its floor
    eligible = torch.tensor([True, True, False])
    p = torch.tensor([0.95, 0.05, 0.0], dtype=torch.float64)
    assert apply_floors(p, floor, eligible).tolist() == pytest.approx([0.6, 0.4, 0.0])


def test_empty_buckets_fall_back_to_q():
    tb = three(p_min=0.0)
    tb.probabilities(0)
    tb.consume([100, 100, 100])
    assert probs(tb, 0) == pytest.approx([1 / 3] * 3)  # nothing remains anywhere: q alone decides


def _scheduled(phase_b: dict | None = None) -> TokenBuckets:
    obj = {
        "schema_version": 1,
        "total_steps": 20,
        "phases": [
            {"name": "A", "start": 0, "end": 10, "weights": {"mvm": 1.0}, "mix": {"vision": 0.6, "action": 0.4},
             "difficulty": [0.0, 0.5]},
            {"name": "B", "start": 10, "end": 20, "weights": {"mvm": 1.0}, "mix": {"vision": 0.6, "action": 0.4},
             "task_mix": {"push": 3.0}, **(phase_b or {})},
        ],
        "buckets": {
            "gamma": 1.0,
            "clusters": [
                {"name": "v-easy", "modality": "vision", "task": "reach", "difficulty": 0.2, "capacity": 100},
                {"name": "v-hard", "modality": "vision", "task": "push", "difficulty": 0.9, "capacity": 100},
                {"name": "a", "modality": "action", "task": "reach", "difficulty": 0.2, "capacity": 100},
                {"name": "probe", "difficulty": 0.2, "capacity": 100, "priority": 2.0, "p_min": 0.3},
            ],
        },
    }
    schedule = parse_schedule(obj)
    return TokenBuckets(schedule.buckets, schedule)


def test_quality_follows_the_schedule_phase():
    tb = _scheduled()
    # A: v-hard is outside [0, 0.5] → off; vision 0.6 (one cluster), action 0.4, the probe (no
    # modality) weighs like an average cluster 1/4, × priority 2 = 0.5 → raw [0.6, 0, 0.4, 0.5] / 1.5
    assert tb.quality(0).tolist() == pytest.approx([0.6, 0.0, 0.4, 0.5])
    assert probs(tb, 0) == pytest.approx([0.4, 0.0, 0.4 / 1.5, 1 / 3])
    # B: both vision clusters on, sharing 0.6 → 0.3 each; push ×3 for v-hard → [0.3, 0.9, 0.4, 0.5] / 2.1;
    # the probe's own floor 0.3 lifts it from 0.238 and the rest share 0.7 in proportion 3 : 9 : 4
    assert tb.quality(10).tolist() == pytest.approx([0.3, 0.9, 0.4, 0.5])
    assert probs(tb, 10) == pytest.approx([0.7 * 3 / 16, 0.7 * 9 / 16, 0.7 * 4 / 16, 0.3])


def test_sample_is_deterministic_and_follows_p():
    tb = _scheduled()
    a = tb.sample(20000, torch.Generator().manual_seed(0), step=10)
    b = tb.sample(20000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.int64
    freq = torch.bincount(a, minlength=4).double() / 20000
    # binomial standard error ≤ 0.0035 at n = 20000: 0.015 is > 4σ
    assert freq.tolist() == pytest.approx(probs(tb, 10), abs=0.015)


def test_state_dict_round_trip_through_json():
    tb = three()
    tb.probabilities(0)
    tb.consume([60, 30, 90])
    tb.probabilities(4)
    tb.consume([1.5, 2.25, 0.0])
    state = json.loads(json.dumps(tb.state_dict()))
    other = three()
    other.load_state_dict(state)
    assert other.step == 4 and probs(other, 9) == probs(tb, 9)
    with pytest.raises(Exception, match="clusters"):
        TokenBuckets(BucketConfig(clusters=(ClusterSpec("z", 1.0, 0.0),))).load_state_dict(state)


def test_log_row_matches_the_schema():
    tb = _scheduled()
    tb.probabilities(0)
    tb.consume({"v-easy": 40})
    row = json.loads(json.dumps(tb.log_row(3)))
    assert schema_errors(row, "bucket-log") == []
    assert row["phase"] == "A" and row["step"] == 3
    first = row["buckets"][0]
    assert (first["name"], first["remaining"], first["used"], first["consumed_total"]) == ("v-easy", 60.0, 40.0, 40.0)
    assert sum(b["p"] for b in row["buckets"]) == pytest.approx(1.0)


def test_consume_and_clock_errors():
    tb = three()
    with pytest.raises(ValueError, match="non-negative"):
        tb.consume([1, -1, 0])
    with pytest.raises(ValueError, match="unknown bucket"):
        tb.consume({"zz": 1})
    tb.probabilities(5)
    with pytest.raises(ValueError, match="cannot go back"):
        tb.probabilities(4)
