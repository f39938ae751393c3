"""Known answers for the building blocks of align-time: observables, views, one session's estimate."""

from __future__ import annotations

import numpy as np
import pytest

from stages.signal import lowpass
from stages.timealign.estimate import EstimateConfig, estimate_session
from stages.timealign.observables import CAMERA, camera_series, continuous_series, features, motion_energy
from stages.timealign.views import families


def smooth_walk(n: int, seed: int, rate: float, cutoff: float = 1.5) -> np.ndarray:
    return lowpass(np.random.default_rng(seed).normal(size=n), rate, cutoff) * 10


def test_camera_series_places_differences_between_frames():
    t = np.array([0.0, 0.05, 0.10, 0.15, 0.20, 0.30])
    frames = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    for k in range(6):
        frames[k, :, k: k + 2] = 200  # a bar moving one pixel per frame
    frames[3] = frames[2]  # a repeated frame: not "no motion", an invalid pair
    s = camera_series("cam", t, np.arange(6), frames)
    assert s.kind == CAMERA and s.columns == ["motion"]
    # pairs (0,1), (1,2), (3,4), (4,5) remain; (2,3) is the repeat; each at its midpoint
    np.testing.assert_allclose(s.t, [0.025, 0.075, 0.175, 0.25])
    # per nominal period (20 Hz): the pair spanning 0.1 s (a dropped frame) counts half per period
    e = motion_energy(frames)
    np.testing.assert_allclose(s.values[:, 0], [e[0], e[1], e[3], e[4] / 2.0], rtol=1e-12)


def test_motion_energy_is_chunk_independent():
    frames = np.random.default_rng(0).integers(0, 256, size=(40, 12, 10, 3), dtype=np.uint8)
    np.testing.assert_allclose(motion_energy(frames, chunk=7), motion_energy(frames, chunk=500), rtol=1e-6)


def test_derivative_twins_are_kept_out_of_mixes():
    rate = 200.0
    t = np.arange(1000) / rate
    x = smooth_walk(1000, 1, rate)
    y = smooth_walk(1000, 2, rate)
    values = np.column_stack([x, y, np.gradient(x, 1 / rate), np.gradient(y, 1 / rate)])  # x, y, vx, vy
    s = continuous_series("state", t, values, ["x", "y", "vx", "vy"])
    f = features(s, t, rate, 20.0, orders=(0, 1, 2), magnitudes=True)
    xc = f.values[:, f.valid] - f.values[:, f.valid].mean(axis=1, keepdims=True)
    g = xc @ xc.T
    corr = g / np.sqrt(np.outer(np.diag(g), np.diag(g)))
    mixes = families(f, corr, np.ones(len(f.names), bool))
    members = {f.names[i] for fam in mixes if not fam.nonneg for i in fam.members}
    # vx is d/dt x: neither `state.vx` (order 0) nor `d/dt state.x` (order 1) may join a signed mix
    assert "state.vx" not in members and "d/dt state.x" not in members
    assert {"state.x", "state.y"} <= members  # positions still mix with each other
    assert all(fam.nonneg for fam in mixes if f.groups[fam.members[0]][1] == "magnitude")


def test_known_fractional_offset_is_recovered():
    """A 100 Hz sensor that sees the 80 Hz reference's velocity, clock 37.3 ms ahead, both jittered."""
    rng = np.random.default_rng(5)
    fine = np.arange(0, 20, 1e-3)  # true time, 1 ms
    pos = np.column_stack([smooth_walk(len(fine), s, 1000.0) for s in (3, 4)])  # [T, 2]
    vel = np.gradient(pos, 1e-3, axis=0)
    targets, refs = [], []
    for e in range(3):
        a, b = 6.0 * e, 6.0 * e + 5.0
        ti = np.sort(np.arange(a, b, 1 / 80) + rng.uniform(-1e-3, 1e-3, int(round((b - a) * 80))))
        ri = np.sort(np.arange(a, b, 1 / 100) + rng.uniform(-1e-3, 1e-3, int(round((b - a) * 100))))
        ref_values = np.column_stack([np.interp(ti, fine, pos[:, k]) for k in range(2)])
        tgt_values = np.column_stack([np.interp(ri, fine, vel[:, k]) for k in range(2)])
        refs.append(continuous_series("state", ti, ref_values, ["x", "y"]))
        targets.append(continuous_series("sensor", ri + 0.0373, tgt_values, ["vx", "vy"]))
    plan, estimates = estimate_session(targets, refs, EstimateConfig())
    assert plan.views and {v.reference for v in plan.views} <= {"d/dt state.x", "d/dt state.y", "mix(d/dt state.x, d/dt state.y)"}
    assert plan.session_lag_ms == pytest.approx(37.3, abs=0.3)  # sub-sample: grid step 5 ms, jitter ±1 ms
    for est in estimates:
        assert est.usable and est.lag_ms == pytest.approx(37.3, abs=0.5)
        assert est.sigma_ms < 2.0 and est.confidence > 0.5
