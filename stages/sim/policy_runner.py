"""A trained VLA policy as a closed-loop controller of the simulator.

Observations are built exactly like the recorded dataset's features:

- `observation.state`: the rig's state columns (`stages.sim.rig.STATE_COLUMNS`: hand position,
  hand velocity, speed magnitude, gripper opening) read at the control step, in the order
  `rig.sense` builds them; normalised with the statistics saved in the checkpoint's config
  (`norm_stats`), never the evaluation's own. One difference cannot be avoided: the recorder
  smooths the velocity with a zero-phase Gaussian (σ = 1.5 control steps, `rollout.
  VELOCITY_FILTER_SIGMA_STEPS`), which needs future samples; a controller has none, so the closed
  loop reads the instantaneous velocity, which the smoothed one equals wherever the motion is smooth
  (tests check that smoothing what we read reproduces the recorded rows exactly).
- `observation.images.camera`: the recorder's camera at the dataset's image size, rendered with the
  same fast settings (`SimEnv.render`) plus the rig's sensor noise (`RigConfig.camera_noise`
  intensity levels, rounded Gaussian, as `rig.sense` adds it); a history of `vision.frames` frames
  `history_stride` dataset frames apart, ending at the current frame, earlier frames clamped to the
  episode's first (the loader's window).
- the instruction as text; the policy head's mean is the action (a deterministic controller).

Rates. The dataset holds one frame per `CONTROL_HZ / fps` control steps (20 fps → every 4th 80 Hz
step), and its action at frame t is the command issued at control step 4t. A chunk of H actions
predicted at frame t therefore covers control steps 4t … 4(t+H)−1; each control step gets the
linear interpolation of the two chunk actions around it (first-order hold:
a(4t + 4i + j) = a_i + (j/4)(a_{i+1} − a_i), j = 0..3), the inverse of how align-time resampled the
80 Hz command onto the 20 Hz grid.

Execution: receding horizon. The first `execute` chunk steps (default 4 = 200 ms = 16 control steps)
are executed, then the policy replans from a fresh observation; the rest of the chunk is dropped.
One forward pass per replan, and frames are rendered only at the 20 Hz instants some replan's
history window needs. (ACT-style temporal ensembling would need a forward pass and a frame at every
20 Hz step for a smoothing that the first-order hold already gives.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.errors import BadInput
from stages.sim.closed_loop import EvalEpisode
from stages.sim.envs import CONTROL_HZ, SimEnv
from stages.sim.rig import ACTION_COLUMNS, STATE_COLUMNS, RigConfig

STATE_KEY = "observation.state"
ACTION_KEY = "action"


def state_vector(env: SimEnv) -> np.ndarray:
    """float64 [8] in `STATE_COLUMNS` order: the row `rig.sense` logs for this control step, with the
    instantaneous velocity in place of the recorder's zero-phase smoothed one (module doc)."""
    vel = env.ee_vel()
    return np.concatenate([env.ee_pos(), vel, [np.linalg.norm(vel)], [env.gripper_opening()]])


@dataclass(frozen=True)
class ChunkExecution:
    fps: int = 20  # the dataset's frame rate, i.e. the policy's rate
    execute: int = 4  # chunk steps executed before replanning (receding horizon)
    history_stride: int = 1  # dataset frames between two history frames (the loader's `history_stride`)
    camera_noise: float = RigConfig().camera_noise  # the rig's pixel noise, intensity levels

    @property
    def every(self) -> int:
        """Control steps per dataset frame."""
        return int(round(CONTROL_HZ / self.fps))

    def validate(self, horizon: int) -> None:
        if self.fps <= 0 or abs(CONTROL_HZ / self.fps - round(CONTROL_HZ / self.fps)) > 1e-9:
            raise BadInput(f"dataset fps {self.fps} does not divide the {CONTROL_HZ:g} Hz control rate",
                           caused_by="closed-loop evaluation maps each dataset frame to whole control steps")
        if not 1 <= self.execute < horizon:
            raise BadInput(f"closed-loop `execute` is {self.execute}", caused_by=f"must be in 1..{horizon - 1} (chunk horizon {horizon})")
        if self.history_stride < 1 or self.camera_noise < 0:
            raise BadInput("closed-loop history stride must be ≥ 1 and camera noise ≥ 0")


