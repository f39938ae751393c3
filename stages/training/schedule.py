"""Training schedule (curriculum): phases over [start, end) steps (ch07 §7.5, §7.5.1, §7.8).

    schedule = load_schedule("examples/sched.json")      # schema `schedule`, errors name `phases[1].end`
    phase = schedule.at(step)                             # PhaseState: weights after annealing, τ, lr ×, ...
    schedule.check_exit(step + 1, {"v2l_r1": 0.4})       # a met exit condition ends the phase early

A phase sets the modality / task mix, the loss weights (each a constant or an annealing curve
from → to over the phase), the InfoNCE temperature, freeze / unfreeze globs over parameter names,
an LR multiplier, a difficulty range, the combiner (with its params) and loss floors, optional EMA /
noise / modality-dropout curves, and exit conditions. Loss names are checked against
`stages.objectives.LOSSES`, combiner names against `stages.training.combiners.COMBINERS`.
The format is documented field by field in docs/schedule.md.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import logging
import math
import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from stages.artifacts import read_json, validate
from stages.errors import BadInput
from stages.objectives import LOSSES
from stages.training.buckets import BucketConfig, parse_buckets
from stages.training.combiners import combiner_config

log = logging.getLogger("vla")

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


# ----------------------------------------------------------------------------- annealing curves


@dataclass(frozen=True)
class Curve:
    """A value over a phase: constant, linear or cosine from `start` to `end` (ch07 §7.8 loss annealing).

    `over` = (f0, f1) restricts the ramp to that fraction of the phase: the value is `start` before
    f0 and `end` after f1. Values may be vectors (tuples), e.g. a difficulty range.
    """

    kind: str
    start: float | tuple[float, ...]
    end: float | tuple[float, ...]
    over: tuple[float, float] = (0.0, 1.0)

    def __call__(self, progress: float):
        f0, f1 = self.over
        u = min(max((progress - f0) / (f1 - f0), 0.0), 1.0)
        if self.kind == "constant":
            frac = 0.0
        elif self.kind == "linear":
            frac = u
        else:  # cosine: start → end along half a cosine period
            frac = 0.5 * (1.0 - math.cos(math.pi * u))
        if isinstance(self.start, tuple):
            return tuple(a + (b - a) * frac for a, b in zip(self.start, self.end))
        return self.start + (self.end - self.start) * frac

    def values(self) -> list[float]:
        both = [self.start, self.end]
        return [v for x in both for v in (x if isinstance(x, tuple) else (x,))]


def parse_curve(spec) -> Curve:
    """A number (constant) or {"curve": kind, "from": a, "to": b, "over": [f0, f1]} (schema-checked)."""
    if isinstance(spec, (int, float, list)):
        value = tuple(float(v) for v in spec) if isinstance(spec, list) else float(spec)
        return Curve("constant", value, value)
    conv = (lambda v: tuple(float(x) for x in v)) if isinstance(spec["from"], list) else float
    start = conv(spec["from"])
    end = conv(spec.get("to", spec["from"]))
    over = tuple(float(x) for x in spec.get("over", (0.0, 1.0)))
    return Curve(spec["curve"], start, end, over)


# ----------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Unfreeze:
    glob: str
    at: float = 0.0  # fraction of the phase after which the glob is trainable again


@dataclass(frozen=True)
class ExitCondition:
    metric: str
    op: str
    value: float
    min_steps: int = 0  # the phase runs at least this many steps before the condition counts

    def met(self, metrics: dict[str, float], steps_in_phase: int) -> bool:
        value = metrics.get(self.metric)
        if value is None or steps_in_phase < self.min_steps or not math.isfinite(float(value)):
            return False
        return _OPS[self.op](float(value), self.value)


@dataclass(frozen=True)
class Phase:
    name: str
    start: int
    end: int
    weights: dict[str, Curve]
    min_weights: dict[str, float] = field(default_factory=dict)
    mix: dict[str, float] = field(default_factory=dict)
    task_mix: dict[str, float] = field(default_factory=dict)
    temperature: Curve | None = None
    learn_temperature: bool = True
    lr_mult: Curve = Curve("constant", 1.0, 1.0)
    difficulty: Curve = Curve("constant", (0.0, 1.0), (0.0, 1.0))
    freeze: tuple[str, ...] = ()
    unfreeze: tuple[Unfreeze, ...] = ()
    combiner: str = "fixed"
    combiner_params: dict = field(default_factory=dict)
    ema_decay: Curve | None = None
    noise: Curve | None = None
    modality_dropout: Curve | None = None
    exit: tuple[ExitCondition, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class PhaseState:
    """Everything the engine and recipe need at one step."""

    name: str
    index: int
    step: int
    start: int  # effective start (an early exit of the previous phase moves it)
    end: int
    progress: float  # (step − start) / (end − start) in [0, 1)
    weights: dict[str, float]  # every loss term of the schedule; 0 for the terms this phase does not list
    min_weights: dict[str, float]
    mix: dict[str, float]
    task_mix: dict[str, float]
    temperature: float | None  # InfoNCE τ; None = the model's learnable logit scale
    learn_temperature: bool
    lr_mult: float
    difficulty: tuple[float, float]
    freeze: tuple[str, ...]
    unfreeze: tuple[str, ...]  # the unfreeze globs active at this step
    combiner: str
    combiner_params: dict
    ema_decay: float | None
    noise: float | None
    modality_dropout: float | None

    @property
    def logit_scale(self) -> float | None:
        """1/τ, the multiplicative scale `info_nce` takes; None when τ is learned freely."""
        return None if self.temperature is None else 1.0 / self.temperature

    def is_frozen(self, param_name: str) -> bool:
        """Frozen = matched by a freeze glob and by no active unfreeze glob (fnmatch: `*` spans dots)."""
        if not any(fnmatch.fnmatchcase(param_name, g) for g in self.freeze):
            return False
        return not any(fnmatch.fnmatchcase(param_name, g) for g in self.unfreeze)

    def frozen(self, param_names: Iterable[str]) -> set[str]:
        return {n for n in param_names if self.is_frozen(n)}


@dataclass
class LossTerm:
    """A named term of the total loss and the registered loss function that computes it."""

    name: str
    loss: str  # a name in stages.objectives.LOSSES
    params: dict = field(default_factory=dict)  # keyword arguments for the loss function


class Schedule:
    def __init__(self, *, name: str, total_steps: int, phases: list[Phase], terms: dict[str, LossTerm],
                 buckets: BucketConfig | None, source: str, raw: dict):
        self.name = name
        self.total_steps = total_steps
        self.phases = phases
        self.terms = terms
        self.buckets = buckets
        self.source = source
        self.raw = raw  # the validated JSON, for the checkpoint's schedule.json copy
        self.exits: dict[str, int] = {}  # phase name → step at which it ended early

    def to_dict(self) -> dict:
        """The schedule's JSON document (copied into checkpoints as schedule.json)."""
        return copy.deepcopy(self.raw)

    @property
    def loss_names(self) -> list[str]:
        """Every loss term any phase weights, in declaration order: the combiners' task list."""
        return list(self.terms)

    @property
    def end_step(self) -> int:
        """Where training stops: total_steps, or earlier when the last phase exited early."""
        return self.exits.get(self.phases[-1].name, self.total_steps)

    def _bounds(self, i: int) -> tuple[int, int]:
        start = self.phases[i].start if i == 0 else self.exits.get(self.phases[i - 1].name, self.phases[i].start)
        return start, self.exits.get(self.phases[i].name, self.phases[i].end)

    def phase_index(self, step: int) -> int:
        """Index of the phase holding `step`; a step at or past the end belongs to the last phase
        (logs written after the final step, `done == total_steps`, still get a phase)."""
        if step < 0:
            raise ValueError(f"step {step} is before the schedule starts")
        for i in range(len(self.phases)):
            start, end = self._bounds(i)
            if start <= step < end:
                return i
        return len(self.phases) - 1  # past an early end of the last phase: keep its settings

    def at(self, step: int) -> PhaseState:
        i = self.phase_index(step)
        ph = self.phases[i]
        start, end = self._bounds(i)
        progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
        lo, hi = ph.difficulty(progress)
        return PhaseState(
            name=ph.name, index=i, step=step, start=start, end=end, progress=progress,
            weights={n: float(ph.weights[n](progress)) if n in ph.weights else 0.0 for n in self.terms},
            min_weights=dict(ph.min_weights), mix=dict(ph.mix), task_mix=dict(ph.task_mix),
            temperature=None if ph.temperature is None else float(ph.temperature(progress)),
            learn_temperature=ph.learn_temperature, lr_mult=float(ph.lr_mult(progress)),
            difficulty=(float(lo), float(hi)), freeze=ph.freeze,
            unfreeze=tuple(u.glob for u in ph.unfreeze if u.at <= progress),
            combiner=ph.combiner, combiner_params=dict(ph.combiner_params),
            ema_decay=None if ph.ema_decay is None else float(ph.ema_decay(progress)),
            noise=None if ph.noise is None else float(ph.noise(progress)),
            modality_dropout=None if ph.modality_dropout is None else float(ph.modality_dropout(progress)),
        )

    def check_exit(self, step: int, metrics: dict[str, float]) -> str | None:
        """After evaluation: `step` = steps completed so far (the next step's index). If an exit
        condition of the current phase holds (any of them), the phase ends at `step`, the next phase
        starts there (and keeps its planned end); returns the phase name, else None."""
        if step >= self.end_step:
            return None
        i = self.phase_index(step)
        ph = self.phases[i]
        start, end = self._bounds(i)
        if ph.name in self.exits or step <= start or step >= end:
            return None
        if any(c.met(metrics, step - start) for c in ph.exit):
            self.exits[ph.name] = step
            log.info("schedule: phase %s ends early at step %d (exit condition met)", ph.name, step)
            return ph.name
        return None

    def state_dict(self) -> dict:
        return {"exits": dict(self.exits)}

    def load_state_dict(self, state: dict) -> None:
        unknown = [n for n in state.get("exits", {}) if n not in {p.name for p in self.phases}]
        if unknown:
            raise BadInput(f"schedule state names phases {unknown} that `{self.source}` does not have")
        self.exits = {k: int(v) for k, v in state.get("exits", {}).items()}


