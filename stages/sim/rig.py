"""The sensor rig: each stream's rate, clock (offset + drift), timestamp jitter and sensor noise.

Clock convention (schemas/truth.schema.json): within an episode whose first true instant is t0,

    t_stream = t_true + offset_ms / 1000 + drift_ppm · 1e-6 · (t_true - t0) + jitter

A clock offset belongs to a stream in a *session*: the session draws offset_ms (uniform in
±max_offset_ms) and drift_ppm (uniform in ±max_drift_ppm) per stream at its start t_s; an episode
starting at t0 inherits offset_ms + drift_ppm · 1e-6 · (t0 - t_s) · 1000. Jitter is Gaussian,
clipped at ±3σ, and 6σ stays below every stream's period so that timestamps stay monotonic unless a
fault says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.errors import BadInput
from stages.sim.envs import CONTROL_DT, CONTROL_HZ
from stages.sim.filters import lowpass_zero_phase
from stages.sim.rollout import Rollout

CAMERA, STATE, IMU, ACTION = "camera", "state", "imu", "action"
STREAMS = (CAMERA, STATE, IMU, ACTION)
STATE_COLUMNS = ("ee_x", "ee_y", "ee_z", "ee_vx", "ee_vy", "ee_vz", "ee_speed", "gripper")
ACTION_COLUMNS = ("dx", "dy", "dz", "grip")
IMU_COLUMNS = ("acc_x", "acc_y", "acc_z")
SPEED_COLUMN = "ee_speed"  # the non-negative channel that negative-speed glitches go on
GRAVITY = 9.81  # an accelerometer reads specific force: +g on z at rest
IMU_FILTER_SIGMA_S = 0.0125  # the accelerometer's anti-aliasing filter: zero-phase Gaussian, σ = 1 step
JITTER_CLIP = 3.0  # jitter is clipped at ±3σ


@dataclass(frozen=True)
class StreamSpec:
    name: str
    kind: str  # "camera" | "continuous"
    rate_hz: float
    jitter_ms: float
    columns: tuple[str, ...] = ()

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    def to_json(self) -> dict:
        return {"kind": self.kind, "rate_hz": self.rate_hz, "jitter_ms": self.jitter_ms, "columns": list(self.columns)}


@dataclass(frozen=True)
class RigConfig:
    camera_hz: float = 20.0  # must divide the 80 Hz control rate (frames are rendered at steps)
    state_hz: float = 80.0  # must divide the control rate
    action_hz: float = 80.0  # must divide the control rate
    imu_hz: float = 100.0  # any rate: the EE acceleration is interpolated to the IMU's instants
    jitter_ms: dict[str, float] = field(default_factory=lambda: {CAMERA: 2.0, STATE: 1.0, IMU: 0.5, ACTION: 1.0})
    max_offset_ms: float = 300.0  # session clock offsets are drawn uniformly in ±this
    max_drift_ppm: float = 50.0  # session clock drifts are drawn uniformly in ±this
    imu_noise: float = 0.1  # m/s², white noise on each accelerometer axis
    camera_noise: float = 2.0  # intensity levels, sensor noise on every pixel (no two frames identical)
    episodes_per_session: int = 8
    session_gap_s: tuple[float, float] = (2.0, 6.0)  # idle time between a session's episodes

    def streams(self) -> dict[str, StreamSpec]:
        j = self.jitter_ms
        return {
            CAMERA: StreamSpec(CAMERA, "camera", self.camera_hz, j[CAMERA]),
            STATE: StreamSpec(STATE, "continuous", self.state_hz, j[STATE], STATE_COLUMNS),
            IMU: StreamSpec(IMU, "continuous", self.imu_hz, j[IMU], IMU_COLUMNS),
            ACTION: StreamSpec(ACTION, "continuous", self.action_hz, j[ACTION], ACTION_COLUMNS),
        }

    def every(self, stream: str) -> int:
        """Control steps between two samples of a stream sampled at steps (camera, state, action)."""
        return int(round(CONTROL_HZ / self.streams()[stream].rate_hz))

    def validate(self) -> None:
        for name, spec in self.streams().items():
            if spec.rate_hz <= 0:
                raise BadInput(f"rig: stream `{name}` has rate {spec.rate_hz} Hz", caused_by="rates must be positive")
            if name != IMU and abs(CONTROL_HZ / spec.rate_hz - round(CONTROL_HZ / spec.rate_hz)) > 1e-9:
                raise BadInput(f"rig: stream `{name}` has rate {spec.rate_hz} Hz", caused_by=f"it must divide the {CONTROL_HZ:g} Hz control rate")
            if spec.jitter_ms < 0 or 2 * JITTER_CLIP * spec.jitter_ms >= 1000.0 * spec.period_s:
                raise BadInput(f"rig: stream `{name}` has jitter {spec.jitter_ms} ms", caused_by=f"need 0 <= 6σ < its period {1000 * spec.period_s:g} ms")
        if self.max_offset_ms < 0 or self.max_drift_ppm < 0 or self.imu_noise < 0 or self.camera_noise < 0:
            raise BadInput("rig: offsets, drifts and noise levels must be non-negative")
        if self.episodes_per_session < 1:
            raise BadInput(f"rig: episodes_per_session is {self.episodes_per_session}", caused_by="must be at least 1")


@dataclass(frozen=True)
class SessionClock:
    name: str
    t0: float  # true time (s) at which the session starts
    offset_ms: dict[str, float]  # per stream, at t0
    drift_ppm: dict[str, float]

    def offsets_at(self, t: float) -> dict[str, float]:
        """Each stream's clock offset (ms) at true time `t`: the session offset plus accumulated drift."""
        return {s: self.offset_ms[s] + self.drift_ppm[s] * 1e-6 * (t - self.t0) * 1000.0 for s in self.offset_ms}

    def to_json(self) -> dict:
        return {"t0": self.t0, "offset_ms": dict(self.offset_ms), "drift_ppm": dict(self.drift_ppm)}


