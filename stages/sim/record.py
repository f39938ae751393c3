"""`vla sim record`: demo episodes from Meta-World experts, through a sensor rig and a fault injector.

    plan (main process, seeded)  ->  record episodes (workers)  ->  copies (main)  ->  truth files

The plan fixes everything random that is not inside one episode: environment seeds, languages,
instructions and constraints, text faults, sessions and their clocks. Workers record episodes
independently (stages.sim.episode); then the episode-level faults are copied in, the robot's action
lag is pooled over the unconstrained train episodes, and the truth files are validated and written
next to the dataset folders (`<out>.truth.json`), never inside them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stages.artifacts import atomic_dir, check_writable_parent, schema_errors, write_json
from stages.errors import BadInput, VlaError
from stages.progress import NullReporter, Reporter
from stages.sim import copies, instructions
from stages.sim import faults as F
from stages.sim.constraints import sample_constraint
from stages.sim.envs import CAMERAS, CONTROL_DT, CONTROL_HZ, DEFAULT_CAMERA, DEFAULT_TASKS, HELDOUT_TASKS, ROBOT_TYPE, TASKS, task_spec
from stages.sim.episode import EpisodeJob, EpisodeResult, Recorder
from stages.sim.workers import run_jobs
from stages.sim.lag import pooled_lag_ms
from stages.sim.rig import STREAMS, RigConfig, SessionClock, draw_session
from stages.sim.rollout import lag_lags_s

log = logging.getLogger("vla")

MIN_STEPS = 32  # the lag search window (±250 ms = ±20 steps) needs a longer episode
TRAIN_T0, EVAL_T0, SESSION_SPACING_S = 1000.0, 500000.0, 3600.0
_SPLIT_CODE = {"train": 0, "eval": 1}


@dataclass(frozen=True)
class RecordConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    episodes_per_task: int = 25
    steps: int | None = None  # None: each task's default horizon (TaskSpec.default_steps)
    size: int = 64  # rendered frames are size x size
    camera: str = DEFAULT_CAMERA
    seed: int = 0
    workers: int = 0  # 0 = one per CPU core
    heldout_tasks: tuple[str, ...] = HELDOUT_TASKS  # eval-only tasks (open set)
    eval_episodes_per_task: int = 4
    constraint_share: float = 0.25  # share of instructions with a constraint clause
    zh_share: float = 0.5  # share of Chinese instructions
    rig: RigConfig = field(default_factory=RigConfig)
    faults: F.FaultConfig = field(default_factory=F.FaultConfig)

    def validate(self) -> None:
        if not self.tasks:
            raise BadInput("`--tasks` is empty", caused_by="name at least one task")
        for name in (*self.tasks, *self.heldout_tasks):
            task_spec(name)
        if len(set(self.tasks)) != len(self.tasks):
            raise BadInput(f"`--tasks` repeats a task: {','.join(self.tasks)}")
        both = sorted(set(self.tasks) & set(self.heldout_tasks))
        if both:
            raise BadInput(f"`--heldout-tasks` overlaps `--tasks`: {', '.join(both)}", caused_by="held-out tasks must be unseen in train")
        if self.episodes_per_task < 1 or self.eval_episodes_per_task < 1:
            raise BadInput("episodes per task must be at least 1")
        if self.steps is not None and self.steps < MIN_STEPS:
            raise BadInput(f"`--steps {self.steps}` is too short", caused_by=f"need at least {MIN_STEPS} steps")
        if not 16 <= self.size <= 512:
            raise BadInput(f"`--size {self.size}` is out of range", caused_by="frames are 16..512 pixels wide")
        if self.camera not in CAMERAS:
            raise BadInput(f"unknown camera `{self.camera}`", caused_by=f"known: {', '.join(CAMERAS)}")
        if self.workers < 0:
            raise BadInput(f"`--workers {self.workers}` is negative")
        for name, share in (("constraint share", self.constraint_share), ("zh share", self.zh_share)):
            if not 0.0 <= share <= 1.0:
                raise BadInput(f"{name} {share} is out of range", caused_by="shares are in [0, 1]")
        self.rig.validate()
        self.faults.validate()

    def steps_for(self, task: str) -> int:
        return self.steps if self.steps is not None else task_spec(task).default_steps


def truth_path(out: Path) -> Path:
    """`data/raw` -> `data/raw.truth.json`: beside the dataset folder, never inside it."""
    out = Path(out)
    return out.with_name(out.name + ".truth.json")


def _check_outputs(out: Path, eval_out: Path | None, overwrite: bool) -> None:
    """Every output problem is found before anything is written."""
    targets = [Path(out)] + ([Path(eval_out)] if eval_out is not None else [])
    if eval_out is not None and Path(out).resolve() == Path(eval_out).resolve():
        raise BadInput(f"`--eval-out {eval_out}` is the same folder as `--out`")
    for target in targets:
        for path in (target, truth_path(target)):
            if path.exists() and not overwrite:
                raise BadInput(f"output `{path}` already exists", hint="choose another --out, or pass --overwrite")
            check_writable_parent(path)
            _probe_writable(path)


def _probe_writable(path: Path) -> None:
    """`os.access` trusts root everywhere (even /proc): create and remove a probe directory."""
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".vla-probe-").cleanup()
    except OSError as exc:
        raise BadInput(f"cannot write output `{path}`", caused_by=f"`{parent}`: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- planning


def _entropy(cfg: RecordConfig, split: str, *parts: int) -> tuple[int, ...]:
    return (cfg.seed, _SPLIT_CODE[split], *parts)


def _plan_split(cfg: RecordConfig, split: str, tasks: tuple[str, ...], per_task: int, root: Path, id_prefix: str,
                session_prefix: str, t_start: float, first_key: int = 0) -> tuple[list[EpisodeJob], dict[str, SessionClock]]:
    """Jobs for one split: tasks interleaved so that every session mixes tasks.

    The shares of Chinese and of constrained instructions are exact (rounded), not drawn per episode.
    """
    rng = np.random.default_rng(np.random.SeedSequence(_entropy(cfg, split, 7)))
    pairs = [(rep, task) for rep in range(per_task) for task in tasks]
    chinese = set(rng.permutation(len(pairs))[: round(cfg.zh_share * len(pairs))].tolist())
    constrained = set(rng.permutation(len(pairs))[: round(cfg.constraint_share * len(pairs))].tolist())
    jobs: list[EpisodeJob] = []
    sessions: dict[str, SessionClock] = {}
    clock: SessionClock | None = None
    t = 0.0
    for i, (rep, task) in enumerate(pairs):
        if i % cfg.rig.episodes_per_session == 0:
            s = len(sessions)
            clock = draw_session(f"{session_prefix}{s:03d}", t_start + s * SESSION_SPACING_S, cfg.rig, rng)
            sessions[clock.name] = clock
            t = clock.t0
        spec = task_spec(task)
        steps = cfg.steps_for(task)
        env_seed = int(np.random.SeedSequence(_entropy(cfg, split, 1, list(TASKS).index(task), rep)).generate_state(1)[0])
        language = "zh" if i in chinese else "en"
        constraint = sample_constraint(rng) if i in constrained else None
        instruction = instructions.compose(task, language, constraint, rng)
        written, text_fault = F.text_fault(instruction, language, cfg.faults, rng)
        offsets = {k: round(v, 6) for k, v in clock.offsets_at(t).items()}
        jobs.append(EpisodeJob(
            key=first_key + i, episode_id=f"{id_prefix}{i:05d}", split=split, task=task, env_name=spec.env_name, env_seed=env_seed,
            steps=steps, language=language, instruction=instruction, written_instruction=written, text_fault=text_fault,
            constraint=constraint, open_set=task in cfg.heldout_tasks, session=clock.name, t0=round(t, 6),
            offset_ms=offsets, drift_ppm=dict(clock.drift_ppm), seed=_entropy(cfg, split, 2, i), size=cfg.size,
            camera=cfg.camera, rig=cfg.rig, faults=cfg.faults, root=str(root),
        ))
        t += steps * CONTROL_DT + rng.uniform(*cfg.rig.session_gap_s)
    return jobs, sessions


# ----------------------------------------------------------------------------- running


def _episodes_truth(jobs: list[EpisodeJob], results: list[EpisodeResult]) -> dict[str, dict]:
    return {job.episode_id: res.truth for job, res in zip(jobs, results)}


def _truth_doc(name: str, cfg: RecordConfig, lag_ms: float, sessions: dict[str, SessionClock], episodes: dict[str, dict],
               lag_by_task: dict[str, float]) -> dict:
    return {
        "schema_version": 1,
        "dataset": name,
        "seed": cfg.seed,
        "created_by": "vla sim record",
        "config": _config_json(cfg),
        "robot": {
            "robot_type": ROBOT_TYPE,
            "control_hz": CONTROL_HZ,
            "action_lag_ms": lag_ms,
            "action_lag_by_task_ms": lag_by_task,
            "lag_signals": {"action": ["dx", "dy", "dz"], "state": ["ee_vx", "ee_vy", "ee_vz"]},
        },
        "streams": {name: spec.to_json() for name, spec in cfg.rig.streams().items()},
        "sessions": {k: v.to_json() for k, v in sorted(sessions.items())},
        "episodes": dict(sorted(episodes.items())),
    }


def _config_json(cfg: RecordConfig) -> dict:
    return {
        "tasks": list(cfg.tasks), "heldout_tasks": list(cfg.heldout_tasks), "episodes_per_task": cfg.episodes_per_task,
        "eval_episodes_per_task": cfg.eval_episodes_per_task, "steps": cfg.steps, "size": cfg.size, "camera": cfg.camera,
        "constraint_share": cfg.constraint_share, "zh_share": cfg.zh_share, "fault_rates": dict(cfg.faults.rates),
        "episodes_per_session": cfg.rig.episodes_per_session, "max_offset_ms": cfg.rig.max_offset_ms,
        "max_drift_ppm": cfg.rig.max_drift_ppm,
    }


def _robot_lag(jobs: list[EpisodeJob], results: list[EpisodeResult]) -> tuple[float, dict[str, float]]:
    """Pooled over unconstrained train episodes (a speed limit flattens the command, blurring its peak)."""
    free = [(j, r) for j, r in zip(jobs, results) if j.constraint is None] or list(zip(jobs, results))
    lags = lag_lags_s()
    by_task: dict[str, list[np.ndarray]] = {}
    for j, r in free:
        by_task.setdefault(j.task, []).append(r.xcorr)
    overall = pooled_lag_ms([r.xcorr for _, r in free], lags)
    return round(overall, 3), {t: round(pooled_lag_ms(c, lags), 3) for t, c in sorted(by_task.items())}


def _check_truth(doc: dict, path: Path) -> None:
    errors = schema_errors(doc, "truth")
    if errors:
        raise VlaError(f"refusing to write `{path}`: it violates schema `truth`", caused_by=errors[0])


def record(config: RecordConfig, out: Path, eval_out: Path | None = None, reporter: Reporter = NullReporter(), *,
           overwrite: bool = False) -> dict:
    """Record the train split into `out` (and the eval split into `eval_out`); return the summary."""
    config.validate()
    out = Path(out)
    eval_out = Path(eval_out) if eval_out is not None else None
    _check_outputs(out, eval_out, overwrite)
    workers = config.workers or os.cpu_count() or 1
    eval_tasks = tuple(config.tasks) + tuple(config.heldout_tasks)
    with atomic_dir(out, overwrite=overwrite) as train_root:
        with (atomic_dir(eval_out, overwrite=overwrite) if eval_out is not None else contextlib.nullcontext()) as eval_root:
            jobs, sessions = _plan_split(config, "train", config.tasks, config.episodes_per_task, train_root, "ep_", "S", TRAIN_T0)
            eval_jobs, eval_sessions = ([], {})
            if eval_root is not None:
                eval_jobs, eval_sessions = _plan_split(config, "eval", eval_tasks, config.eval_episodes_per_task, eval_root, "ev_", "E", EVAL_T0, len(jobs))
            with reporter.task("recording episodes", total=len(jobs) + len(eval_jobs)) as advance:
                results = run_jobs(jobs + eval_jobs, Recorder, workers=workers, advance=advance, what="recording",
                                   describe=lambda job: f"recording episode {job.episode_id}")
            train_res, eval_res = results[: len(jobs)], results[len(jobs):]
            train_truth, eval_truth = _episodes_truth(jobs, train_res), _episodes_truth(eval_jobs, eval_res)
            fault_free = {j.episode_id for j, r in zip(jobs + eval_jobs, results) if r.fault_free}
            rng = np.random.default_rng(np.random.SeedSequence(_entropy(config, "train", 9)))
            plans = copies.plan_copies(train_truth, eval_truth, fault_free, config.faults, len(jobs), rng)
            with reporter.task("copying episodes", total=len(plans)) as advance:
                for plan in plans:
                    source_truth = eval_truth[plan.source] if plan.kind == F.EVAL_LEAK else train_truth[plan.source]
                    train_truth[plan.new_id] = copies.make_copy(plan, train_root, eval_root, source_truth, rng)
                    if plan.kind == F.EVAL_LEAK:
                        sessions[source_truth["session"]] = eval_sessions[source_truth["session"]]
                    advance(1)
            lag_ms, lag_by_task = _robot_lag(jobs, train_res)
            docs = [(truth_path(out), _truth_doc(out.name, config, lag_ms, sessions, train_truth, lag_by_task))]
            if eval_out is not None:
                eval_lag_by_task = _robot_lag(eval_jobs, eval_res)[1]
                docs.append((truth_path(eval_out), _truth_doc(eval_out.name, config, lag_ms, eval_sessions, eval_truth, eval_lag_by_task)))
            for path, doc in docs:
                _check_truth(doc, path)
    for path, doc in docs:
        write_json(path, doc, schema="truth")
    return _summary(out, eval_out, train_truth, eval_truth, lag_ms, lag_by_task)


def _summary(out: Path, eval_out: Path | None, train: dict[str, dict], evals: dict[str, dict], lag_ms: float,
             lag_by_task: dict[str, float]) -> dict:
    originals = {k: v for k, v in train.items() if not any(f["kind"] in F.EPISODE_KINDS for f in v["faults"])}

    def success(episodes: dict[str, dict]) -> dict[str, float]:
        by_task: dict[str, list[bool]] = {}
        for truth in episodes.values():
            by_task.setdefault(truth["task"], []).append(bool(truth["success"]))
        return {task: round(float(np.mean(v)), 3) for task, v in sorted(by_task.items())}

    count = lambda eps: dict(sorted(Counter(f["kind"] for t in eps.values() for f in t["faults"]).items()))  # noqa: E731
    return {
        "out": str(out),
        "truth": str(truth_path(out)),
        "episodes": len(train),
        "original_episodes": len(originals),
        "eval_out": str(eval_out) if eval_out is not None else None,
        "eval_truth": str(truth_path(eval_out)) if eval_out is not None else None,
        "eval_episodes": len(evals),
        "success_rate": success({k: v for k, v in originals.items() if not v["constraint"]}),
        "constrained_success_rate": _rate([v["success"] for v in originals.values() if v["constraint"]]),
        "eval_success_rate": success({k: v for k, v in evals.items() if not v["constraint"]}),
        "faults": count(train),
        "eval_faults": count(evals),
        "constraint_episodes": sum(1 for t in originals.values() if t["constraint"]),
        "languages": dict(sorted(Counter(t["language"] for t in originals.values()).items())),
        "sessions": len({t["session"] for t in originals.values()}),
        "action_lag_ms": lag_ms,
        "action_lag_by_task_ms": lag_by_task,
        "streams": list(STREAMS),
    }


def _rate(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 3) if flags else None


def with_rates(cfg: RecordConfig, rates: dict[str, float]) -> RecordConfig:
    """`cfg` with some fault rates replaced (the CLI's --fault-rate KIND=RATE)."""
    merged = dict(cfg.faults.rates)
    merged.update(rates)
    return replace(cfg, faults=F.FaultConfig(merged))
