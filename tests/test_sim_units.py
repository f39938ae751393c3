"""Building blocks of `vla sim record`: lag measurement, constraint projection, rig clocks, fault planning,
instruction templates and the simulator wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from stages.errors import BadInput
from stages.sim import faults as F
from stages.sim import instructions
from stages.sim.constraints import SPEED_LIMIT, WORKSPACE_BOUNDARY, Constraint, project_action
from stages.sim.envs import ACTION_SCALE, ACTION_UNIT_MPS, CONTROL_DT, DEFAULT_TASKS, HELDOUT_TASKS, TASKS, make_env
from stages.sim.lag import action_motion_xcorr, full_xcorr, lag_ms, peak_lag_s
from stages.sim.rig import RigConfig, StreamData, draw_session, stamp
from stages.sim.rollout import run_episode

# ----------------------------------------------------------------------------- lag


def test_full_xcorr_matches_scipy():
    from scipy import signal

    rng = np.random.default_rng(0)
    a, v = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    ref = np.stack([signal.correlate(v[:, i], a[:, i], mode="full", method="direct") for i in range(3)], axis=1)
    np.testing.assert_allclose(full_xcorr(v, a), ref, atol=1e-10)  # FFT round-off only


def _smooth_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    kernel = np.hanning(9) / np.hanning(9).sum()
    return np.stack([np.convolve(rng.standard_normal(n + 40), kernel, mode="same")[20:-20] for _ in range(3)], axis=1)


@pytest.mark.parametrize("delay_steps", [0.0, 3.0, 3.4, -2.0])
def test_lag_recovers_a_known_delay(delay_steps):
    rng = np.random.default_rng(1)
    a = _smooth_noise(400, rng)
    n = np.arange(len(a))
    v = np.stack([np.interp(n - delay_steps, n, a[:, i]) for i in range(3)], axis=1)  # v(t) = a(t - d)
    # integer delays are exact; a fractional one through parabolic interpolation within 0.1 step
    assert lag_ms(a[20:-20], v[20:-20], CONTROL_DT) == pytest.approx(1000 * delay_steps * CONTROL_DT, abs=1.25)


def test_peak_interpolation_known_answer():
    lags = np.arange(-3, 4) * 0.01
    c = -((lags - 0.004) ** 2)  # a parabola peaking at +4 ms: interpolation is exact
    assert peak_lag_s(c, lags) == pytest.approx(0.004, abs=1e-12)


def test_xcorr_window_and_normalisation():
    a = _smooth_noise(200, np.random.default_rng(2))
    c, lags = action_motion_xcorr(a, a, CONTROL_DT)
    assert len(c) == 41 and lags[0] == pytest.approx(-0.25) and lags[-1] == pytest.approx(0.25)
    assert c.max() == pytest.approx(1.0) and lags[np.argmax(c)] == 0  # autocorrelation peaks at 1 at lag 0


# ----------------------------------------------------------------------------- constraint projection


def test_speed_projection_known_answer():
    a = np.array([1.0, 1.0, 0.0, 0.5])
    p = project_action(a, Constraint(SPEED_LIMIT, 0.4), np.zeros(3))
    radius = 0.4 / ACTION_UNIT_MPS  # 0.5 action units
    np.testing.assert_allclose(p, [radius / np.sqrt(2), radius / np.sqrt(2), 0.0, 0.5])
    inside = np.array([0.1, -0.2, 0.1, -1.0])
    np.testing.assert_array_equal(project_action(inside, Constraint(SPEED_LIMIT, 0.4), np.zeros(3)), inside)


def test_boundary_projection_known_answer():
    target = np.array([0.0, 0.6, 0.105])
    c = Constraint(WORKSPACE_BOUNDARY, 0.1)
    lowest = (0.1 - 0.105) / ACTION_SCALE  # -0.5
    np.testing.assert_allclose(project_action(np.array([0.2, 0.0, -1.0, 1.0]), c, target), [0.2, 0.0, lowest, 1.0])
    np.testing.assert_allclose(project_action(np.array([0.2, 0.0, 0.3, 1.0]), c, target), [0.2, 0.0, 0.3, 1.0])


@pytest.mark.parametrize("constraint", [Constraint(SPEED_LIMIT, 0.3), Constraint(WORKSPACE_BOUNDARY, 0.1)])
def test_projection_is_the_nearest_feasible_action(constraint):
    """Euclidean projection: feasible, and no sampled feasible action is closer."""
    rng = np.random.default_rng(3)
    target = np.array([0.0, 0.6, 0.104])

    def feasible(x):
        if constraint.kind == SPEED_LIMIT:
            return np.linalg.norm(x[:3]) * ACTION_UNIT_MPS <= constraint.value + 1e-12
        return target[2] + x[2] * ACTION_SCALE >= constraint.value - 1e-12

    for _ in range(50):
        a = rng.uniform(-1, 1, 4)
        p = project_action(a, constraint, target)
        assert feasible(p) and np.all(np.abs(p) <= 1) and p[3] == a[3]
        q = rng.uniform(-1, 1, (2000, 4))
        q[:, 3] = a[3]
        ok = np.array([feasible(x) for x in q])
        assert np.linalg.norm(a - p) <= np.linalg.norm(a - q[ok], axis=1).min() + 1e-12


@pytest.mark.parametrize("task, constraint", [("reach", Constraint(SPEED_LIMIT, 0.3)), ("push", Constraint(WORKSPACE_BOUNDARY, 0.12))])
def test_projected_teacher_obeys_its_constraint_in_the_simulator(task, constraint):
    env = make_env(task)
    try:
        free = run_episode(env, 11, 60, None, 1000)
        ro = run_episode(env, 11, 60, constraint, 1000)
    finally:
        env.close()
    if constraint.kind == SPEED_LIMIT:
        assert np.linalg.norm(free.action[:, :3], axis=1).max() * ACTION_UNIT_MPS > constraint.value  # it binds
        assert np.linalg.norm(ro.action[:, :3], axis=1).max() * ACTION_UNIT_MPS <= constraint.value + 1e-9
        assert np.linalg.norm(ro.ee_vel, axis=1).max() <= 1.05 * constraint.value  # the servo tracks (measured <= 1.0)
    else:
        assert free.ee_pos[:, 2].min() < constraint.value  # it binds: the free expert goes lower
        assert ro.ee_pos[:, 2].min() >= constraint.value - 0.002  # servo overshoot, measured < 1 mm


# ----------------------------------------------------------------------------- rig


def test_stamp_follows_the_clock_convention():
    t_rel = np.arange(5) * 0.0125
    t = stamp(t_rel, 100.0, offset_ms=-120.0, drift_ppm=40.0, jitter_ms=0.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(t, 100.0 + t_rel - 0.120 + 40e-6 * t_rel, rtol=0, atol=1e-12)


def test_session_offsets_accumulate_drift():
    clock = draw_session("S000", 1000.0, RigConfig(), np.random.default_rng(0))
    later = clock.offsets_at(1100.0)
    for s in clock.offset_ms:
        assert later[s] == pytest.approx(clock.offset_ms[s] + clock.drift_ppm[s] * 1e-6 * 100.0 * 1000)


@pytest.mark.parametrize("change", [{"camera_hz": 30.0}, {"jitter_ms": {"camera": 10.0, "state": 1.0, "imu": 0.5, "action": 1.0}},
                                    {"episodes_per_session": 0}, {"imu_noise": -1.0}])
def test_rig_rejects_bad_settings(change):
    with pytest.raises(BadInput):
        RigConfig(**change).validate()


# ----------------------------------------------------------------------------- fault planning


def _streams(rng: np.random.Generator) -> dict[str, StreamData]:
    def cont(n, cols):
        return StreamData(np.arange(n) * 0.0125, rng.standard_normal((n, len(cols))).cumsum(axis=0), cols, t_true=np.arange(n) * 0.0125)

    cam = StreamData(np.arange(30) * 0.05, frames=rng.integers(0, 255, (30, 4, 4, 3), dtype=np.uint8), t_true=np.arange(30) * 0.05)
    return {"camera": cam, "state": cont(120, ("ee_x", "ee_speed")), "imu": cont(150, ("acc_x",)), "action": cont(120, ("dx", "grip"))}


@pytest.mark.parametrize("seed", range(8))
def test_planned_faults_are_disjoint_guarded_and_inside(seed):
    rng = np.random.default_rng(seed)
    streams = _streams(rng)
    plan = F.plan_row_faults(streams, F.FaultConfig({k: 1.0 for k in F.ROW_KINDS}), rng)
    assert {w.kind for w in plan} == set(F.ROW_KINDS)  # the streams have room for one of each
    for name, data in streams.items():
        spans = sorted((w.start - F._SHAPES[w.kind][2], w.start + w.length + F._SHAPES[w.kind][3]) for w in plan if w.stream == name)
        for a, b in spans:
            assert a >= F.EDGE and b <= len(data.t) - F.EDGE
        for (_, b0), (a1, _) in zip(spans, spans[1:]):
            assert a1 - b0 >= F.GUARD
    spike = next(w for w in plan if w.kind == F.SPIKE)
    written, faults = F.apply_row_faults(streams, plan, rng)
    rec = next(f for f in faults if f["kind"] == F.SPIKE)
    assert abs(rec["detail"]["height"]) >= F.SPIKE_SIGMAS * rec["detail"]["local_sigma"]
    col = streams[spike.stream].columns.index(rec["column"])
    row = rec["rows"][0]
    assert written[spike.stream].values[row, col] - rec["detail"]["height"] == pytest.approx(streams[spike.stream].values[spike.start, col])


def test_zero_rates_inject_nothing():
    rng = np.random.default_rng(0)
    assert F.plan_row_faults(_streams(rng), F.FaultConfig({}), rng) == []
    assert F.text_fault("open the door", "en", F.FaultConfig({}), rng) == ("open the door", None)


# ----------------------------------------------------------------------------- instructions


def test_every_task_has_paraphrases_in_both_languages():
    assert set(instructions.TEMPLATES) == set(TASKS)
    for task, by_lang in instructions.TEMPLATES.items():
        for lang in instructions.LANGUAGES:
            assert len(set(by_lang[lang])) >= 3, (task, lang)


def test_constraint_clause_names_its_value():
    rng = np.random.default_rng(0)
    en = instructions.compose("push", "en", Constraint(SPEED_LIMIT, 0.3), rng)
    zh = instructions.compose("push", "zh", Constraint(WORKSPACE_BOUNDARY, 0.1), rng)
    assert "0.3" in en and ("m/s" in en)
    assert "10" in zh and "越界" in zh
    again = instructions.compose("push", "en", None, rng, avoid="push the puck to the goal")
    assert again != "push the puck to the goal"


# ----------------------------------------------------------------------------- simulator


def test_reset_is_deterministic_and_history_free():
    a, b = make_env("push", seed=4), make_env("push", seed=9)
    try:
        b.reset(4)
        first, second = run_episode(a, 4, 40, None, 8), run_episode(b, 4, 40, None, 8)
        np.testing.assert_array_equal(first.action, second.action)
        np.testing.assert_array_equal(first.frames, second.frames)  # frame 0 included (goal site moved)
    finally:
        a.close()
        b.close()


def test_corner_camera_is_returned_upright():
    import mujoco

    env = make_env("reach", seed=0)
    try:
        ours = env.render()
        raw = mujoco.Renderer(env.model, 64, 64)
        raw.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        raw.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        raw.update_scene(env.data, camera="corner")
        np.testing.assert_array_equal(ours, raw.render()[::-1, ::-1])
        raw.close()
    finally:
        env.close()


@pytest.mark.parametrize("task", HELDOUT_TASKS)
def test_heldout_experts_succeed(task):
    env = make_env(task)
    try:
        assert all(run_episode(env, seed, TASKS[task].default_steps, None, 1000).success for seed in (0, 1))
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_default_experts_succeed(task):
    env = make_env(task)
    try:
        wins = [run_episode(env, seed, TASKS[task].default_steps, None, 1000).success for seed in range(5)]
    finally:
        env.close()
    assert np.mean(wins) >= 0.6, wins  # pick-place misses a grasp now and then (measured 75-100 %)
