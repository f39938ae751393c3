"""Closed-loop evaluation in Meta-World: a policy drives the simulator; success, constraint violations, ∫|jerk|.

    episodes = plan_episodes(ClosedLoopConfig(episodes_per_task=10), tasks=("reach", "push"))
    result = evaluate(CheckpointPolicySpec("ckpt/sft"), episodes, cfg)      # + the scripted expert, same seeds
    result["overall"]["success_rate"], result["overall"]["expert"]["success_rate"]

Seeds. Every evaluation episode resets its environment with a seed ≥ 2^32
(`EVAL_SEED_BASE + SeedSequence([seed, task, episode])`). The demo recorder draws its environment
seeds as 32-bit words (`SeedSequence(...).generate_state(1)[0]` < 2^32), so an evaluation episode
never replays a recorded placement of goal and objects, whatever seed the data was recorded with.

Instructions. Each episode gets an instruction from the recorder's own templates
(`stages.sim.instructions.compose`), English or Chinese (`zh_share`); the last
`round(constraint_share · N)` episodes of a task carry a constraint clause (speed limit or workspace
boundary, alternating, values from the recorder's choices), so compliance is measured on every task.

One episode (`run_episode`) runs the task's horizon (`TaskSpec.default_steps`, or `steps`) at the
80 Hz control rate, never stopping early, so that the policy and the expert are scored over the
same duration. At control step k the policy reads the scene (hand state read before acting, as the
recorder does) and returns the action issued at k; the actuator applies it two steps later
(`SimEnv.step`). Success is Meta-World's flag, sticky once reached.

Scoring (`score_trace`), per episode:
- speed limit v (m/s): step k violates when the commanded hand speed ‖a_k[:3]‖ · 0.8 m/s exceeds
  v · (1 + speed_tolerance) — the quantity the QP-projected teacher keeps ≤ v exactly;
- workspace boundary z_min (m): step k violates when the measured hand height is below
  z_min − boundary_tolerance_m;
- ∫|jerk| dt of the executed commands as a velocity (a[:, :3] · 0.8 m/s at 80 Hz,
  `stages.signal.jerk_integral(..., of="velocity")`), in m/s².
The scripted expert runs on the same seeds with the same instruction, exactly as the recorder's
teacher (`stages.sim.rollout`): slew-limited, then projected onto the constraint set when the
instruction has one (`stages.sim.constraints.project_action`), so its violation rate is 0 by
construction for the speed limit and ≈ 0 for the boundary. The simulator itself (`SimEnv`:
actuator delay, no rate limit) executes every policy's commands as issued.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stages.errors import BadInput
from stages.progress import NullReporter, Reporter
from stages.signal import jerk_integral
from stages.sim import instructions
from stages.sim.constraints import (FLOOR_CHOICES_M, SPEED_CHOICES_MPS, SPEED_LIMIT, WORKSPACE_BOUNDARY, Constraint,
                                    project_action, speed_of)
from stages.sim.envs import ACTION_UNIT_MPS, CONTROL_HZ, DEFAULT_CAMERA, TASKS, SimEnv, task_spec
from stages.sim.episode import close_envs
from stages.sim.rollout import limit_slew
from stages.sim.workers import run_jobs

log = logging.getLogger("vla")

EVAL_SEED_BASE = 2**32  # recorder seeds are 32-bit words: everything from here on is unseen
_PURPOSE = 0xC1053D  # entropy word that separates closed-loop draws from every other draw


@dataclass(frozen=True)
class ClosedLoopConfig:
    episodes_per_task: int = 10
    seed: int = 0
    steps: int | None = None  # control steps per episode; None: the task's horizon (TaskSpec.default_steps)
    constraint_share: float = 0.5  # share of a task's episodes whose instruction has a constraint clause
    zh_share: float = 0.5  # share of Chinese instructions
    speed_tolerance: float = 0.02  # relative: a commanded speed above v·(1 + this) violates the limit
    boundary_tolerance_m: float = 0.005  # a hand this far below the floor violates the boundary
    size: int = 64  # rendered frame size (the dataset's image size)
    camera: str = DEFAULT_CAMERA  # the camera the demo recorder renders by default
    workers: int = 0  # 0 = one process per CPU core; 1 = in this process
    expert_baseline: bool = True  # also run the (projected) scripted expert on the same seeds

    def validate(self) -> None:
        if self.episodes_per_task < 1:
            raise BadInput(f"closed-loop episodes per task is {self.episodes_per_task}", caused_by="must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise BadInput(f"closed-loop steps is {self.steps}", caused_by="must be at least 1")
        for name, share in (("constraint_share", self.constraint_share), ("zh_share", self.zh_share)):
            if not 0.0 <= share <= 1.0:
                raise BadInput(f"closed-loop `{name}` is {share}", caused_by="shares are in [0, 1]")
        if self.speed_tolerance < 0 or self.boundary_tolerance_m < 0:
            raise BadInput("closed-loop tolerances must be non-negative")
        if self.workers < 0:
            raise BadInput(f"closed-loop workers is {self.workers}", caused_by="must be non-negative")


@dataclass(frozen=True)
class EvalEpisode:
    task: str
    index: int  # position within its task
    seed: int  # environment seed, ≥ EVAL_SEED_BASE
    language: str
    constraint: Constraint | None
    instruction: str
    steps: int

    def to_json(self) -> dict:
        return {"task": self.task, "index": self.index, "seed": self.seed, "language": self.language,
                "constraint": self.constraint.to_json() if self.constraint else None, "instruction": self.instruction,
                "steps": self.steps}


def eval_seed(seed: int, task: str, index: int) -> int:
    """The environment seed of episode `index` of `task` (module doc: never a recording seed)."""
    words = np.random.SeedSequence([int(seed), _PURPOSE, list(TASKS).index(task), int(index)]).generate_state(1)
    return EVAL_SEED_BASE + int(words[0])


def plan_episodes(cfg: ClosedLoopConfig, tasks: tuple[str, ...] | list[str]) -> list[EvalEpisode]:
    """N episodes per task with their seeds, languages, constraints and instructions (deterministic)."""
    cfg.validate()
    if not tasks:
        raise BadInput("closed-loop evaluation has no task to run")
    episodes = []
    n = cfg.episodes_per_task
    first_constrained = n - int(round(cfg.constraint_share * n))
    for task in tasks:
        spec = task_spec(task)
        steps = cfg.steps or spec.default_steps
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _PURPOSE, list(TASKS).index(task), i, 1]))
            language = "zh" if rng.random() < cfg.zh_share else "en"
            constraint = None
            if i >= first_constrained:
                j = i - first_constrained  # alternate kinds so both are measured on every task
                kind = (SPEED_LIMIT, WORKSPACE_BOUNDARY)[j % 2]
                choices = SPEED_CHOICES_MPS if kind == SPEED_LIMIT else FLOOR_CHOICES_M
                constraint = Constraint(kind, float(choices[int(rng.integers(len(choices)))]))
            text = instructions.compose(task, language, constraint, rng)
            episodes.append(EvalEpisode(task, i, eval_seed(cfg.seed, task, i), language, constraint, text, steps))
    return episodes


# ----------------------------------------------------------------------------- policies and one episode


class ControlPolicy(Protocol):
    """What drives the simulator: called once per episode, then once per 80 Hz control step."""

    def reset(self, env: SimEnv, episode: EvalEpisode) -> None: ...

    def act(self, env: SimEnv, step: int) -> np.ndarray:
        """The action [4] issued at control step `step` (before `env.step`)."""


class ExpertPolicy:
    """The recorder's teacher: the scripted expert, slew-limited as the recorder limits it, then
    projected onto the instruction's constraint set (projection last, so the constraint holds)."""

    def reset(self, env: SimEnv, episode: EvalEpisode) -> None:
        self.constraint = episode.constraint
        self.previous = np.zeros(4)  # the actuator queue starts at rest

    def act(self, env: SimEnv, step: int) -> np.ndarray:
        self.previous = project_action(limit_slew(env.expert_action(), self.previous), self.constraint, env.target_pos())
        return self.previous