def draw_session(name: str, t0: float, cfg: RigConfig, rng: np.random.Generator) -> SessionClock:
    offsets = {s: float(np.round(rng.uniform(-cfg.max_offset_ms, cfg.max_offset_ms), 3)) for s in STREAMS}
    drifts = {s: float(np.round(rng.uniform(-cfg.max_drift_ppm, cfg.max_drift_ppm), 3)) for s in STREAMS}
    return SessionClock(name, t0, offsets, drifts)


@dataclass
class StreamData:
    """One stream of one episode as the logger writes it: times on the stream's own clock."""

    t: np.ndarray  # float64 [N]
    values: np.ndarray | None = None  # float64 [N, C] for continuous streams
    columns: tuple[str, ...] = ()
    frames: np.ndarray | None = None  # uint8 [N, H, W, 3] for cameras; row i shows frame i
    t_true: np.ndarray | None = None  # float64 [N] true instants relative to the episode's t0


def stamp(t_rel: np.ndarray, t0: float, offset_ms: float, drift_ppm: float, jitter_ms: float, rng: np.random.Generator) -> np.ndarray:
    """Timestamps on a stream's clock for true instants `t0 + t_rel` (module doc's convention)."""
    jitter = np.clip(rng.standard_normal(len(t_rel)), -JITTER_CLIP, JITTER_CLIP) * (jitter_ms / 1000.0)
    return t0 + t_rel + offset_ms / 1000.0 + drift_ppm * 1e-6 * t_rel + jitter


def sense(ro: Rollout, t0: float, offset_ms: dict[str, float], drift_ppm: dict[str, float], cfg: RigConfig,
          rng: np.random.Generator) -> dict[str, StreamData]:
    """Turn a true-time rollout into the four logged streams (before faults)."""
    n = ro.steps
    steps_t = np.arange(n) * CONTROL_DT  # [N] true instants of the control steps
    jitter = cfg.jitter_ms
    out: dict[str, StreamData] = {}

    def at_steps(stream: str) -> np.ndarray:
        return np.arange(0, n, cfg.every(stream))

    k = at_steps(STATE)
    speed = np.linalg.norm(ro.ee_vel, axis=1, keepdims=True)
    state = np.hstack([ro.ee_pos, ro.ee_vel, speed, ro.gripper[:, None]])[k]  # [N, 8]
    out[STATE] = StreamData(stamp(steps_t[k], t0, offset_ms[STATE], drift_ppm[STATE], jitter[STATE], rng), state, STATE_COLUMNS, t_true=steps_t[k])

    k = at_steps(ACTION)
    out[ACTION] = StreamData(stamp(steps_t[k], t0, offset_ms[ACTION], drift_ppm[ACTION], jitter[ACTION], rng), ro.action[k].copy(), ACTION_COLUMNS, t_true=steps_t[k])

    imu_t = np.arange(int(np.floor(steps_t[-1] * cfg.imu_hz + 1e-9)) + 1) / cfg.imu_hz  # within the rollout
    smooth = lowpass_zero_phase(ro.ee_acc, IMU_FILTER_SIGMA_S / CONTROL_DT)  # [N, 3]
    acc = np.stack([np.interp(imu_t, steps_t, smooth[:, i]) for i in range(3)], axis=1)  # [M, 3]
    acc[:, 2] += GRAVITY
    acc += rng.standard_normal(acc.shape) * cfg.imu_noise
    out[IMU] = StreamData(stamp(imu_t, t0, offset_ms[IMU], drift_ppm[IMU], jitter[IMU], rng), acc, IMU_COLUMNS, t_true=imu_t)

    cam_t = np.arange(len(ro.frames)) * ro.camera_every * CONTROL_DT
    noise = np.rint(rng.standard_normal(ro.frames.shape) * cfg.camera_noise)
    frames = np.clip(ro.frames.astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)
    out[CAMERA] = StreamData(stamp(cam_t, t0, offset_ms[CAMERA], drift_ppm[CAMERA], jitter[CAMERA], rng), frames=frames, t_true=cam_t)
    return out