# ----------------------------------------------------------------------------- loading and checks


def load_schedule(path: str | os.PathLike) -> Schedule:
    """Read, schema-check and semantically check a schedule file (BadInput names the JSON path)."""
    return parse_schedule(read_json(path, schema="schedule"), source=str(path))


def parse_schedule(obj: dict, *, source: str = "schedule") -> Schedule:
    """Check a schedule already read as JSON: the schema first, then what a schema cannot say."""
    validate(obj, "schedule", source=source)
    return _Builder(obj, source).build()


def _bad(source: str, path: str, message: str) -> BadInput:
    return BadInput(f"`{source}`: field `{path}` is invalid", caused_by=message)


class _Builder:
    """Semantic checks of a schema-valid schedule; every error names its JSON path."""

    def __init__(self, obj: dict, source: str):
        self.obj, self.source = obj, source
        self.terms: dict[str, LossTerm] = {}

    def bad(self, path: str, message: str) -> BadInput:
        return _bad(self.source, path, message)

    def build(self) -> Schedule:
        obj = self.obj
        self._terms(obj.get("losses", {}))
        self._boundaries(obj["phases"], obj["total_steps"])
        phases = [self._phase(p, f"phases[{i}]") for i, p in enumerate(obj["phases"])]
        buckets = parse_buckets(obj["buckets"], source=self.source) if "buckets" in obj else None
        schedule = Schedule(name=obj.get("name", os.path.basename(self.source)), total_steps=obj["total_steps"],
                            phases=phases, terms=self.terms, buckets=buckets, source=self.source, raw=obj)
        if buckets is not None:
            self._check_buckets(schedule)
        return schedule

    def _terms(self, declared: dict) -> None:
        for name, spec in declared.items():
            path = f"losses.{name}"
            if spec["loss"] not in LOSSES:
                raise self.bad(f"{path}.loss", f"unknown loss `{spec['loss']}` (known: {', '.join(LOSSES.names())})")
            allowed = loss_keywords(spec["loss"])
            for key in spec.get("params", {}):
                if key not in allowed:
                    known = ", ".join(sorted(allowed))
                    raise self.bad(f"{path}.params.{key}", f"`{spec['loss']}` has no parameter `{key}` (known: {known})")
            self.terms[name] = LossTerm(name, spec["loss"], dict(spec.get("params", {})))

    def _term(self, key: str, path: str) -> None:
        if key in self.terms:
            return
        if key in LOSSES:  # a registered loss used directly: an implicit term of the same name
            self.terms[key] = LossTerm(key, key)
            return
        known = sorted(set(self.terms) | set(LOSSES.names()))
        raise self.bad(path, f"unknown loss `{key}`: declare it under `losses` or use a registered loss (known: {', '.join(known)})")

    def _boundaries(self, phases: list[dict], total: int) -> None:
        expected = 0
        names: set[str] = set()
        for i, p in enumerate(phases):
            if p["name"] in names:
                raise self.bad(f"phases[{i}].name", f"duplicate phase name `{p['name']}`")
            names.add(p["name"])
            if p["start"] != expected:
                what = "overlaps the previous phase" if p["start"] < expected else "leaves a gap after the previous phase"
                if i == 0:
                    what = "the first phase must start at step 0"
                raise self.bad(f"phases[{i}].start", f"start {p['start']}: {what} (expected {expected})")
            if p["end"] <= p["start"]:
                raise self.bad(f"phases[{i}].end", f"end {p['end']} must be greater than start {p['start']}")
            expected = p["end"]
        if expected != total:
            raise self.bad(f"phases[{len(phases) - 1}].end", f"the last phase ends at {expected}, total_steps is {total}")

    def _curve(self, spec, path: str, lo: float, hi: float, *, open_lo: bool = False) -> Curve:
        curve = parse_curve(spec)
        f0, f1 = curve.over
        if not 0.0 <= f0 < f1 <= 1.0:
            raise self.bad(f"{path}.over", f"need 0 <= over[0] < over[1] <= 1, got {list(curve.over)}")
        for v in curve.values():
            if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
                rule = f"{'>' if open_lo else '>='} {lo}" + (f" and <= {hi}" if math.isfinite(hi) else "")
                raise self.bad(path, f"value {v} must be {rule}")
        return curve

    def _phase(self, p: dict, path: str) -> Phase:
        inf = math.inf
        weights = {}
        for key, spec in p["weights"].items():
            self._term(key, f"{path}.weights.{key}")
            weights[key] = self._curve(spec, f"{path}.weights.{key}", 0.0, inf)
        floors = {}
        for key, value in p.get("min_weights", {}).items():
            self._term(key, f"{path}.min_weights.{key}")
            if not 0.0 <= value < inf:
                raise self.bad(f"{path}.min_weights.{key}", f"value {value} must be >= 0")
            floors[key] = float(value)
        for group in ("mix", "task_mix"):
            for key, value in p.get(group, {}).items():
                if not 0.0 <= value < inf:
                    raise self.bad(f"{path}.{group}.{key}", f"value {value} must be >= 0")
        if p.get("mix") and sum(p["mix"].values()) <= 0:
            raise self.bad(f"{path}.mix", "every share is 0")
        difficulty = self._curve(p.get("difficulty", [0.0, 1.0]), f"{path}.difficulty", 0.0, 1.0)
        for end in (difficulty.start, difficulty.end):
            if end[0] > end[1]:
                raise self.bad(f"{path}.difficulty", f"range {list(end)} has lo > hi")
        unfreeze = []
        for j, u in enumerate(p.get("unfreeze", [])):
            u = {"glob": u} if isinstance(u, str) else u
            if not 0.0 <= u.get("at", 0.0) < 1.0:
                raise self.bad(f"{path}.unfreeze[{j}].at", f"value {u['at']} must be in [0, 1)")
            unfreeze.append(Unfreeze(u["glob"], float(u.get("at", 0.0))))
        comb = p.get("combiner", "fixed")
        comb = {"name": comb} if isinstance(comb, str) else comb
        combiner_config(comb["name"], comb.get("params"), where=f"{path}.combiner", source=self.source)
        temperature = p.get("temperature")
        optional = {
            "temperature": (0.0, inf, True),
            "ema_decay": (0.0, 1.0, False),
            "noise": (0.0, inf, False),
            "modality_dropout": (0.0, 1.0, False),
        }
        curves = {k: self._curve(p[k], f"{path}.{k}", lo, hi, open_lo=o) for k, (lo, hi, o) in optional.items() if k in p}
        return Phase(
            name=p["name"], start=p["start"], end=p["end"], weights=weights, min_weights=floors,
            mix={k: float(v) for k, v in p.get("mix", {}).items()},
            task_mix={k: float(v) for k, v in p.get("task_mix", {}).items()},
            temperature=curves.get("temperature"),
            learn_temperature=bool(p.get("learn_temperature", temperature is None)),
            lr_mult=self._curve(p.get("lr_mult", 1.0), f"{path}.lr_mult", 0.0, inf),
            difficulty=difficulty, freeze=tuple(p.get("freeze", [])), unfreeze=tuple(unfreeze),
            combiner=comb["name"], combiner_params=dict(comb.get("params", {})),
            ema_decay=curves.get("ema_decay"), noise=curves.get("noise"), modality_dropout=curves.get("modality_dropout"),
            exit=tuple(ExitCondition(e["metric"], e["op"], float(e["value"]), int(e.get("min_steps", 0))) for e in p.get("exit", [])),
            description=p.get("description", ""),
        )

    def _check_buckets(self, schedule: Schedule) -> None:
        from stages.training.buckets import TokenBuckets

        modalities = {c.modality for c in schedule.buckets.clusters}
        tasks = {c.task for c in schedule.buckets.clusters}
        buckets = TokenBuckets(schedule.buckets, schedule)
        for i, ph in enumerate(schedule.phases):
            for key in ph.mix:
                if key not in modalities:
                    raise self.bad(f"phases[{i}].mix.{key}", f"no bucket cluster has modality `{key}`")
            for key in ph.task_mix:
                if key not in tasks:
                    raise self.bad(f"phases[{i}].task_mix.{key}", f"no bucket cluster has task `{key}`")
            for step in (ph.start, ph.end - 1):
                if not bool((buckets.quality(step) > 0).any()):
                    raise self.bad(f"phases[{i}]", f"at step {step} the mix, task_mix and difficulty range switch every bucket cluster off")


def check_globs(schedule: Schedule, param_names: Iterable[str]) -> list[str]:
    """Warn (logging) about every freeze / unfreeze glob that matches no parameter name."""
    names = list(param_names)
    messages = []
    for i, ph in enumerate(schedule.phases):
        globs = [(f"phases[{i}].freeze[{j}]", g) for j, g in enumerate(ph.freeze)]
        globs += [(f"phases[{i}].unfreeze[{j}]", u.glob) for j, u in enumerate(ph.unfreeze)]
        for path, glob in globs:
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                messages.append(f"`{schedule.source}`: {path} `{glob}` matches no parameter name")
    for m in messages:
        log.warning(m)
    return messages


def loss_keywords(loss: str) -> set[str]:
    """Keyword-only parameters of a registered loss (what a term's `params` may set)."""
    fn = LOSSES.get(loss)
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


__all__ = [
    "Curve",
    "ExitCondition",
    "LossTerm",
    "Phase",
    "PhaseState",
    "Schedule",
    "Unfreeze",
    "check_globs",
    "combiner_config",
    "load_schedule",
    "parse_curve",
    "parse_schedule",
]