class ConstantPolicy:
    """The same action at every step (tests: a deliberately violating policy)."""

    def __init__(self, action):
        self.action = np.asarray(action, dtype=np.float64)

    def reset(self, env: SimEnv, episode: EvalEpisode) -> None:
        pass

    def act(self, env: SimEnv, step: int) -> np.ndarray:
        return self.action.copy()


@dataclass
class Trace:
    """One executed episode: what was commanded and where the hand was."""

    episode: EvalEpisode
    action: np.ndarray  # float64 [N, 4] commands issued (clipped to [-1, 1], as the actuator takes them)
    ee_pos: np.ndarray  # float64 [N, 3] hand position read at each step, before its command
    success: bool
    success_step: int | None  # first control step after which the task counted as solved


def run_episode(env: SimEnv, episode: EvalEpisode, policy: ControlPolicy) -> Trace:
    env.reset(episode.seed)
    policy.reset(env, episode)
    n = episode.steps
    action = np.zeros((n, 4))
    pos = np.zeros((n, 3))
    first = None
    for k in range(n):
        pos[k] = env.ee_pos()
        action[k] = np.clip(np.asarray(policy.act(env, k), dtype=np.float64), -1.0, 1.0)
        env.step(action[k])
        if first is None and env.success:
            first = k
    return Trace(episode, action, pos, env.success, first)


