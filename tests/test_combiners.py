"""Loss combiners: PCGrad, GradNorm and uncertainty weighting on hand-computed cases (ch05 §5.10, ch07 §7.8)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stages.artifacts import schema_errors
from stages.errors import BadInput
from stages.training.combiners import COMBINERS, build_combiner, gradient_log_row, pcgrad


def close(value, expected, *, rtol=1e-6, atol=1e-9):
    """Default tolerance: float32 / float64 arithmetic on O(1) values (rounding < 1e-7)."""
    value = value.detach() if isinstance(value, torch.Tensor) else value
    assert float(value) == pytest.approx(expected, rel=rtol, abs=atol)


# ----------------------------------------------------------------------------- pcgrad()


def test_pcgrad_known_answer():
    # g1 = [-4, 1, 1], g2 = [6, 1, 1]: g1·g2 = -24 + 1 + 1 = -22 < 0, ‖g1‖² = 18, ‖g2‖² = 38.
    # g1' = g1 − (−22/38) g2 = [-4, 1, 1] + (11/19)[6, 1, 1] = [−10/19, 30/19, 30/19]
    # g2' = g2 − (−22/18) g1 = [6, 1, 1] + (11/9)[−4, 1, 1] = [10/9, 20/9, 20/9]
    # sum = [(−90 + 190)/171, (270 + 380)/171, (270 + 380)/171] = [100/171, 650/171, 650/171]
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([100 / 171, 650 / 171, 650 / 171], dtype=torch.float64)
    assert torch.allclose(pcgrad(grads), expected, rtol=0, atol=1e-12)


def test_pcgrad_without_conflict_is_the_sum():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    assert torch.allclose(pcgrad(grads), grads.sum(0))
    assert torch.equal(pcgrad(grads[:1]), grads[0])


def _reference_pcgrad(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's loop, written plainly, drawing task orders exactly as the implementation does."""
    tasks = grads.shape[0]
    keys = torch.rand(tasks, tasks, generator=generator)
    keys.fill_diagonal_(2.0)
    order = keys.argsort(dim=1)[:, : tasks - 1]
    out = []
    for i in range(tasks):
        g = grads[i].clone()
        for j in order[i].tolist():
            assert j != i
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / torch.dot(grads[j], grads[j]) * grads[j]
        out.append(g)
    return torch.stack(out).sum(0)


def test_pcgrad_matches_the_paper_loop_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(5, 7, generator=g, dtype=torch.float64)
    for seed in range(4):
        got = pcgrad(grads, torch.Generator().manual_seed(seed))
        ref = _reference_pcgrad(grads, torch.Generator().manual_seed(seed))
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    results = {tuple(pcgrad(grads, torch.Generator().manual_seed(s)).tolist()) for s in range(8)}
    assert len(results) > 1  # the order matters for 5 conflicting tasks, so seeds differ...
    a = pcgrad(grads, torch.Generator().manual_seed(5))
    b = pcgrad(grads, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)  # ...and one seed is deterministic


# ----------------------------------------------------------------------------- combiner objects


def _linear_losses(w: torch.Tensor, rows: list[list[float]]) -> dict[str, torch.Tensor]:
    """L_i = c_i · w: the gradient of loss i is exactly c_i."""
    return {f"l{i}": torch.dot(torch.tensor(r, dtype=w.dtype), w) for i, r in enumerate(rows)}


def test_pcgrad_combiner_writes_grads_and_stats():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    comb = build_combiner("pcgrad", ["l0", "l1"])
    stats = comb.backward(_linear_losses(w, [[-4, 1, 1], [6, 1, 1]]), [w], weights={"l0": 1.0, "l1": 1.0})
    assert torch.allclose(w.grad, torch.tensor([100 / 171, 650 / 171, 650 / 171], dtype=torch.float64))
    assert stats["pcgrad_hit_rate"] == 1.0  # both ordered pairs were projected
    close(stats["grad_norms"]["l0"], math.sqrt(18))
    assert stats["cosines"] == [{"a": "l0", "b": "l1", "cos": pytest.approx(-22 / math.sqrt(18 * 38))}]
    assert stats["conflicts"] == 1
    assert schema_errors(json.loads(json.dumps(gradient_log_row(7, stats, phase="B"))), "gradient-log") == []


