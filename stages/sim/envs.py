"""Meta-World environments with scripted experts, a fast headless renderer and an actuator model.

Everything a recorder or a closed-loop evaluator needs from the simulator lives here:

    env = make_env("reach", seed=3)          # goal/object placement drawn from `seed`
    obs = env.reset(seed=4)                  # or re-draw them later without rebuilding the model
    frame = env.render()                     # uint8 [H, W, 3], fast settings, corner cams unrotated
    a = env.expert_action()                  # float64 [4] in [-1, 1]: the scripted expert
    env.step(a); env.success                 # actuator delay applied inside `step`

Control runs at 80 Hz (frame_skip 5 x 2.5 ms). The demo robot's actuation model: a command reaches
the mocap target `ACTUATOR_DELAY_STEPS` control steps after it is issued (transport delay), and the
hand follows the mocap through a stiff servo (the weld, time constant `SERVO_TIMECONST_S`). The
recorder also limits the command's slew rate (`stages.sim.rollout`). The response lag this plant
shows is measured, not assumed (`stages.sim.lag`, docs/sim.md): ≈40 ms.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must precede the first mujoco import

import collections
import warnings
from dataclasses import dataclass

import mujoco
import numpy as np

from stages.errors import BadInput

CONTROL_HZ = 80.0  # 5 MuJoCo substeps of 2.5 ms per env step
CONTROL_DT = 1.0 / CONTROL_HZ
ACTION_SCALE = 0.01  # metres of mocap travel per control step per unit of action (Meta-World)
ACTION_UNIT_MPS = ACTION_SCALE * CONTROL_HZ  # 1 action unit = 0.8 m/s of commanded hand speed
ACTUATOR_DELAY_STEPS = 2  # transport delay of the demo robot's actuators, in control steps (25 ms)
# Time constant of the servo that pulls the hand onto its mocap target (MuJoCo weld `solref`, s).
# Meta-World's 20 ms weld plus the arm's inertia smears a command's effect over ~10 steps, so the
# action->motion cross-correlation peak wandered by ±15 ms between tasks; a 7.5 ms servo keeps the
# plant close to a pure delay (peak spread ~±2 ms, docs/sim.md) and the experts still succeed.
SERVO_TIMECONST_S = 0.0075
ROBOT_TYPE = "sawyer_mocap"
DEFAULT_CAMERA = "corner"
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")  # in every Meta-World scene


@dataclass(frozen=True)
class TaskSpec:
    name: str  # short name used everywhere in vla, e.g. "pick-place"
    env_name: str  # Meta-World name, e.g. "pick-place-v3"
    policy: str  # class name in metaworld.policies
    default_steps: int  # horizon that covers the expert's slowest success over 10 seeds, plus margin


def _spec(name: str, policy: str, default_steps: int) -> TaskSpec:
    return TaskSpec(name, f"{name}-v3", policy, default_steps)


TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in [
        _spec("reach", "SawyerReachV3Policy", 80),
        _spec("push", "SawyerPushV3Policy", 130),
        _spec("pick-place", "SawyerPickPlaceV3Policy", 100),
        _spec("drawer-close", "SawyerDrawerCloseV3Policy", 100),
        _spec("door-open", "SawyerDoorOpenV3Policy", 220),
        _spec("button-press", "SawyerButtonPressV3Policy", 80),
        _spec("window-open", "SawyerWindowOpenV3Policy", 110),
        _spec("drawer-open", "SawyerDrawerOpenV3Policy", 110),
        # held out of the default train tasks: the open-set eval split
        _spec("button-press-topdown", "SawyerButtonPressTopdownV3Policy", 90),
        _spec("window-close", "SawyerWindowCloseV3Policy", 100),
    ]
}
DEFAULT_TASKS = ("reach", "push", "pick-place", "drawer-close", "door-open", "button-press", "window-open", "drawer-open")
HELDOUT_TASKS = ("button-press-topdown", "window-close")


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise BadInput(f"unknown task `{name}`", caused_by=f"known: {', '.join(TASKS)}") from None


class FastRenderer:
    """`mujoco.Renderer` with shadows, reflections and MSAA off (≈4x faster at 64x64).

    `corner*` cameras of Meta-World come out rotated by 180°; frames are returned upright.
    Call `close()` explicitly: the renderer's `__del__` at interpreter exit spews EGL errors.
    """

    def __init__(self, model: mujoco.MjModel, height: int = 64, width: int = 64, camera: str = DEFAULT_CAMERA):
        # Building the GL context dominates set-up: MSAA over Meta-World's 640x480 offscreen buffer
        # and a 4096² shadow map cost ~3 s per renderer, ~0.3 s without.
        model.vis.quality.offsamples = 0  # MSAA off; read when the GL context is made
        model.vis.quality.shadowsize = 1  # shadows are off in the scene flags anyway
        model.vis.global_.offwidth = width
        model.vis.global_.offheight = height
        self.camera = camera
        self._flip = camera.startswith("corner")
        self._renderer = mujoco.Renderer(model, height, width)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def render(self, data: mujoco.MjData) -> np.ndarray:
        self._renderer.update_scene(data, camera=self.camera)
        img = self._renderer.render()  # uint8 [H, W, 3]
        return np.ascontiguousarray(img[::-1, ::-1]) if self._flip else img

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class SimEnv:
    """One Meta-World task with its scripted expert, the demo robot's actuator delay and a renderer."""

    def __init__(self, task: str, *, height: int = 64, width: int = 64, camera: str = DEFAULT_CAMERA,
                 actuator_delay_steps: int = ACTUATOR_DELAY_STEPS):
        import metaworld.policies
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.spec = task_spec(task)
        env = ALL_V3_ENVIRONMENTS[self.spec.env_name]()
        # Goal-observable, seeded goals: what Meta-World's own goal-observable constructors do, but
        # re-seedable on reset without rebuilding the model (building it costs ~0.6 s).
        env._partially_observable = False
        del env.sawyer_observation_space  # cached property: recomputed for the full observation
        env._set_task_called = True
        env.seeded_rand_vec = True
        env.max_path_length = 10**9  # the recorder decides the horizon
        if env.model.neq != 1 or env.model.eq_type[0] != mujoco.mjtEq.mjEQ_WELD:
            raise RuntimeError(f"{self.spec.env_name}: expected the mocap weld as the only equality constraint")
        env.model.eq_solref[0] = (SERVO_TIMECONST_S, 1.0)
        self._env = env
        self.policy = getattr(metaworld.policies, self.spec.policy)()
        self._render_args = (height, width, camera)
        self.renderer: FastRenderer | None = None  # made on the first render (a GL context per env)
        self.delay = actuator_delay_steps
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self.obs: np.ndarray | None = None
        self.success = False
        self._hand_id = env.model.body("hand").id

    @property
    def model(self) -> mujoco.MjModel:
        return self._env.model

    @property
    def data(self) -> mujoco.MjData:
        return self._env.data

    def reset(self, seed: int) -> np.ndarray:
        """Place goal and objects from `seed` (deterministic) and return the first observation."""
        env = self._env
        env._freeze_rand_vec = False
        env.seed(seed)
        self.obs, _ = env.reset()
        env._freeze_rand_vec = True
        # reset moves sites (the goal) in the model after its last forward pass: without this the
        # first frame would show where the previous episode's goal was
        mujoco.mj_forward(self.model, self.data)
        self._queue = collections.deque(np.zeros(4) for _ in range(self.delay))
        self.success = False
        return self.obs

    def pending_offset(self) -> np.ndarray:
        """Where the commands still queued in the actuator will move the mocap target, m [3]."""
        if not self._queue:
            return np.zeros(3)
        return np.sum(self._queue, axis=0)[:3] * ACTION_SCALE

    def target_pos(self) -> np.ndarray:
        """The mocap target a command issued now will be added to (after the queued ones), m [3]."""
        return np.clip(self.data.mocap_pos[0] + self.pending_offset(), self._env.mocap_low, self._env.mocap_high)

    def expert_action(self, obs: np.ndarray | None = None) -> np.ndarray:
        """The scripted expert's action for `obs` (default: the latest observation), in [-1, 1]."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn whenever their P-gain saturates
            action = self.policy.get_action(self.obs if obs is None else obs)
        return np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)

    def step(self, action: np.ndarray) -> np.ndarray:
        """Issue `action` now; the plant receives the one issued `delay` steps ago."""
        self._queue.append(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        applied = self._queue.popleft()
        self.obs, _, _, _, info = self._env.step(applied)
        self.success = self.success or bool(info["success"])
        return self.obs

    def ee_pos(self) -> np.ndarray:
        """Position of the hand body (the end-effector the mocap servo drives), world frame, m [3]."""
        return np.array(self.data.xpos[self._hand_id], dtype=np.float64)

    def ee_vel(self) -> np.ndarray:
        """Instantaneous linear velocity of the hand body in the world frame, m/s [3]."""
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY, self._hand_id, vel, 0)
        return vel[3:]

    def gripper_opening(self) -> float:
        return float(self.obs[3])  # Meta-World's normalised finger distance in [0, 1]

    def render(self) -> np.ndarray:
        """The current scene from the configured camera, uint8 [H, W, 3]."""
        if self.renderer is None:
            self.renderer = FastRenderer(self.model, *self._render_args)
        return self.renderer.render(self.data)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self._env.close()


def make_env(task: str, seed: int | None = None, **kwargs) -> SimEnv:
    env = SimEnv(task, **kwargs)
    if seed is not None:
        env.reset(seed)
    return env
