"""Stage I of ch07 (§7.1–7.4): pretrain one modality's encoder alone, before cross-modal alignment.

    [vision V]   §7.2  masked video modelling + contrastive views / near frames + temporal consistency
    [language L] §7.4  reuse a general encoder (frozen + LoRA/adapter) or a small one from scratch,
                       paraphrase-contrastive on instructions, constraints kept apart from their negation
    [action A]   §7.3  chunk modelling with robust BC + spectral prior + dynamics hinge + jerk clipping

    summary = pretrain_modality(PretrainConfig(modality="vision", data=Path("data/aligned"),
                                               out=Path("ckpt/vision")), reporter=reporter)

Each run trains only its modality's modules (`trains`) and writes a checkpoint directory
(ARCHITECTURE §5) through the shared engine; the checkpoint's weights metadata records what a later
`--init` takes from it (`provides`, `MODALITY_PREFIXES`), so that align can start from
`--init ckpt/vision --init ckpt/language --init ckpt/action`. config.json holds the model config
with the dataset's normalisation stats. Held-out progress goes to logs/metrics.jsonl at each
evaluation. The recipes live in `stages.pretraining.{vision,language,action}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.artifacts import validate
from stages.data.loader import split_episodes
from stages.errors import BadInput
from stages.model import MODALITY_PREFIXES
from stages.pretraining import action, language, vision
from stages.progress import NullReporter, Reporter
from stages.registry import Registry
from stages.training.loop import CheckpointConfig, TrainConfig, Trainer
from stages.training.metrics import scalar
from stages.training.optim import OptimConfig
from stages.training.setup import SetupConfig, TrainingSetup, check_preset, check_run_directory, prepare, restrict_trainable, run_directory

log = logging.getLogger("vla")

TEXT_ENCODERS = ("bytes", "minilm")


@dataclass(frozen=True)
class RunDefaults:
    steps: int
    batch_size: int
    lr: float


# Per preset and modality. tiny: the CPU demo (three modalities + align in ≤ 10 min on 2 cores,
# measured in docs/pretrain-modality.md); small / base: starting points for one GPU.
DEFAULTS: dict[str, dict[str, RunDefaults]] = {
    "tiny": {"vision": RunDefaults(100, 32, 5e-4), "language": RunDefaults(60, 64, 1e-3), "action": RunDefaults(300, 64, 1e-3)},
    "small": {m: RunDefaults(20_000, 256, 5e-4) for m in ("vision", "language", "action")},
    "base": {m: RunDefaults(50_000, 512, 3e-4) for m in ("vision", "language", "action")},
}


@dataclass
class PretrainConfig:
    modality: str                                   # vision | language | action
    data: Path                                      # aligned LeRobot dataset
    out: Path                                       # checkpoint directory
    preset: str = "tiny"
    steps: int | None = None                        # None: DEFAULTS[preset][modality]
    batch_size: int | None = None                   # global batch (all ranks)
    lr: float | None = None
    seed: int = 0
    init: list[Path] = field(default_factory=list)  # checkpoints merged by module prefix before training
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    text_encoder: str | None = None                 # language backbone: bytes | minilm (None: the preset's)
    eval_every: int | None = None                   # None: about 4 evaluations per run
    checkpoint_every: int | None = None             # None: about 4 snapshots per run
    log_every: int = 10
    warmup_fraction: float = 0.05
    vision: vision.VisionPretrainConfig = field(default_factory=vision.VisionPretrainConfig)
    language: language.LanguagePretrainConfig = field(default_factory=language.LanguagePretrainConfig)
    action: action.ActionPretrainConfig = field(default_factory=action.ActionPretrainConfig)


@dataclass(frozen=True)
class Modality:
    needs: tuple[tuple[str, str | None], ...]       # dataset features the recipe reads
    trains: tuple[str, ...]                         # module prefixes it trains
    provides: tuple[str, ...]                       # what a later --init takes from its checkpoint
    loss_weights: dict[str, float]
    build: Callable[[PretrainConfig, TrainingSetup], Any]  # -> recipe


def _vision(cfg: PretrainConfig, setup: TrainingSetup) -> vision.VisionRecipe:
    return vision.VisionRecipe(cfg.vision)


def _language(cfg: PretrainConfig, setup: TrainingSetup) -> language.LanguageRecipe:
    pool = language.InstructionPool(setup.dataset, setup.train_loader.cfg.heldout_fraction)
    return language.LanguageRecipe(cfg.language, pool)


def _action(cfg: PretrainConfig, setup: TrainingSetup) -> action.ActionRecipe:
    cfg.action.check()
    limits = action.dynamics_limits(setup.train_loader, signal=cfg.action.signal, quantile=cfg.action.limit_quantile)
    log.info("action limits (normalised units per step, q%.3g): acc_max %s, jerk_max %s", cfg.action.limit_quantile,
             _fmt(limits["acc_max"]), _fmt(limits["jerk_max"]))
    return action.ActionRecipe(cfg.action, limits)


MODALITIES: Registry[Modality] = Registry("modality")
MODALITIES.add("vision", Modality(
    needs=(("image", None),), trains=MODALITY_PREFIXES["vision"], provides=MODALITY_PREFIXES["vision"],
    loss_weights=vision.LOSS_WEIGHTS, build=_vision))
MODALITIES.add("language", Modality(
    needs=(("text", None),), trains=MODALITY_PREFIXES["language"], provides=MODALITY_PREFIXES["language"],
    loss_weights=language.LOSS_WEIGHTS, build=_language))
# The action recipe has no contrastive loss, so it neither trains nor provides the shared logit
# scale: an `--init ckpt/action` given last must not overwrite the temperature vision/language learnt.
_ACTION = tuple(p for p in MODALITY_PREFIXES["action"] if p != "logit_scale")
MODALITIES.add("action", Modality(
    needs=(("vector", "action"), ("vector", "observation.state")), trains=_ACTION, provides=_ACTION,
    loss_weights=action.LOSS_WEIGHTS, build=_action))


def run_defaults(preset: str, modality: str) -> RunDefaults:
    check_preset(preset)
    if preset not in DEFAULTS:
        raise BadInput(f"preset `{preset}` has no default steps / batch size", hint="pass --steps and --batch-size")
    return DEFAULTS[preset][modality]


def pretrain_modality(cfg: PretrainConfig, *, reporter: Reporter | None = None) -> dict:
    """Validate, build, train, save; returns the run summary (schema `pretrain-summary`)."""
    reporter = reporter or NullReporter()
    spec = MODALITIES.get(cfg.modality, where="--modality")
    defaults = run_defaults(cfg.preset, cfg.modality)
    steps, batch_size, lr = cfg.steps or defaults.steps, cfg.batch_size or defaults.batch_size, cfg.lr or defaults.lr
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise BadInput(f"--steps {steps}, --batch-size {batch_size} and --lr {lr} must be positive")
    if cfg.text_encoder is not None and cfg.text_encoder not in TEXT_ENCODERS:
        raise BadInput(f"unknown text encoder `{cfg.text_encoder}`", caused_by=f"known: {', '.join(TEXT_ENCODERS)}")
    check_run_directory(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    overrides = {"language.encoder": cfg.text_encoder} if cfg.text_encoder else {}
    setup = prepare(SetupConfig(data=cfg.data, preset=cfg.preset, model_overrides=overrides, init=list(cfg.init), seed=cfg.seed,
                                device=cfg.device, needs=spec.needs), batch_size=batch_size, reporter=reporter)
    trainable = restrict_trainable(setup.model, spec.trains)
    recipe = spec.build(cfg, setup)
    every = max(1, steps // 4)
    train_cfg = TrainConfig(
        steps=steps, seed=cfg.seed, device=setup.device, precision=setup.precision, resume=cfg.resume,
        log_every=cfg.log_every, eval_every=cfg.eval_every if cfg.eval_every is not None else every,
        loss_weights=dict(spec.loss_weights), optim=OptimConfig(lr=lr, warmup_steps=int(cfg.warmup_fraction * steps)),
        checkpoint=CheckpointConfig(every=cfg.checkpoint_every if cfg.checkpoint_every is not None else every,
                                    provides=list(spec.provides)))
    log.info("%s: %d trainable tensors (%s), %d steps of %d samples", cfg.modality, len(trainable), ", ".join(spec.trains),
             steps, batch_size)
    started = time.perf_counter()
    with run_directory(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, is_main=setup.dist.is_main) as run_dir:
        result = Trainer(setup.model, recipe, setup.train_loader, config=train_cfg, out_dir=run_dir, reporter=reporter,
                         eval_loader=setup.eval_loader).fit()
    return _summary(cfg, setup, spec, result, steps=steps, batch_size=batch_size, lr=lr, wall_s=time.perf_counter() - started,
                    recipe=recipe)


def _summary(cfg: PretrainConfig, setup: TrainingSetup, spec: Modality, result: dict, *, steps: int, batch_size: int,
             lr: float, wall_s: float, recipe: Any) -> dict:
    splits = split_episodes(setup.dataset, setup.train_loader.cfg.heldout_fraction)
    summary = {
        "schema_version": 1,
        "modality": cfg.modality,
        "out": str(cfg.out),
        "data": str(cfg.data),
        "preset": cfg.preset,
        "text_encoder": setup.model.config.language.encoder,
        "steps": int(result["steps"]),
        "resumed_from": result.get("resumed_from"),
        "batch_size": batch_size,
        "lr": lr,
        "seed": cfg.seed,
        "device": setup.device,
        "precision": setup.precision,
        "world_size": setup.dist.world_size,
        "episodes": {"train": int(len(splits["train"])), "heldout": int(len(splits["heldout"]))},
        "provides": [p.rstrip(".") for p in spec.provides],
        "init": {k: v for k, v in sorted(setup.init_from.items())},
        "losses": scalar(result.get("losses") or {}),
        "eval": scalar(result.get("eval") or {}),
        "train_seconds": float(result.get("seconds", 0.0)),
        "wall_seconds": round(wall_s, 3),
    }
    if hasattr(recipe, "limits"):
        summary["action_limits"] = recipe.limits
    validate(summary, "pretrain-summary", source="pretrain-modality summary")
    return summary


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"
