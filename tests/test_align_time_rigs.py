"""Synthetic sensor rigs with known clock offsets, and the offset-estimation tests that run on them.

Two robots that share nothing with the demo robot, so that `align-time` is tested as a generic tool:

- `arm`: a 3-D hand driven by velocity commands (action 4-d at 80 Hz, pure transport delay), state
  [x, y, z, grip, speed] at 80 Hz, an accelerometer at 100 Hz, a 20 Hz camera of a blob.
- `rover`: a mobile base driven by [v, ω] commands at 30 Hz through a first-order plant, odometry
  [x, y, yaw] at 50 Hz (the reference), a 3-axis gyro at 200 Hz, a 15 Hz 36x44 overhead camera
  watching the textured body drive and turn over a textured floor.

A stream's clock reads t_stream = t_true + offset + drift·(t_true - t0) (the `truth` schema's
convention); each sample is taken at a jittered true instant and stamped on the stream's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.integrate import cumulative_trapezoid

from stages.data.raw import Camera, RawEpisode, write_episode
from stages.signal import lowpass

TRUE_HZ = 1000.0  # the simulated world runs on a 1 ms grid


@dataclass
class Rig:
    name: str
    reference: str
    rates: dict[str, float]  # stream -> nominal rate (Hz)
    jitter_ms: float = 2.0
    action_lag_ms: float = 0.0  # what the rig's plant does to commands (peak lag of action vs motion)
    cameras: tuple[str, ...] = ()
    columns: dict[str, list[str]] = field(default_factory=dict)


ARM = Rig("arm", "state", {"state": 80.0, "action": 80.0, "imu": 100.0, "camera": 20.0}, action_lag_ms=40.0,
          cameras=("camera",), columns={"state": ["x", "y", "z", "grip", "speed"], "action": ["vx", "vy", "vz", "grip"],
                                        "imu": ["ax", "ay", "az"]})
ROVER = Rig("rover", "odom", {"odom": 50.0, "action": 30.0, "gyro": 200.0, "cam_front": 15.0}, jitter_ms=3.0,
            cameras=("cam_front",), columns={"odom": ["x", "y", "yaw"], "action": ["v", "omega"], "gyro": ["wx", "wy", "wz"]})


def _smooth_noise(rng: np.random.Generator, n: int, cutoff_hz: float, scale: float) -> np.ndarray:
    x = lowpass(rng.normal(size=n), TRUE_HZ, cutoff_hz)
    return scale * x / (x.std() + 1e-12)


def _reaches(rng: np.random.Generator, n: int) -> np.ndarray:
    """Velocity commands [n, 3] (m/s): minimum-jerk reaches to random waypoints with pauses between."""
    u = np.zeros((n, 3))
    i = int(rng.integers(50, 300))
    while i < n:
        dur = int(rng.integers(350, 900))
        s = np.linspace(0, 1, dur)
        profile = 30 * s**2 * (1 - s) ** 2  # min-jerk velocity, integrates to 1 over s
        step = rng.normal(0, 0.12, size=3)
        seg = profile[:, None] * step[None, :] / (dur / TRUE_HZ)
        end = min(n, i + dur)
        u[i:end] = seg[: end - i]
        i = end + int(rng.integers(0, 300))
    return u


def _sample(rng, t_true: np.ndarray, values: np.ndarray, rate: float, jitter_ms: float, start: float, stop: float):
    """Sample a true signal at a stream's jittered instants: (instants [N], values [N, D])."""
    nominal = np.arange(start, stop, 1.0 / rate)
    inst = np.sort(nominal + rng.uniform(-1, 1, len(nominal)) * jitter_ms / 1000.0)
    inst = inst[(inst >= t_true[0]) & (inst <= t_true[-1])]
    out = np.stack([np.interp(inst, t_true, values[:, d]) for d in range(values.shape[1])], axis=1)
    return inst, out


