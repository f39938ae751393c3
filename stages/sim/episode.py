"""Record one planned episode: expert rollout -> sensor rig -> row faults -> raw folder + truth.

`record_episode` depends only on its `EpisodeJob` (every random draw comes from the job's own seed),
so an episode's bytes are the same whichever worker records it, and in whatever order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.data.raw import Camera, RawEpisode, write_episode
from stages.sim import faults as F
from stages.sim.constraints import Constraint
from stages.sim.envs import ROBOT_TYPE, SimEnv
from stages.sim.rig import CAMERA, RigConfig, StreamData, sense
from stages.sim.rollout import run_episode

# child-seed purposes: changing one (e.g. fault rates) never changes the draws of another
_RIG, _FAULTS = 1, 2


@dataclass(frozen=True)
class EpisodeJob:
    key: int  # position in the plan (results are gathered in this order)
    episode_id: str
    split: str  # "train" | "eval"
    task: str
    env_name: str
    env_seed: int
    steps: int
    language: str
    instruction: str  # clean instruction (truth)
    written_instruction: str  # after a text fault, if any
    text_fault: dict | None
    constraint: Constraint | None
    open_set: bool
    session: str
    t0: float  # true start time, s
    offset_ms: dict[str, float]  # each stream's clock offset at t0
    drift_ppm: dict[str, float]
    seed: tuple[int, ...]  # entropy for this episode's rig and fault draws
    size: int
    camera: str
    rig: RigConfig
    faults: F.FaultConfig
    root: str  # directory the episode folder is written under


@dataclass
class EpisodeResult:
    key: int
    truth: dict
    success: bool
    lag_ms: float
    xcorr: np.ndarray  # normalised action -> EE velocity correlation, for the pooled robot lag
    fault_free: bool


def _rng(job: EpisodeJob, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*job.seed, purpose]))


def _raw_episode(job: EpisodeJob, streams: dict[str, StreamData]) -> RawEpisode:
    meta = {
        "schema_version": 1,
        "episode_id": job.episode_id,
        "instruction": job.written_instruction,
        "task": job.task,
        "scene": job.env_name,
        "robot_type": ROBOT_TYPE,
        "split": job.split,
        "session": job.session,
        "language": job.language,
    }
    episode = RawEpisode(episode_id=job.episode_id, meta=meta)
    for name, data in streams.items():
        if name == CAMERA:
            index = pd.DataFrame({"t": data.t.astype(np.float64), "frame": np.arange(len(data.t), dtype=np.int64)})
            episode.cameras[name] = Camera(index=index, frames=data.frames, shape=data.frames.shape)
        else:
            df = pd.DataFrame({"t": data.t.astype(np.float64)})
            for i, col in enumerate(data.columns):
                df[col] = data.values[:, i].astype(np.float64)
            episode.streams[name] = df
    return episode


def record_episode(job: EpisodeJob, envs: dict[tuple, SimEnv]) -> EpisodeResult:
    key = (job.task, job.size, job.camera)
    if key not in envs:  # building a Meta-World model costs ~0.6 s: one env per task per worker
        envs[key] = SimEnv(job.task, height=job.size, width=job.size, camera=job.camera)
    ro = run_episode(envs[key], job.env_seed, job.steps, job.constraint, job.rig.every(CAMERA))
    streams = sense(ro, job.t0, job.offset_ms, job.drift_ppm, job.rig, _rng(job, _RIG))
    rng = _rng(job, _FAULTS)
    plan = F.plan_row_faults(streams, job.faults, rng)
    streams, row_faults = F.apply_row_faults(streams, plan, rng)
    write_episode(job.root, _raw_episode(job, streams))
    faults = row_faults + ([job.text_fault] if job.text_fault else [])
    truth = {
        "session": job.session,
        "task": job.task,
        "scene": job.env_name,
        "split": job.split,
        "open_set": job.open_set,
        "language": job.language,
        "instruction": job.instruction,
        "constraint": job.constraint.to_json() if job.constraint else None,
        "t0": job.t0,
        "steps": job.steps,
        "env_seed": job.env_seed,
        "offset_ms": dict(job.offset_ms),
        "drift_ppm": dict(job.drift_ppm),
        "action_lag_ms": ro.lag_ms,
        "success": ro.success,
        "rows": {name: int(len(s.t)) for name, s in streams.items()},
        "faults": faults,
    }
    return EpisodeResult(job.key, truth, ro.success, ro.lag_ms, ro.xcorr, fault_free=not faults)


def close_envs(envs: dict[tuple, SimEnv]) -> None:
    for env in envs.values():
        env.close()  # explicitly: a renderer's __del__ at exit spews EGL errors
    envs.clear()


class Recorder:
    """`stages.sim.workers` runner: records episodes, keeping one env per (task, camera, size)."""

    def __init__(self, in_worker: bool):
        if in_worker:
            # Mesa's software rasteriser starts a thread per core in every process; with one worker per
            # core those threads only contend. Read when the first GL context is made, so set it first.
            os.environ.setdefault("LP_NUM_THREADS", "0")
        self.envs: dict[tuple, SimEnv] = {}

    def run(self, job: EpisodeJob) -> EpisodeResult:
        return record_episode(job, self.envs)

    def close(self) -> None:
        close_envs(self.envs)
