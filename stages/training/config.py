"""What the training engine is told and what it reports: run configuration, the phase view of a
schedule, step results and the run's JSON-able counters (`stages.training.loop` runs them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stages.errors import BadInput, GateFailed
from stages.training.optim import OptimConfig


class TrainingDiverged(GateFailed):
    """N consecutive steps had a non-finite loss or gradient: the run stops (exit 1)."""


@dataclass
class CheckpointConfig:
    every: int = 0                      # snapshot to checkpoints/step-NNNNNN every N steps (0 = final only)
    keep_last: int = 3                  # snapshots kept (older ones are deleted; 0 = keep all)
    provides: list[str] | None = None   # module prefixes a later `--init` takes from this run (None = all)


@dataclass
class TrainConfig:
    steps: int | None = None            # optimizer steps of the whole run; None = the schedule's total_steps
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)
    precision: str = "fp32"             # fp32 | bf16 (autocast, CUDA only; master weights stay fp32)
    grad_clip: float = 1.0              # max global gradient L2 norm (0 = no clipping)
    max_nonfinite: int = 5              # consecutive skipped steps before the run aborts
    log_every: int = 10                 # metrics.jsonl cadence (a cheap row: window means of the losses)
    grad_stats_every: int = 100         # gradients.jsonl cadence; costs one backward per loss for the
                                        # single-backward combiners (fixed, uncertainty); 0 = never
    eval_every: int = 0                 # evaluate every N steps (0 = only at the end)
    loss_weights: dict[str, float] = field(default_factory=dict)  # without a schedule; missing = 1.0
    min_weights: dict[str, float] = field(default_factory=dict)   # floors, without a schedule
    combiner: str = "fixed"             # without a schedule (a schedule names one per phase)
    resume: bool = False                # continue from the newest checkpoint in out_dir
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def check(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.precision not in ("fp32", "bf16"):
            raise BadInput(f"precision must be `fp32` or `bf16`, got `{self.precision}`")
        if self.max_nonfinite < 1 or self.log_every < 1 or min(self.eval_every, self.grad_stats_every, self.checkpoint.every) < 0:
            raise BadInput("max_nonfinite and log_every must be >= 1; eval_every, grad_stats_every and checkpoint.every >= 0")
        self.optim.check()


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]     # detached scalars, this rank
    weights: dict[str, float]           # effective weights the combiner used
    grad_norm: torch.Tensor             # global norm before clipping
    applied: bool                       # False: non-finite, the optimizer step was skipped
    nonfinite: list[str]                # names of non-finite losses (+ "grad_norm")
    stats: dict                         # combiner stats (gradients.jsonl)


@dataclass(frozen=True)
class Phase:
    """What the engine reads from a schedule phase (or from TrainConfig when there is no schedule)."""

    name: str = "main"
    loss_weights: dict[str, float] = field(default_factory=dict)
    default_weight: float | None = None            # weight of a loss missing from loss_weights (None: an error)
    min_weights: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None               # InfoNCE τ for the recipe (None: the model's logit scale)
    lr_mult: float = 1.0
    freeze: tuple[str, ...] = ()
    unfreeze: tuple[str, ...] = ()
    combiner: str = "fixed"
    combiner_params: dict | None = None
    ema_decay: float | None = None                 # overrides the EMA teacher's decay while set
    raw: Any = None                                # the schedule's own phase state (modality mix, difficulty, ...)

    @property
    def key(self) -> tuple:
        """Steps with equal keys share freezing and combiner (annealed weights may still move)."""
        return (self.name, self.freeze, self.unfreeze, self.combiner)

    def weights_for(self, losses: dict) -> tuple[dict[str, float], dict[str, float]]:
        if self.default_weight is None:
            return dict(self.loss_weights), dict(self.min_weights)
        return {n: float(self.loss_weights.get(n, self.default_weight)) for n in losses}, dict(self.min_weights)


def phase_from(raw: Any, config: TrainConfig) -> Phase:
    """The engine's view of the schedule's `PhaseState` at one step (None: no schedule, TrainConfig rules)."""
    if raw is None:
        return Phase(loss_weights=dict(config.loss_weights), default_weight=1.0, min_weights=dict(config.min_weights),
                     combiner=config.combiner)
    return Phase(name=raw.name, loss_weights=dict(raw.weights), min_weights=dict(raw.min_weights), temperature=raw.temperature,
                 lr_mult=float(raw.lr_mult), freeze=tuple(raw.freeze), unfreeze=tuple(raw.unfreeze), combiner=raw.combiner,
                 combiner_params=dict(raw.combiner_params) or None, ema_decay=raw.ema_decay, raw=raw)


@dataclass
class TrainState:
    """The JSON-able counters of a run (trainer_state.json holds these plus the data position)."""

    seed: int = 0
    world_size: int = 1
    phase: str = ""
    temperature: float | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    last_losses: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    nonfinite_streak: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0


def _resolve_steps(config: TrainConfig, schedule: Any) -> int:
    if schedule is None:
        if config.steps is None:
            raise BadInput("the number of training steps is not set", hint="pass --steps N or a --schedule")
        return config.steps
    if config.steps is not None and config.steps > schedule.total_steps:
        raise BadInput(f"{config.steps} steps exceed the schedule's total_steps {schedule.total_steps}",
                       hint="lengthen the schedule or ask for fewer steps")
    return config.steps or schedule.total_steps
