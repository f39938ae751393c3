"""Cleaning rules on constructed faults: each detector and rule against a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.cleaning import camera, timestamps, values
from stages.cleaning.base import EpisodeWork, interpolate_rows, runs
from stages.cleaning.config import default_config
from stages.cleaning.synthetic import SyntheticConfig, make_episode


@pytest.fixture
def episode():
    return make_episode("ep_0000", "push", np.random.default_rng(1), SyntheticConfig())


def run_rule(ep, rule_id, **params):
    rule = default_config().rule(rule_id)
    if params:
        import dataclasses

        rule.params = dataclasses.replace(rule.params, **params)
    work = EpisodeWork.of(ep)
    rule.run(work)
    return work


def kinds(work):
    return [(f.kind, f.stream, f.column, f.rows) for f in work.findings]


# ----------------------------------------------------------------------------- helpers


def test_runs_and_merge():
    flags = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], bool)
    assert runs(flags).tolist() == [[1, 3], [5, 6], [7, 10]]
    assert runs(flags, merge=1).tolist() == [[1, 3], [5, 10]]
    assert runs(np.zeros(4, bool)).shape == (0, 2)


def test_interpolate_rows_is_linear():
    x = np.array([0.0, np.nan, np.nan, 3.0, 4.0])
    np.testing.assert_allclose(interpolate_rows(x, np.isnan(x)), [0, 1, 2, 3, 4])


# ----------------------------------------------------------------------------- time domain


def test_out_of_order_and_repeats_known_answer():
    t = np.array([0.0, 0.1, 0.3, 0.2, 0.4, 0.4, 0.5])
    assert timestamps.out_of_order(t).tolist() == [False, False, False, True, False, False, False]
    assert timestamps.repeated(t).tolist() == [False, False, False, False, False, True, False]


def test_gaps_threshold_ignores_jitter_but_catches_one_missing_sample():
    rng = np.random.default_rng(0)
    t = np.arange(200) * 0.05 + rng.normal(0, 0.002, 200)  # 20 Hz, 2 ms jitter
    assert not timestamps.gaps(t, factor=1.5, sigmas=6.0)[0].any()
    flags, thr = timestamps.gaps(np.delete(t, [100]), factor=1.5, sigmas=6.0)
    assert np.flatnonzero(flags).tolist() == [99]
    assert 0.07 < thr < 0.1  # ≈1.5 × the 50 ms period (median of jittered intervals); one missing sample makes 0.1 s


def test_non_monotonic_rule_sorts_and_reports_input_rows(episode):
    df = episode.streams["state"]
    order = np.arange(len(df))
    order[[50, 51]] = [51, 50]
    episode.streams["state"] = df.iloc[order].reset_index(drop=True)
    work = run_rule(episode, "timestamps.non_monotonic")
    assert kinds(work) == [("non_monotonic_timestamps", "state", None, (50, 52))]
    assert work.findings[0].detail["fix"] == "sort_rows"  # whole rows were swapped: they read smoother sorted
    assert np.all(np.diff(work.streams["state"].t) > 0)
    assert work.streams["state"].source_row[50:52].tolist() == [51, 50]


@pytest.mark.parametrize("stream", ["state", "camera"])
def test_non_monotonic_swapped_clock_values_are_sorted_alone(episode, stream):
    """Only the two timestamps were swapped (the samples are in order): the clock is sorted, the rows stay."""
    df = episode.cameras["camera"].index if stream == "camera" else episode.streams["state"]
    t = df["t"].to_numpy().copy()
    t[[20, 21]] = t[[21, 20]]
    df["t"] = t
    work = run_rule(episode, "timestamps.non_monotonic")
    assert [(f.rows, f.detail["fix"]) for f in work.findings] == [((20, 22), "sort_clock")]
    fixed = work.all_streams()[stream]
    assert fixed.source_row.tolist() == list(range(len(t)))
    np.testing.assert_array_equal(fixed.t, np.sort(t))


def test_duplicate_rule_keeps_first_row(episode):
    idx = episode.cameras["camera"].index
    episode.cameras["camera"].index = pd.concat([idx.iloc[:11], idx.iloc[10:11], idx.iloc[11:]]).reset_index(drop=True)
    work = run_rule(episode, "timestamps.duplicate")
    assert kinds(work) == [("duplicate_timestamps", "camera", None, (10, 12))]
    assert len(work.cameras["camera"]) == len(idx)
    assert work.cameras["camera"].source_row[10:12].tolist() == [10, 12]  # input row 11 (the copy) is gone


def test_gap_rule_masks_long_drops_only(episode):
    idx = episode.cameras["camera"].index
    episode.cameras["camera"].index = idx.drop(index=[20, 21, 22, 40]).reset_index(drop=True)
    work = run_rule(episode, "timestamps.gap")
    found = [(f.kind, f.rows, f.action, f.detail["missing"]) for f in work.findings]
    assert found == [("dropped_frames", (19, 21), "mask", 3), ("dropped_frames", (36, 38), "flag", 1)]
    assert len(work.masks) == 1 and work.masks[0].stream == "camera"
    t = idx["t"].to_numpy()
    assert work.masks[0].t0 == pytest.approx(t[19]) and work.masks[0].t1 == pytest.approx(t[23])


# ----------------------------------------------------------------------------- values


def test_nan_rule_interpolates_short_runs_and_masks_long_ones(episode):
    df = episode.streams["imu"]
    df.loc[30:31, "ax"] = np.nan
    df.loc[100:119, "ay"] = np.inf
    work = run_rule(episode, "values.nan_inf")
    found = [(f.column, f.rows, f.action) for f in work.findings]
    assert found == [("ax", (30, 32), "fix"), ("ay", (100, 120), "mask")]
    out = work.streams["imu"].columns
    assert np.isfinite(out["ax"]).all() and np.isfinite(out["ay"]).all()
    # linear interpolation across rows 29..32 (known answer)
    x = df["ax"].to_numpy()
    np.testing.assert_allclose(out["ax"][30:32], x[29] + (x[32] - x[29]) * np.array([1, 2]) / 3)


def test_nan_in_clock_drops_the_row(episode):
    episode.streams["action"].loc[7, "t"] = np.nan
    work = run_rule(episode, "values.nan_inf")
    assert kinds(work) == [("nan_inf", "action", "t", (7, 8))]
    assert len(work.streams["action"]) == len(episode.streams["action"]) - 1


def test_negative_speed_fixed_by_interpolation(episode):
    speed = episode.streams["state"]["speed"].to_numpy().copy()
    truth = speed.copy()
    speed[60:62] *= -1
    episode.streams["state"]["speed"] = speed
    work = run_rule(episode, "values.negative_speed")
    assert kinds(work) == [("negative_speed", "state", "speed", (60, 62))]
    fixed = work.streams["state"].columns["speed"]
    assert (fixed >= 0).all()
    np.testing.assert_allclose(fixed[60:62], truth[60:62], rtol=0.02)  # smooth signal: interpolation ≈ truth


def test_spike_flags_only_the_spike_not_steps(episode):
    x = episode.streams["state"]["x"].to_numpy().copy()
    clean = x.copy()
    x[90] += 0.4
    episode.streams["state"]["x"] = x
    work = run_rule(episode, "values.spike")
    assert [(f.stream, f.column, f.rows) for f in work.findings] == [("state", "x", (90, 91))]
    np.testing.assert_allclose(work.streams["state"].columns["x"][90], clean[90], atol=1e-3)
    # the gripper column is a ±1 step: discrete, never a spike
    assert not any(f.column == "gripper" for f in work.findings)


def test_spike_detector_known_answer():
    x = np.sin(np.linspace(0, 6, 300))
    x[[50, 200]] += [2.0, -3.0]  # single-sample glitches
    x[[120, 121, 122]] += [1.2, 2.0, 1.4]  # an impulse that rises and falls over samples: signal, not a spike
    x[250::3] += 1.5  # chatter with period 3: its values recur, not spikes
    flags, repaired = values.spike_flags(x, window=15, sigmas=10.0, spread=1.5, abs_floor=1e-6)
    assert np.flatnonzero(flags).tolist() == [50, 200]
    assert repaired[50] == pytest.approx(np.sin(6 * 50 / 299), abs=1e-3)  # the neighbours' mean on a smooth curve


def test_neighbour_residual_known_answer():
    x = np.array([0.0, 1.0, 2.0, 7.0, 4.0, 5.0])  # a line with a spike of +4 at row 3
    assert values.neighbour_residual(x).tolist() == [0.0, 0.0, -2.0, 4.0, -2.0, 0.0]


def test_huber_clip_leaves_smooth_motion_alone():
    t = np.linspace(0, 2, 160)
    x = np.sin(2 * t)
    same, changed = values.huber_clip(x, window=7, sigmas=10.0, floor=0.1)
    assert not changed.any() and np.array_equal(same, x)
    x2 = x.copy()
    x2[80] += 0.8
    clipped, changed = values.huber_clip(x2, window=7, sigmas=10.0, floor=0.1)
    assert changed[80] and abs(clipped[80] - x[80]) < abs(x2[80] - x[80])


def test_dead_and_saturated_dimensions(episode):
    episode.streams["imu"]["az"] = 0.0
    work = run_rule(episode, "values.dead_dimension")
    assert ("dead_dimension", "imu", "az", (0, len(episode.streams["imu"]))) in kinds(work)
    work = run_rule(episode, "values.saturated_dimension")
    assert all(f.kind == "saturated_dimension" for f in work.findings)


# ----------------------------------------------------------------------------- camera


def test_frozen_camera_masked(episode):
    index = episode.cameras["camera"].index
    index.loc[11:15, "frame"] = 10  # rows 11..15 repeat row 10's picture
    work = run_rule(episode, "camera.frozen")
    assert kinds(work) == [("frozen_camera", "camera", None, (10, 16))]
    assert len(work.masks) == 1 and work.masks[0].t0 == pytest.approx(index["t"][11])


def test_noise_free_camera_needs_motion():
    """A renderer without sensor noise repeats pictures while the scene stands still: not frozen."""
    ep = make_episode("ep_0000", "push", np.random.default_rng(1), SyntheticConfig(image_noise=0.0))
    index = ep.cameras["camera"].index
    n = len(index)
    frames = ep.cameras["camera"].frames
    frames[:] = 100
    frames[:, :4, :4, 0] = np.arange(n, dtype=np.uint8)[:, None, None]  # every frame distinct, few pixels change
    index.loc[n - 5 : n - 1, "frame"] = n - 6  # the last rows repeat while the arm holds still
    assert run_rule(ep, "camera.frozen").findings == []
    assert len(run_rule(ep, "camera.frozen", motion_stream="").findings) == 1
    index.loc[:, "frame"] = np.arange(n)
    index.loc[11:15, "frame"] = 10  # ... but a repeat while the arm moves is
    assert kinds(run_rule(ep, "camera.frozen")) == [("frozen_camera", "camera", None, (10, 16))]
    # with sensor noise the same static repeat cannot be natural
    noisy = make_episode("ep_0000", "push", np.random.default_rng(1), SyntheticConfig())
    noisy.cameras["camera"].index.loc[n - 5 : n - 1, "frame"] = n - 6
    assert len(run_rule(noisy, "camera.frozen").findings) == 1


def test_frame_differences_known_answer():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 10
    frames[2] = 10
    frames[2, 0, 0] = 250  # one pixel of 16 changes
    d, share = camera.frame_differences(frames, np.array([0, 1, 2, 2]))
    assert np.isinf(d[0]) and d[1:].tolist() == [10.0, 240 / 16, 0.0]
    assert share.tolist() == [1.0, 1.0, 1 / 16, 0.0]


def test_degenerate_frames_masked(episode):
    frames = episode.cameras["camera"].frames
    frames[5] = 0
    frames[6] = 255
    work = run_rule(episode, "camera.degenerate")
    assert kinds(work) == [("degenerate_image", "camera", None, (5, 7))]


# ----------------------------------------------------------------------------- episode


def test_short_episode_dropped(episode):
    for name in list(episode.streams):
        episode.streams[name] = episode.streams[name].iloc[:5]
    work = run_rule(episode, "episode.short")
    assert work.dropped and work.findings[0].kind == "short_episode"