def test_fixed_weights_floors_and_accumulation():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([10.0, 10.0])  # gradient accumulation: the combiner adds
    comb = build_combiner("fixed", ["a", "b", "c"])
    losses = _linear_losses(w, [[1, 0], [0, 1], [5, 5]])
    losses = {"a": losses["l0"], "b": losses["l1"], "c": losses["l2"]}
    stats = comb.backward(losses, [w], weights={"a": 2.0, "b": 0.0, "c": 0.0}, min_weights={"b": 0.5}, grad_stats=True)
    # a: 2·[1, 0]; b: weight 0 but floor 0.5 → 0.5·[0, 1]; c: weight 0, no floor → inactive
    assert torch.allclose(w.grad, torch.tensor([12.0, 10.5]))
    assert stats["weights"] == {"a": 2.0, "b": 0.5, "c": 0.0}
    assert set(stats["grad_norms"]) == {"a", "b"} and stats["pcgrad_hit_rate"] is None
    with pytest.raises(ValueError, match="no weight"):
        comb.backward(losses, [w], weights={"a": 1.0})


def test_uncertainty_weighting_hand_computed_update():
    # L = 2x at x = 1, λ = 1, s = log σ = 0: coefficient λ e^(−2s)/2 = 1/2, so ∂/∂x = 1/2 · 2 = 1;
    # ∂/∂s = λ(1 − e^(−2s) L) = 1 − 2 = −1; one SGD step of lr 0.1 moves s to 0.1.
    x = torch.nn.Parameter(torch.tensor(1.0))
    comb = build_combiner("uncertainty", ["a", "b"])
    (log_sigma,) = comb.parameters()
    stats = comb.backward({"a": 2.0 * x}, [x], weights={"a": 1.0})
    close(x.grad, 1.0)
    assert log_sigma.grad.tolist() == [-1.0, 0.0]  # b was absent: untouched
    with torch.no_grad():
        log_sigma -= 0.1 * log_sigma.grad  # one plain SGD step, lr 0.1
    close(log_sigma[0], 0.1)
    close(stats["weights"]["a"], 0.5)
    # after the step the coefficient is e^(−0.2)/2
    x.grad = None
    stats = comb.backward({"a": 2.0 * x}, [x], weights={"a": 1.0})
    close(stats["weights"]["a"], math.exp(-0.2) / 2, rtol=1e-6)
    # the floor: with s = 2 the coefficient e^(−4)/2 ≈ 0.009 is raised to the floor 0.1
    with torch.no_grad():
        log_sigma[0] = 2.0
    x.grad = None
    stats = comb.backward({"a": 2.0 * x}, [x], weights={"a": 1.0}, min_weights={"a": 0.1})
    close(stats["weights"]["a"], 0.1)
    close(x.grad, 0.2)