def check_policy_inputs(model, size: int) -> None:
    """The model must read the sim's observations: image size, state and action widths, norm stats."""
    cfg = model.config
    if cfg.vision.image_size != size:
        raise BadInput(f"model config field `vision.image_size` is {cfg.vision.image_size}", caused_by=f"the simulator renders {size}x{size}")
    for field, width, feature in (("action.state_dim", len(STATE_COLUMNS), STATE_KEY), ("action.action_dim", len(ACTION_COLUMNS), ACTION_KEY)):
        have = cfg.action.state_dim if feature == STATE_KEY else cfg.action.action_dim
        if have != width:
            raise BadInput(f"model config field `{field}` is {have}", caused_by=f"the simulator's `{feature}` has {width} columns")
        stats = (cfg.norm_stats or {}).get(feature)
        if not stats or len(stats.get("mean", [])) != width or len(stats.get("std", [])) != width:
            raise BadInput(f"model config field `norm_stats.{feature}` is missing or not {width} wide",
                           caused_by="closed-loop inputs are normalised with the statistics the model trained with")


class ChunkPolicy:
    """`ControlPolicy` over a `VLAModel`: receding-horizon chunks, first-order hold (module doc)."""

    def __init__(self, model, execution: ChunkExecution = ChunkExecution(), *, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.x = execution
        self.history = int(model.config.vision.frames)
        self.horizon = int(model.config.action.horizon)
        execution.validate(self.horizon)
        self.forwards = 0

    def needed(self, f: int) -> bool:
        """Frame f is rendered iff some replan frame r = m·execute has f in its window r − j·stride."""
        return any((f + j * self.x.history_stride) % self.x.execute == 0 for j in range(self.history))

    def reset(self, env: SimEnv, episode: EvalEpisode) -> None:
        self.instruction = episode.instruction
        self.rng = np.random.default_rng([episode.seed % 2**63, 3])  # camera noise, one stream per episode
        self.frames: dict[int, np.ndarray] = {}
        self.plan: np.ndarray | None = None
        self.plan_start = 0

    def _frame(self, env: SimEnv) -> np.ndarray:
        img = env.render()  # uint8 [H, W, 3]
        if self.x.camera_noise <= 0:
            return img
        noise = np.rint(self.rng.standard_normal(img.shape) * self.x.camera_noise)  # as rig.sense adds it
        return np.clip(img.astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)

    def act(self, env: SimEnv, step: int) -> np.ndarray:
        every = self.x.every
        if step % every == 0 and self.needed(step // every):
            self.frames[step // every] = self._frame(env)
        if self.plan is None or step - self.plan_start >= len(self.plan):
            self.plan = self._replan(env, step)
            self.plan_start = step
        return self.plan[step - self.plan_start]

    @torch.no_grad()
    def _replan(self, env: SimEnv, step: int) -> np.ndarray:
        every, e = self.x.every, self.x.execute
        now = step // every
        window = [max(now - j * self.x.history_stride, 0) for j in reversed(range(self.history))]  # oldest first
        frames = np.stack([self.frames[f] for f in window])  # [T, H, W, 3]
        frames = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))[None].to(self.device)  # [1, T, 3, H, W]
        state = torch.as_tensor(state_vector(env), dtype=torch.float32, device=self.device)[None]  # [1, 8]
        m = self.model
        fused = m.fuse(m.encode_vision(frames), m.encode_language([self.instruction]))
        mean, _ = m.policy(fused, m.normalize(STATE_KEY, state))  # [1, H, Da] normalised
        chunk = m.denormalize(ACTION_KEY, mean)[0].double().cpu().numpy()  # [H, 4] robot units
        self.forwards += 1
        j = np.arange(e * every)
        i, frac = j // every, (j % every / every)[:, None]
        return np.clip(chunk[i] * (1.0 - frac) + chunk[i + 1] * frac, -1.0, 1.0)  # [E·every, 4]


@dataclass(frozen=True)
class CheckpointPolicySpec:
    """Builds a `ChunkPolicy` from a checkpoint directory (in each evaluation worker)."""

    ckpt: str
    execution: ChunkExecution = ChunkExecution()
    size: int = 64
    device: str = "cpu"

    def build(self) -> ChunkPolicy:
        from stages.probes.context import load_model  # the checkpoint reader shared with the probe

        model, _ = load_model(Path(self.ckpt), torch.device(self.device))
        check_policy_inputs(model, self.size)
        return ChunkPolicy(model, self.execution, device=self.device)


@dataclass
class ModelPolicySpec:
    """Wraps a model already in memory (in-process evaluation only: `ClosedLoopConfig.workers=1`)."""

    model: object
    execution: ChunkExecution = ChunkExecution()
    size: int = 64
    device: str = "cpu"
    in_process = True  # `evaluate` runs it in this process whatever `workers` says

    def __repr__(self) -> str:  # one policy per spec object in the evaluation's cache
        return f"ModelPolicySpec@{id(self):x}"

    def build(self) -> ChunkPolicy:
        check_policy_inputs(self.model, self.size)
        return ChunkPolicy(self.model, self.execution, device=self.device)