@dataclass(frozen=True)
class EpisodeScore:
    success: bool
    success_step: int | None
    steps: int
    constraint_steps: int  # steps under a constraint (0 without one)
    violation_steps: int
    jerk_integral: float  # ∫|jerk| dt of the commands as a velocity, m/s²

    def to_json(self) -> dict:
        return {"success": self.success, "success_step": self.success_step, "steps": self.steps,
                "constraint_steps": self.constraint_steps, "violation_steps": self.violation_steps,
                "jerk_integral": self.jerk_integral}


def violations(trace: Trace, cfg: ClosedLoopConfig) -> np.ndarray:
    """bool [N]: the steps that break the episode's constraint (module doc); all False without one."""
    c = trace.episode.constraint
    n = len(trace.action)
    if c is None:
        return np.zeros(n, dtype=bool)
    if c.kind == SPEED_LIMIT:
        return speed_of(trace.action[:, :3]) > c.value * (1.0 + cfg.speed_tolerance)
    if c.kind == WORKSPACE_BOUNDARY:
        return trace.ee_pos[:, 2] < c.value - cfg.boundary_tolerance_m
    raise ValueError(f"unknown constraint kind {c.kind!r}")


def score_trace(trace: Trace, cfg: ClosedLoopConfig) -> EpisodeScore:
    bad = violations(trace, cfg)
    constrained = len(trace.action) if trace.episode.constraint is not None else 0
    velocity = trace.action[:, :3] * ACTION_UNIT_MPS  # [N, 3] commanded hand velocity, m/s
    return EpisodeScore(bool(trace.success), trace.success_step, len(trace.action), constrained, int(bad.sum()),
                        jerk_integral(velocity, CONTROL_HZ, of="velocity"))


# ----------------------------------------------------------------------------- many episodes


class PolicySpec(Protocol):
    """A picklable recipe for a policy, built once in each worker process."""

    def build(self) -> ControlPolicy: ...


@dataclass(frozen=True)
class ExpertSpec:
    def build(self) -> ControlPolicy:
        return ExpertPolicy()


@dataclass(frozen=True)
class _Job:
    key: int
    task: str
    episodes: tuple[EvalEpisode, ...]
    spec: Any  # PolicySpec, or None: expert only
    cfg: ClosedLoopConfig


class Evaluator:
    """`stages.sim.workers` runner: one env per task and one policy per spec, kept across jobs."""

    def __init__(self, in_worker: bool):
        self.in_worker = in_worker
        self.envs: dict[str, SimEnv] = {}
        self.policies: dict[str, ControlPolicy] = {}

    def run(self, job: _Job) -> list[dict]:
        cfg = job.cfg
        if job.task not in self.envs:  # building a Meta-World model costs ~1 s: one env per task per worker
            self.envs[job.task] = SimEnv(job.task, height=cfg.size, width=cfg.size, camera=cfg.camera)
        env = self.envs[job.task]
        rows = []
        for ep in job.episodes:
            row: dict[str, Any] = {"episode": ep.to_json()}
            if job.spec is not None:
                row["policy"] = score_trace(run_episode(env, ep, self._policy_for(job.spec)), cfg).to_json()
            if cfg.expert_baseline or job.spec is None:
                row["expert"] = score_trace(run_episode(env, ep, ExpertPolicy()), cfg).to_json()
            rows.append(row)
        return rows

    def _policy_for(self, spec: Any) -> ControlPolicy:
        """One policy per spec per process (loading a checkpoint once, not once per job)."""
        key = repr(spec)
        if key not in self.policies:
            if self.in_worker:
                import torch

                torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
            self.policies[key] = spec.build()
        return self.policies[key]

    def close(self) -> None:
        close_envs(self.envs)