def test_gradnorm_hand_computed_updates():
    # Two tasks on w = (w0, w1), lr η = 0.1, α = 0.5, weights start at [1, 1].
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    comb = build_combiner("gradnorm", ["a", "b"], {"alpha": 0.5, "lr": 0.1})
    weights = {"a": 1.0, "b": 1.0}
    # step 1: L_a = 3 w0 (=3, ‖g_a‖ = 3), L_b = w1 (=1, ‖g_b‖ = 1). Rates L/L(0) = [1, 1] → r = [1, 1].
    # G = [3, 1], Ḡ = 2, target = [2, 2]; sign(G − target) = [+, −] → ∂/∂w = [3, −1]
    # w = [1 − 0.3, 1 + 0.1] = [0.7, 1.1], renormalised to sum 2: [7/9, 11/9].
    stats = comb.backward({"a": 3.0 * w[0], "b": w[1]}, [w], weights=weights)
    assert torch.allclose(w.grad, torch.tensor([3.0, 1.0], dtype=torch.float64))  # model step uses w(t) = [1, 1]
    assert comb.weights.tolist() == pytest.approx([7 / 9, 11 / 9], rel=1e-12)
    close(stats["gradnorm_loss"], 2.0)  # |3 − 2| + |1 − 2|
    # step 2: L_a = 1.5 w0 (=1.5, ‖g‖ = 1.5), L_b = w1 (=1): rates [0.5, 1], mean 0.75 → r = [2/3, 4/3].
    # G = [7/9 · 1.5, 11/9 · 1] = [7/6, 11/9]; Ḡ = 43/36; target = Ḡ r^½ = [0.9753, 1.3792]
    # sign = [+, −] → ∂/∂w = [1.5, −1] → w = [7/9 − 0.15, 11/9 + 0.1], then × 2 / 1.95.
    w.grad = None
    stats = comb.backward({"a": 1.5 * w[0], "b": w[1]}, [w], weights=weights)
    assert torch.allclose(w.grad, torch.tensor([7 / 6, 11 / 9], dtype=torch.float64))
    expected = [(7 / 9 - 0.15) * 2 / 1.95, (11 / 9 + 0.1) * 2 / 1.95]
    assert comb.weights.tolist() == pytest.approx(expected, rel=1e-12)
    g_mean = 43 / 36
    targets = [g_mean * math.sqrt(2 / 3), g_mean * math.sqrt(4 / 3)]
    close(stats["gradnorm_loss"], abs(7 / 6 - targets[0]) + abs(11 / 9 - targets[1]), rtol=1e-12)


def test_gradnorm_satisfied_hinge_gets_the_neutral_rate():
    # A hinge at 0 on the first step (no violation) has no training rate: L(0) is recorded at its
    # first positive value, and meanwhile it takes the mean rate of the others instead of switching
    # the balance off for every loss. Three tasks, α = 1, lr 0.1, weights [1, 1, 1]:
    # step 1: L = [3 w0, w1, 0·w2] → rates [1, 1, (neutral) 1] → r = [1, 1, 1]; G = [3, 1, 0], Ḡ = 4/3;
    # sign(G − Ḡ) = [+, −, −] → ∂/∂w = [3, −1, 0] → w = [0.7, 1.1, 1.0], renormalised to sum 3.
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    comb = build_combiner("gradnorm", ["a", "b", "h"], {"alpha": 1.0, "lr": 0.1})
    weights = {"a": 1.0, "b": 1.0, "h": 1.0}
    comb.backward({"a": 3.0 * w[0], "b": w[1], "h": 0.0 * w[2]}, [w], weights=weights)
    assert comb.weights.tolist() == pytest.approx([0.7 * 3 / 2.8, 1.1 * 3 / 2.8, 1.0 * 3 / 2.8], rel=1e-12)
    assert math.isnan(comb.initial[2]) and comb.initial[:2].tolist() == [3.0, 1.0]
    # step 2: the hinge fires (L_h = 2) → L_h(0) = 2, its rate 1; the others' rates [1, 1]
    comb.backward({"a": 3.0 * w[0], "b": w[1], "h": 2.0 * w[2]}, [w], weights=weights)
    assert comb.initial.tolist() == [3.0, 1.0, 2.0]


def test_gradnorm_mean_ratio_balanced_case_does_not_move():
    # ratio "mean" (ch05 §5.10 as written), α = 1: r = L / mean L = [1.5, 0.5]; G = [3, 1], Ḡ = 2
    # → target = [3, 1] = G: already balanced, weights stay [1, 1].
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    comb = build_combiner("gradnorm", ["a", "b"], {"alpha": 1.0, "ratio": "mean"})
    stats = comb.backward({"a": 3.0 * w[0], "b": w[1]}, [w], weights={"a": 1.0, "b": 1.0})
    assert comb.weights.tolist() == [1.0, 1.0]
    close(stats["gradnorm_loss"], 0.0)


