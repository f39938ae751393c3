"""Known answers for the action losses: BC variants, spectral prior, dynamics hinge, jerk clipping (ch07 §7.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.objectives import (
    bc_huber,
    bc_nll,
    bc_quantile,
    curvature,
    dynamics_hinge,
    finite_difference,
    jerk_clip,
    spectral_prior,
    spectral_weights,
)


def close(value, expected, *, rtol=1e-6, atol=1e-6):
    """Default tolerance: float32 on O(1) values (rounding ~1e-7)."""
    assert float(value) == pytest.approx(expected, rel=rtol, abs=atol)


# ----------------------------------------------------------------------------- behaviour cloning


def test_bc_nll_known_answers():
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    a = torch.zeros(1, 1, 1)
    close(bc_nll(a, torch.zeros_like(a), a), half_log_2pi)
    # (a − μ)/σ = 2/2 = 1 → ½ + log 2 + ½ log 2π
    close(bc_nll(torch.full_like(a, 2.0), torch.full_like(a, math.log(2.0)), a), 0.5 + math.log(2) + half_log_2pi)


def test_bc_valid_mask_and_weights():
    pred = torch.tensor([[[1.0], [50.0]], [[3.0], [3.0]]])  # [B=2, H=2, Da=1]
    target = torch.zeros_like(pred)
    valid = torch.tensor([[True, False], [True, True]])
    # sample 0 scores only its first step (|1| → Huber ½); sample 1: |3| → 3 − ½ = 2.5 on both steps
    close(bc_huber(pred, target, valid=valid), (0.5 + 2.5) / 2)
    close(bc_huber(pred, target, valid=valid, weight=torch.tensor([3.0, 1.0])), (3 * 0.5 + 2.5) / 4)
    # a sample with no valid step drops out instead of dividing by zero
    none_valid = torch.tensor([[False, False], [True, True]])
    close(bc_huber(pred, target, valid=none_valid), 2.5)


def test_bc_huber_delta():
    pred = torch.tensor([[[0.5, 3.0]]])
    close(bc_huber(pred, torch.zeros_like(pred), delta=1.0), (0.125 + 2.5) / 2)
    close(bc_huber(pred, torch.zeros_like(pred), delta=2.0), (0.125 + 2 * (3 - 1)) / 2)


def test_bc_quantile_pinball_known_answers():
    target = torch.tensor([[[2.0, -2.0]]])  # u = target − pred with pred = 0
    pred = torch.zeros_like(target)
    close(bc_quantile(pred, target, quantiles=0.9), (0.9 * 2 + 0.1 * 2) / 2)  # 1.8 and 0.2
    close(bc_quantile(pred, target, quantiles=0.5), 1.0)  # half the L1 error
    # several quantiles: pred [..., Q]; τ = (0.1, 0.9): element u=2 → (0.2 + 1.8)/2, u=−2 → (1.8 + 0.2)/2
    multi = bc_quantile(torch.zeros(1, 1, 2, 2), target, quantiles=(0.1, 0.9))
    close(multi, 1.0)
    with pytest.raises(ValueError, match="pred must be"):
        bc_quantile(torch.zeros(1, 1, 2), target, quantiles=(0.1, 0.9))


# ----------------------------------------------------------------------------- spectral prior


def test_spectral_weights_known_answer():
    w = spectral_weights(3, 1.0)
    assert torch.allclose(w, torch.tensor([6 / 11, 3 / 11, 2 / 11]))
    flat = spectral_weights(4, 0.0)
    assert torch.allclose(flat, torch.full((4,), 0.25))


def test_spectral_prior_known_answer():
    # target = 1 over H = 4, pred = 0: ortho DFT of the target is [2, 0, 0] (Σx/√H), so
    # L = w_0 · (2 − 0)² = 6/11 · 4 with α = 1 and K = 3 bins.
    target = torch.ones(1, 4, 1)
    close(spectral_prior(torch.zeros_like(target), target, alpha=1.0), 24 / 11, rtol=1e-5)


def test_spectral_prior_matches_numpy_and_ignores_phase():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 3))
    y = rng.normal(size=(2, 8, 3))
    mag = lambda s: np.abs(np.fft.rfft(s, axis=1)) / math.sqrt(8)  # noqa: E731
    w = (1.0 + np.arange(5)) ** -1.5
    w /= w.sum()
    expected = (((mag(x) - mag(y)) ** 2) * w[None, :, None]).sum(axis=1).mean(axis=-1).mean()
    got = spectral_prior(torch.tensor(y), torch.tensor(x), alpha=1.5)
    close(got, expected, rtol=1e-10)  # float64 throughout
    # a circular time shift changes only the phase: magnitudes, hence the loss, are unchanged
    close(spectral_prior(torch.tensor(np.roll(x, 3, axis=1)), torch.tensor(x)), 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- dynamics hinge, jerk clipping


def test_finite_difference():
    x = torch.tensor([[0.0], [0.0], [1.0], [3.0]])
    assert torch.equal(finite_difference(x, dt=1.0, order=1).flatten(), torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(finite_difference(x, dt=0.5, order=2).flatten(), torch.tensor([4.0, 4.0]))


def test_dynamics_hinge_position_known_answer():
    # x = [0, 0, 1, 3]: a = [1, 1], j = [0]
    x = torch.tensor([[[0.0], [0.0], [1.0], [3.0]]])
    close(dynamics_hinge(x, dt=1.0, acc_max=0.5, jerk_max=0.0), 0.5)  # mean([.5, .5]) + 0
    # dt = 0.5: a = [4, 4] → hinge 3.5 each; j = 0
    close(dynamics_hinge(x, dt=0.5, acc_max=0.5, jerk_max=1.0), 3.5)
    close(dynamics_hinge(x, dt=1.0, acc_max=0.5, jerk_max=0.0, lambdas=(1.0, 2.0, 1.0)), 1.0)


def test_dynamics_hinge_velocity_signal_and_per_dim_limits():
    # velocity v = [0, 1, 3, 6]: a = [1, 2, 3], j = [1, 1]
    v = torch.tensor([[[0.0], [1.0], [3.0], [6.0]]])
    close(dynamics_hinge(v, dt=1.0, acc_max=2.0, jerk_max=0.5, signal="velocity"), 1 / 3 + 0.5)
    # per-dimension limits: the second dim never exceeds its large limit
    v2 = torch.cat([v, v], dim=-1)
    limits = torch.tensor([2.0, 100.0])
    close(dynamics_hinge(v2, dt=1.0, acc_max=limits, jerk_max=torch.tensor([0.5, 100.0]), signal="velocity"), (1 / 3 + 0.5) / 2)


def test_dynamics_hinge_valid_mask():
    # the spike sits in the invalid tail: no acceleration or jerk window covering it is scored
    x = torch.tensor([[[0.0], [0.0], [0.0], [0.0], [100.0]]])
    valid = torch.tensor([[True, True, True, True, False]])
    close(dynamics_hinge(x, dt=1.0, acc_max=0.1, jerk_max=0.1, valid=valid), 0.0)
    assert float(dynamics_hinge(x, dt=1.0, acc_max=0.1, jerk_max=0.1)) > 10


def test_curvature_known_answers():
    close(curvature(torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])), 1.0)  # unit circle
    close(curvature(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])), 0.25)  # |v×a|/|v|³ = 2/8
    # a circle of radius 2 sampled finely: κ → 1/2
    t = torch.linspace(0, 1, 200, dtype=torch.float64)
    pts = torch.stack([2 * torch.cos(t), 2 * torch.sin(t)], dim=-1)
    dt = float(t[1] - t[0])
    kappa = curvature(finite_difference(pts, dt=dt, order=1)[:-1], finite_difference(pts, dt=dt, order=2))
    assert torch.allclose(kappa, torch.full_like(kappa, 0.5), rtol=1e-2)  # forward differences: O(dt) error
    # the curvature term of the hinge: a circle of radius 2 has κ = 0.5 > κ_max = 0.25
    loss = dynamics_hinge(pts[None], dt=dt, acc_max=1e9, jerk_max=1e9, curvature_max=0.25)
    close(loss, 0.25, rtol=1e-2)  # same O(dt) error


def test_jerk_clip_known_answer_and_properties():
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0]])  # jerk [1]
    assert torch.allclose(jerk_clip(x, dt=1.0, jerk_max=0.5), torch.tensor([[0.0], [0.0], [0.0], [0.5]]))
    g = torch.Generator().manual_seed(0)
    traj = torch.cumsum(torch.randn(3, 40, 2, generator=g, dtype=torch.float64), dim=1)
    limit = 0.3
    out = jerk_clip(traj, dt=0.1, jerk_max=limit / 0.1**3)
    assert torch.diff(out, n=3, dim=-2).abs().max() <= limit + 1e-9  # float64 re-integration error
    assert torch.allclose(out[:, :3], traj[:, :3])  # initial conditions kept
    assert torch.allclose(jerk_clip(traj, dt=0.1, jerk_max=1e9), traj)  # inside the limit: unchanged
    # velocity signals clip the second difference
    v = torch.tensor([[0.0], [0.0], [2.0]])
    assert torch.allclose(jerk_clip(v, dt=1.0, jerk_max=1.0, signal="velocity"), torch.tensor([[0.0], [0.0], [1.0]]))