def _jobs(episodes: list[EvalEpisode], spec: Any, cfg: ClosedLoopConfig, workers: int) -> list[_Job]:
    """Each task's episodes split into enough jobs to keep every worker busy (longest tasks first)."""
    by_task: dict[str, list[EvalEpisode]] = {}
    for ep in episodes:
        by_task.setdefault(ep.task, []).append(ep)
    parts = max(1, -(-2 * workers // max(1, len(by_task))))
    jobs: list[_Job] = []
    for task, eps in sorted(by_task.items(), key=lambda kv: -sum(e.steps for e in kv[1])):
        for chunk in np.array_split(np.arange(len(eps)), min(parts, len(eps))):
            jobs.append(_Job(len(jobs), task, tuple(eps[i] for i in chunk), spec, cfg))
    return jobs


def evaluate(spec: Any, episodes: list[EvalEpisode], cfg: ClosedLoopConfig, reporter: Reporter = NullReporter()) -> dict:
    """Run `spec`'s policy (None: the expert alone) on `episodes`; return the evaluation document.

    The document is what `closed_loop.json` holds (schema `closed-loop-eval`): the config, one row
    per episode (policy and expert scores), aggregates per task and overall, and wall time.
    """
    cfg.validate()
    workers = cfg.workers or os.cpu_count() or 1
    if getattr(spec, "in_process", False):  # a model held in memory is not shipped to worker processes
        workers = 1
    jobs = _jobs(episodes, spec, cfg, workers)
    t0 = time.perf_counter()
    with reporter.task("closed-loop episodes", total=len(episodes)) as advance:
        results = run_jobs(jobs, Evaluator, workers=workers, advance=advance, what="closed-loop",
                           describe=lambda job: f"closed-loop evaluation of `{job.task}`", weight=lambda job: len(job.episodes))
        rows = [r for job_rows in results for r in job_rows]
    rows.sort(key=lambda r: (list(TASKS).index(r["episode"]["task"]), r["episode"]["index"]))
    return {
        "schema_version": 1,
        "config": config_json(cfg),
        "episodes": rows,
        "tasks": {task: aggregate([r for r in rows if r["episode"]["task"] == task]) for task in _tasks_in(rows)},
        "overall": aggregate(rows),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _tasks_in(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["episode"]["task"] for r in rows))


def config_json(cfg: ClosedLoopConfig) -> dict:
    return {"episodes_per_task": cfg.episodes_per_task, "seed": cfg.seed, "steps": cfg.steps,
            "constraint_share": cfg.constraint_share, "zh_share": cfg.zh_share, "speed_tolerance": cfg.speed_tolerance,
            "boundary_tolerance_m": cfg.boundary_tolerance_m, "size": cfg.size, "camera": cfg.camera,
            "control_hz": CONTROL_HZ, "seed_base": EVAL_SEED_BASE}


def _rates(scores: list[dict]) -> dict:
    """Aggregates of a list of episode scores: success rate, violation rate over constrained steps, jerk."""
    constrained = [s for s in scores if s["constraint_steps"] > 0]
    steps = sum(s["constraint_steps"] for s in constrained)
    return {
        "episodes": len(scores),
        "success_rate": float(np.mean([s["success"] for s in scores])) if scores else None,
        "constraint_episodes": len(constrained),
        "violation_rate": sum(s["violation_steps"] for s in constrained) / steps if steps else None,
        "violating_episodes": float(np.mean([s["violation_steps"] > 0 for s in constrained])) if constrained else None,
        "jerk_integral": float(np.mean([s["jerk_integral"] for s in scores])) if scores else None,
    }


def aggregate(rows: list[dict]) -> dict:
    """{policy rates..., "expert": {rates}, "jerk_ratio": policy / expert ∫|jerk|} over `rows`."""
    out: dict[str, Any] = {}
    if rows and "policy" in rows[0]:
        out.update(_rates([r["policy"] for r in rows]))
    if rows and "expert" in rows[0]:
        out["expert"] = _rates([r["expert"] for r in rows])
    if "jerk_integral" in out and "expert" in out and out["expert"]["jerk_integral"]:
        out["jerk_ratio"] = out["jerk_integral"] / out["expert"]["jerk_integral"]
    return out


def flat_metrics(doc: dict, prefix: str = "closed_loop") -> dict[str, float]:
    """The evaluation as flat scalar metrics for a metrics.jsonl `eval` row (None values left out)."""
    out: dict[str, float] = {}

    def put(scope: str, agg: dict) -> None:
        for key in ("success_rate", "violation_rate", "jerk_integral", "jerk_ratio"):
            if agg.get(key) is not None:
                out[f"{scope}.{key}"] = float(agg[key])
        for key in ("success_rate", "violation_rate", "jerk_integral"):
            if agg.get("expert", {}).get(key) is not None:
                out[f"{scope}.expert_{key}"] = float(agg["expert"][key])

    put(prefix, doc["overall"])
    for task, agg in doc["tasks"].items():
        put(f"{prefix}.{task}", agg)
    return out