def _world(rig: Rig, rng: np.random.Generator, seconds: float) -> dict[str, np.ndarray]:
    """True signals on the 1 ms grid, per stream: [n, D] arrays (cameras: the pose the image shows)."""
    n = int(seconds * TRUE_HZ)
    lag = int(round(rig.action_lag_ms))  # ms == samples at 1 kHz
    if rig.name == "arm":
        u = _reaches(rng, n)  # commanded hand velocity
        grip_cmd = (lowpass((rng.random(n // 400 + 1).repeat(400)[:n] > 0.5).astype(float), TRUE_HZ, 3.0) - 0.5) * 2
        v = np.vstack([np.zeros((lag, 3)), u[: n - lag]])  # transport delay: the plant's response lag
        p = cumulative_trapezoid(v, dx=1 / TRUE_HZ, axis=0, initial=0) + rng.normal(0, 0.1, 3)
        grip = np.concatenate([np.zeros(lag), grip_cmd[: n - lag]])
        acc = np.gradient(v, 1 / TRUE_HZ, axis=0)
        speed = np.linalg.norm(v, axis=1)
        return {"state": np.column_stack([p, grip, speed]), "action": np.column_stack([u / 0.8, grip_cmd]),
                "imu": acc + np.array([0.0, 0.0, 9.81]), "camera": p}
    # rover: [v, ω] commands through a delay + first-order plant
    cmd = np.column_stack([np.abs(_smooth_noise(rng, n, 0.8, 0.5)), _smooth_noise(rng, n, 1.0, 0.6)])
    delayed = np.vstack([np.zeros((lag, 2)), cmd[: n - lag]])
    alpha = (1 / TRUE_HZ) / 0.05  # 50 ms time constant
    from scipy.signal import lfilter
    vel = lfilter([alpha], [1, alpha - 1], delayed, axis=0)
    yaw = cumulative_trapezoid(vel[:, 1], dx=1 / TRUE_HZ, initial=0)
    xy = cumulative_trapezoid(vel[:, [0]] * np.column_stack([np.cos(yaw), np.sin(yaw)]), dx=1 / TRUE_HZ, axis=0, initial=0)
    # a planar rover: roll and pitch rates are only sensor noise
    gyro = np.column_stack([rng.normal(0, 0.01, (n, 2)), vel[:, 1]])
    return {"odom": np.column_stack([xy, yaw]), "action": cmd, "gyro": gyro, "cam_front": np.column_stack([xy, yaw])}


def _render(rig: Rig, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera frames uint8 [N, H, W, 3] showing `pose` [N, D]."""
    if rig.name == "arm":
        h = w = 48
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        cx = 24 + 60 * (pose[:, 0] - pose[:, 0].mean())
        cy = 24 + 60 * (pose[:, 1] - pose[:, 1].mean()) - 30 * (pose[:, 2] - pose[:, 2].mean())
        blob = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / (2 * 4.0**2))
        img = 40 + 180 * blob  # [N, H, W]
        rgb = np.stack([img, 0.6 * img + 30, 0.3 * img + 60], axis=-1)
    else:
        # an overhead camera over a textured floor, watching the textured rover body move and turn
        h, w = 36, 44
        floor = ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.5)
        floor = 110 + 40 * floor / floor.std()
        body = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 2.0)
        body = 170 + 50 * body / body.std()
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        px, py = 22 + 40 * (pose[:, 0] - pose[:, 0].mean()), 18 + 40 * (pose[:, 1] - pose[:, 1].mean())  # metres -> pixels
        dx, dy = xx[None] - px[:, None, None], yy[None] - py[:, None, None]  # [N, H, W]
        c, s = np.cos(pose[:, 2])[:, None, None], np.sin(pose[:, 2])[:, None, None]
        bx, by = c * dx + s * dy, -s * dx + c * dy  # pixel in the rover's body frame
        inside = (np.abs(bx) < 9) & (np.abs(by) < 6)
        tex = ndimage.map_coordinates(body, np.stack([32 + 3 * by, 32 + 3 * bx]).reshape(2, -1), order=1, mode="reflect")
        img = np.where(inside, tex.reshape(inside.shape), floor[None])
        rgb = np.stack([img, img * 0.9, img * 0.8], axis=-1)
    rgb = rgb + rng.normal(0, 2.0, rgb.shape)  # sensor noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def make_episode(rig: Rig, episode_id: str, *, offsets_ms: dict[str, float], seed: int, seconds: float = 6.0,
                 session: str = "s0", drift_ppm: dict[str, float] | None = None, clock_start: float = 0.0,
                 clock_column: bool = False) -> RawEpisode:
    """One episode of `rig` whose streams' clocks are offset by `offsets_ms` (against true time).

    `clock_column` adds a column `clock` holding each sample's true instant to every continuous
    stream (a ramp: it must not fool the estimator, and it lets a test read the alignment back).
    """
    rng = np.random.default_rng(seed)
    margin = 1.0  # true signals start a second early so every stream has data in its window
    world = _world(rig, rng, seconds + 2 * margin)
    t_true = clock_start - margin + np.arange(len(next(iter(world.values())))) / TRUE_HZ
    ep = RawEpisode(episode_id=episode_id, meta={"episode_id": episode_id, "instruction": f"{rig.name} task",
                                                 "task": rig.name, "session": session, "robot_type": rig.name})
    for name, rate in rig.rates.items():
        inst, values = _sample(rng, t_true, world[name], rate, rig.jitter_ms, clock_start, clock_start + seconds)
        drift = (drift_ppm or {}).get(name, 0.0) * 1e-6
        stamps = inst + offsets_ms.get(name, 0.0) / 1000.0 + drift * (inst - clock_start)
        if name in rig.cameras:
            frames = _render(rig, values, rng)
            index = pd.DataFrame({"t": stamps, "frame": np.arange(len(stamps), dtype=np.int64)})
            ep.cameras[name] = Camera(index=index, frames=frames, shape=frames.shape)
        else:
            if name == "imu":
                values = values + rng.normal(0, 0.05, values.shape)  # accelerometer noise, m/s²
            cols = rig.columns[name]
            ep.streams[name] = pd.DataFrame({"t": stamps, **{c: values[:, i] for i, c in enumerate(cols)}})
            if clock_column:
                ep.streams[name]["clock"] = inst
    return ep


def offsets_for(rig: Rig, rng: np.random.Generator, limit_ms: float = 300.0) -> dict[str, float]:
    return {name: float(rng.uniform(-limit_ms, limit_ms)) for name in rig.rates}


def write_rig_dataset(rig: Rig, root: Path, *, sessions: int, per_session: int, seed: int, seconds: float = 6.0,
                      drift_ppm: float = 0.0, clock_column: bool = False) -> dict:
    """Write a raw dataset; return the truth: episode -> stream -> offset against the reference (ms)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, float]] = {}
    for s in range(sessions):
        offsets = offsets_for(rig, rng)
        drift = {name: float(rng.uniform(-drift_ppm, drift_ppm)) for name in rig.rates}
        for e in range(per_session):
            eid = f"{rig.name}_s{s}_e{e:02d}"
            start = e * (seconds + 4.0)  # episodes follow each other on the session's clocks
            ep_offsets = {k: v + drift[k] * 1e-6 * start * 1000.0 for k, v in offsets.items()}
            ep = make_episode(rig, eid, offsets_ms=ep_offsets, seed=int(rng.integers(2**31)), seconds=seconds,
                              session=f"s{s}", drift_ppm=drift, clock_start=start, clock_column=clock_column)
            write_episode(root, ep)
            ref = ep_offsets[rig.reference]
            truth[eid] = {k: v - ref for k, v in ep_offsets.items() if k != rig.reference}
    return truth


# ----------------------------------------------------------------------------- tests


def test_rig_stamps_follow_the_truth_convention():
    """t_stream = t_true + offset + drift·(t_true - t0): the clock column holds t_true, so it checks itself."""
    ep = make_episode(ROVER, "e0", offsets_ms={"gyro": 120.0, "odom": -30.0}, seed=1, seconds=3.0,
                      drift_ppm={"gyro": 100.0}, clock_start=50.0, clock_column=True)
    for name, offset, drift in (("gyro", 0.120, 100e-6), ("odom", -0.030, 0.0), ("action", 0.0, 0.0)):
        df = ep.streams[name]
        expected = df["clock"] + offset + drift * (df["clock"] - 50.0)
        np.testing.assert_allclose(df["t"], expected, atol=1e-9)
        rate = 1.0 / np.median(np.diff(df["t"]))
        assert rate == pytest.approx(ROVER.rates[name], rel=0.02)  # jitter ±3 ms leaves the median spacing
    cam = ep.cameras["cam_front"]
    assert cam.frames.shape[1:] == (36, 44, 3) and len(cam.frames) == len(cam.t)
