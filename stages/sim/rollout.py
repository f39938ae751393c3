"""One expert episode on true time: what the robot did, before any sensor rig or fault.

Step k happens at true time k·dt after the episode's start: the proprio state is read, the expert
(projected onto the instruction's constraint) issues action k, the camera captures a frame every
`camera_every` steps. The actuator applies the command `ACTUATOR_DELAY_STEPS` steps later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.sim import lag
from stages.sim.constraints import Constraint, project_action
from stages.sim.envs import CONTROL_DT, SimEnv
from stages.sim.filters import lowpass_zero_phase

# The demo robot's command interface limits how fast a command may change (per control step, in
# action units: 0.25 = 0.2 m/s per step, 16 m/s²). The scripted experts switch phases abruptly
# and sometimes for a single step; unlimited, such one-step excursions look exactly like spikes.
COMMAND_SLEW_PER_STEP = 0.25
# The proprio velocity estimate is smoothed (zero-phase, σ = 1.5 steps): contact impacts make the
# hand's instantaneous velocity jump for a single step, which would read as a spike.
VELOCITY_FILTER_SIGMA_STEPS = 1.5


def limit_slew(command: np.ndarray, previous: np.ndarray, max_step: float = COMMAND_SLEW_PER_STEP) -> np.ndarray:
    """`command` [4] moved at most `max_step` per component from `previous` [4]."""
    return previous + np.clip(command - previous, -max_step, max_step)


@dataclass
class Rollout:
    task: str
    seed: int
    action: np.ndarray  # float64 [N, 4] commanded (recorded) actions, projected onto the constraint
    expert: np.ndarray  # float64 [N, 4] the expert's own actions before projection
    ee_pos: np.ndarray  # float64 [N, 3] hand position, m
    ee_vel: np.ndarray  # float64 [N, 3] hand velocity, m/s (zero-phase smoothed estimate)
    ee_acc: np.ndarray  # float64 [N, 3] hand acceleration, m/s² (central differences of ee_vel)
    gripper: np.ndarray  # float64 [N] finger opening in [0, 1]
    frames: np.ndarray  # uint8 [M, H, W, 3], frame j captured at step j·camera_every
    camera_every: int
    success: bool
    lag_ms: float  # action -> EE velocity cross-correlation peak of this episode (stages.sim.lag)
    xcorr: np.ndarray  # float64 [2K+1] that normalised correlation, for pooling over episodes

    @property
    def steps(self) -> int:
        return len(self.action)


def run_episode(env: SimEnv, seed: int, steps: int, constraint: Constraint | None, camera_every: int) -> Rollout:
    env.reset(seed)
    n = steps
    action = np.zeros((n, 4))
    expert = np.zeros((n, 4))
    pos = np.zeros((n, 3))
    vel = np.zeros((n + 1, 3))  # one extra sample so the last acceleration is a central difference
    grip = np.zeros(n)
    frames = []
    previous = np.zeros(4)  # the actuator queue starts at rest
    for k in range(n):
        pos[k], vel[k], grip[k] = env.ee_pos(), env.ee_vel(), env.gripper_opening()
        if k % camera_every == 0:
            frames.append(env.render())
        expert[k] = env.expert_action()
        # ch07 §7.9 QP-projected teacher: the projection comes last, so the constraint always holds
        action[k] = project_action(limit_slew(expert[k], previous), constraint, env.target_pos())
        previous = action[k]
        env.step(action[k])
    vel[n] = env.ee_vel()
    acc = np.gradient(vel, CONTROL_DT, axis=0)[:n]  # [N, 3] raw; the IMU applies its own filter
    vel = lowpass_zero_phase(vel, VELOCITY_FILTER_SIGMA_STEPS)
    c, _ = lag.action_motion_xcorr(action[:, :3], vel[:n], CONTROL_DT)
    return Rollout(
        task=env.spec.name, seed=seed, action=action, expert=expert, ee_pos=pos, ee_vel=vel[:n], ee_acc=acc,
        gripper=grip, frames=np.stack(frames), camera_every=camera_every, success=env.success,
        lag_ms=1000.0 * lag.peak_lag_s(c, lag_lags_s()), xcorr=c,
    )


def lag_lags_s() -> np.ndarray:
    """The lag axis (s) of every `Rollout.xcorr`."""
    k = int(round(lag.MAX_LAG_S / CONTROL_DT))
    return np.arange(-k, k + 1) * CONTROL_DT