def test_gradnorm_schedule_weight_and_floor_scale_the_model_gradient():
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    comb = build_combiner("gradnorm", ["a", "b"])
    comb.backward({"a": 3.0 * w[0], "b": w[1]}, [w], weights={"a": 0.5, "b": 0.0}, min_weights={"b": 0.25})
    # coefficients max(λ·w, m) with w = [1, 1]: a → 0.5, b → 0.25
    assert torch.allclose(w.grad, torch.tensor([1.5, 0.25], dtype=torch.float64))


def test_reduce_grads_hook_sees_task_gradients():
    seen = []

    def reduce(g: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(g.shape))
        return 2.0 * g  # stands in for an all-reduce

    w = torch.nn.Parameter(torch.ones(3))
    comb = build_combiner("pcgrad", ["l0", "l1"])
    comb.backward(_linear_losses(w, [[1, 0, 0], [0, 1, 0]]), [w], weights={"l0": 1.0, "l1": 1.0}, reduce_grads=reduce)
    assert seen == [(2, 3)]
    assert torch.allclose(w.grad, torch.tensor([2.0, 2.0, 0.0]))
    # GradNorm also reduces its loss values: [T] after the gradients [T, P]
    seen.clear()
    w.grad = None
    build_combiner("gradnorm", ["l0", "l1"]).backward(
        _linear_losses(w, [[1, 0, 0], [0, 1, 0]]), [w], weights={"l0": 1.0, "l1": 1.0}, reduce_grads=reduce)
    assert seen == [(2, 3), (2,)]


def test_frozen_and_unused_parameters():
    used = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    comb = build_combiner("pcgrad", ["a", "b"])
    comb.backward({"a": used.sum(), "b": (used * used).sum()}, [used, unused, frozen], weights={"a": 1.0, "b": 1.0})
    assert torch.allclose(used.grad, torch.tensor([3.0, 3.0]))
    assert torch.equal(unused.grad, torch.zeros(2)) and frozen.grad is None


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "gradnorm", "pcgrad"])
def test_state_dict_round_trip_continues_identically(name):
    def run(comb, steps):
        out = []
        for k in range(steps):
            w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
            losses = {"a": (w * torch.tensor([-4.0, 1, k], dtype=torch.float64)).sum() ** 2 / 10,
                      "b": (w * torch.tensor([6.0, 1, 1], dtype=torch.float64)).sum(),
                      "c": (w * w).sum() * (k + 1)}
            stats = comb.backward(losses, [w], weights={"a": 1.0, "b": 0.5, "c": 0.3})
            out.append((w.grad.clone(), stats["weights"]))
        return out

    first = build_combiner(name, ["a", "b", "c"])
    run(first, 2)
    state = first.state_dict()
    second = build_combiner(name, ["a", "b", "c"])
    second.load_state_dict(state)
    a, b = run(first, 3), run(second, 3)
    for (ga, wa), (gb, wb) in zip(a, b):
        assert torch.equal(ga, gb) and wa == wb


def test_registry_and_config_errors():
    assert COMBINERS.names() == ["fixed", "gradnorm", "pcgrad", "uncertainty"]
    with pytest.raises(BadInput, match="unknown combiner `magic`"):
        build_combiner("magic", ["a"])
    with pytest.raises(BadInput) as exc:
        build_combiner("gradnorm", ["a"], {"beta": 1.0}, where="phases[2].combiner")
    assert "phases[2].combiner.params.beta" in str(exc.value)
    with pytest.raises(BadInput, match="params.alpha"):
        build_combiner("gradnorm", ["a"], {"alpha": "high"})
    with pytest.raises(BadInput, match="params.alpha"):
        build_combiner("gradnorm", ["a"], {"alpha": -1})
    with pytest.raises(ValueError, match="not declared"):
        build_combiner("fixed", ["a"]).backward({"z": torch.tensor(1.0)}, [], weights={"z": 1.0})
    other = build_combiner("uncertainty", ["x", "y"])
    with pytest.raises(BadInput, match=r"state is for losses \['x', 'y'\]"):
        build_combiner("uncertainty", ["a", "b"]).load_state_dict(other.state_dict())
