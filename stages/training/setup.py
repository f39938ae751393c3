"""What every training stage does before its first step (pretrain-modality, align, finetune).

    setup = prepare(SetupConfig(data="data/aligned", preset="tiny", init=[...], seed=0, device="auto",
                                needs=(("image", None), ("vector", "action"))), batch_size=64)
    Trainer(setup.model, recipe, setup.train_loader, eval_loader=setup.eval_loader,
            config=TrainConfig(device=setup.device, precision=setup.precision, ...), out_dir=run_dir)

`prepare` validates everything a run needs BEFORE anything is written: the model preset, the
`--init` checkpoints' files, the dataset and the features the recipe needs. Then it builds the
loaders (train: this rank's shard of the global batch; held-out: one pass, rank 0), builds the model
with the dataset's properties — image size, history length, action/state dims and chunk horizon,
normalisation stats (`model.set_norm_stats`, saved in config.json) — and merges the `--init`
checkpoints by module prefix (ARCHITECTURE §5). `run_directory` is the output policy shared by the
training stages (fresh, `--resume`, `--overwrite`).

Precedence of model settings (documented once): preset defaults < the dataset's properties <
explicit `model_overrides` (a dotted-path dict, e.g. {"language.encoder": "minilm"}).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stages.artifacts import atomic_dir, check_writable_parent
from stages.data import lerobot_format as fmt
from stages.data.lerobot import LeRobotDataset, open_dataset
from stages.data.loader import Loader, LoaderConfig, build_loader
from stages.errors import BadInput
from stages.model import PRESETS, ModelConfig, VLAModel, build_model, resolve_config
from stages.progress import NullReporter, Reporter
from stages.training import checkpoint, freezing, parallel

log = logging.getLogger("vla")

DEVICES = ("auto", "cpu", "cuda")
# what a recipe may say it needs from the dataset: (kind, feature key or None for "the first image")
FEATURE_KINDS = ("image", "vector", "text")


@dataclass
class SetupConfig:
    data: Path                                  # a LeRobot v3.0 / v2.1 dataset directory
    preset: str = "tiny"                        # model preset (registry `PRESETS`)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # dotted paths, applied last
    init: list[Path] = field(default_factory=list)  # checkpoints merged by module prefix, in order
    seed: int = 0                               # model init and loader order
    device: str = "auto"                        # auto | cpu | cuda
    needs: tuple[tuple[str, str | None], ...] = ()  # features the recipe reads, checked up front
    image_key: str | None = None                # default: the dataset's first image feature
    heldout_fraction: float = 0.1               # episodes held out when the dataset names no split
    eval: bool = True                           # build the held-out loader
    cache_dir: Path | None = None               # frame cache location (default: see stages.data.cache)


@dataclass
class TrainingSetup:
    """What `prepare` hands the recipe and the engine."""

    dataset: LeRobotDataset
    model: VLAModel
    train_loader: Loader
    eval_loader: Loader | None
    device: str                                 # for TrainConfig.device
    precision: str                              # fp32 | bf16, for TrainConfig.precision
    dist: parallel.DistInfo
    init_from: dict[str, str]                   # prefix -> checkpoint it came from (empty without --init)


# ----------------------------------------------------------------------------- device


def select_device(device: str) -> tuple[str, str]:
    """`--device auto|cpu|cuda` -> (device, precision): bf16 autocast on a CUDA device that has it."""
    if device not in DEVICES:
        raise BadInput(f"unknown device `{device}`", caused_by=f"known: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device `cuda` was asked for but no CUDA device is available", hint="pass --device cpu (or auto)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return device, "bf16" if bf16 else "fp32"


# ----------------------------------------------------------------------------- inputs


def check_preset(preset: str) -> None:
    PRESETS.get(preset, where="--preset")


def check_init_dirs(dirs: Sequence[Path]) -> list[Path]:
    """Every `--init` directory must hold model.safetensors and config.json (named when missing)."""
    out = [Path(d) for d in dirs]
    for d in out:
        checkpoint.check_files(d, checkpoint.INIT_FILES)
    return out


def image_feature(dataset: LeRobotDataset, key: str | None = None) -> str:
    """The image feature to train on: `key`, else the dataset's first; BadInput when there is none."""
    info = dataset.root / fmt.INFO_PATH
    if key is not None:
        if dataset.features.get(key, {}).get("dtype") not in fmt.IMAGE_DTYPES:
            raise BadInput(f"`{info}`: image feature `{key}` is missing",
                           caused_by=f"image features: {', '.join(dataset.image_keys) or 'none'}")
        return key
    if not dataset.image_keys:
        raise BadInput(f"`{info}`: the dataset has no image feature", caused_by=f"features: {', '.join(dataset.features)}")
    return dataset.image_keys[0]


def require_features(dataset: LeRobotDataset, needs: Sequence[tuple[str, str | None]], *, needed_by: str,
                     image_key: str | None = None) -> None:
    """BadInput naming the first feature `needed_by` reads that the dataset lacks.

    needs: (kind, key) pairs; kind `image` (key None = the first image feature), `vector` (a float
    vector feature with stats), `text` (the instruction / task strings).
    """
    info = dataset.root / fmt.INFO_PATH
    for kind, key in needs:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}")
        if kind == "image":
            try:
                image_feature(dataset, key or image_key)
            except BadInput as exc:
                raise BadInput(f"{exc.message} ({needed_by} needs one)", caused_by=exc.caused_by) from None
        elif kind == "vector":
            ft = dataset.features.get(key)
            if ft is None or ft["dtype"] in fmt.IMAGE_DTYPES or ft["dtype"] == "string":
                raise BadInput(f"`{info}`: feature `{key}` is missing ({needed_by} needs it)",
                               caused_by=f"vector features: {', '.join(dataset.vector_keys) or 'none'}")
        elif not any(str(t).strip() for t in dataset.tasks):
            raise BadInput(f"dataset `{dataset.root}` has no instructions ({needed_by} needs them)",
                           caused_by="every task string is empty")


# ----------------------------------------------------------------------------- model


def model_config_for(dataset: LeRobotDataset, loader: Loader, preset: str, overrides: dict[str, Any]) -> ModelConfig:
    """The preset with the dataset's properties filled in, then the explicit overrides."""
    image = dataset.features[loader.image_key]["shape"]  # [H, W, C]
    if len(image) != 3 or image[0] != image[1]:
        raise BadInput(f"`{dataset.root / fmt.INFO_PATH}`: feature `{loader.image_key}` has shape {image}",
                       caused_by="the vision encoder takes square frames [S, S, 3]")
    dims = {key: int(dataset.features[key]["shape"][0]) for key in (loader.cfg.state_key, loader.cfg.action_key)}
    from_data = {
        "vision.image_size": int(image[0]),
        "vision.frames": loader.cfg.history,
        "action.action_dim": dims[loader.cfg.action_key],
        "action.state_dim": dims[loader.cfg.state_key],
        "action.horizon": loader.cfg.chunk,
    }
    config = resolve_config(preset, **from_data)
    return resolve_config(config, **overrides) if overrides else config


def build_training_model(config: ModelConfig, *, norm_stats: dict, seed: int, init: Sequence[Path] = ()) -> tuple[VLAModel, dict]:
    """Model with a seeded init, the loader's normalisation stats, and `--init` checkpoints merged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    model.set_norm_stats(norm_stats)
    owners = checkpoint.merge_init(model, list(init)) if init else {}
    return model, owners


def restrict_trainable(model: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Train only the modules under `prefixes` (those already frozen, e.g. a pretrained text
    backbone, stay frozen); returns the trainable names. Names match whole dotted components."""
    chosen = {n for n, p in model.named_parameters()
              if p.requires_grad and any(n == pre.rstrip(".") or n.startswith(pre.rstrip(".") + ".") for pre in prefixes)}
    if not chosen:
        raise BadInput(f"no trainable parameter under {', '.join(prefixes)}")
    freezing.apply(model, chosen)
    return sorted(chosen)


# ----------------------------------------------------------------------------- the whole setup


def prepare(cfg: SetupConfig, *, batch_size: int, history: int | None = None, chunk: int | None = None,
            loader_overrides: dict[str, Any] | None = None, reporter: Reporter | None = None) -> TrainingSetup:
    """Validate the inputs, then build loaders and the model (see the module docstring).

    `history` / `chunk` default to the preset's `vision.frames` / `action.horizon`.
    """
    check_preset(cfg.preset)
    device, precision = select_device(cfg.device)
    init = check_init_dirs(cfg.init)
    dataset = open_dataset(cfg.data, cache_dir=cfg.cache_dir, reporter=reporter or NullReporter())
    require_features(dataset, cfg.needs, needed_by="this stage", image_key=cfg.image_key)
    preset = resolve_config(cfg.preset, **cfg.model_overrides)
    loader_cfg = LoaderConfig(
        batch_size=batch_size, history=history or preset.vision.frames, chunk=chunk or preset.action.horizon,
        image_key=image_feature(dataset, cfg.image_key), heldout_fraction=cfg.heldout_fraction,
        **(loader_overrides or {}))
    dist = parallel.setup(device)
    train = build_loader(dataset, loader_cfg, split="train", seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    held = build_loader(dataset, loader_cfg, split="heldout", seed=cfg.seed) if cfg.eval and dist.is_main else None
    config = model_config_for(dataset, train, cfg.preset, cfg.model_overrides)
    model, owners = build_training_model(config, norm_stats=train.norm_stats(), seed=cfg.seed, init=init)
    return TrainingSetup(dataset=dataset, model=model, train_loader=train, eval_loader=held, device=device,
                         precision=precision, dist=dist, init_from=owners)


def check_run_directory(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """The output checks of `run_directory`, cheap enough to run before anything else."""
    out = Path(out)
    if resume and overwrite:
        raise BadInput("--resume and --overwrite exclude each other", hint="drop one of them")
    if resume:
        if checkpoint.latest(out) is None:
            raise BadInput(f"nothing to resume in `{out}`", caused_by="no complete checkpoint or snapshot found",
                           hint="drop --resume to start a new run")
    elif out.exists() and not overwrite:
        raise BadInput(f"output `{out}` already exists",
                       hint="pass --resume to continue its run, --overwrite to replace it, or choose another --out")
    else:
        check_writable_parent(out)


@contextlib.contextmanager
def run_directory(out: Path, *, resume: bool = False, overwrite: bool = False, is_main: bool = True) -> Iterator[Path]:
    """Where a training run writes, by the shared policy of the training stages:

    - a new OUT: the run writes into OUT directly, so that a killed run can be continued with
      `--resume` (its snapshots under OUT/checkpoints/ are complete or absent; the top-level
      checkpoint files appear only at the end, trainer_state.json last);
    - `--resume`: OUT must hold a run; training continues in it;
    - OUT exists: refused, unless `--overwrite`, which trains into a temporary sibling that replaces
      OUT only when the run succeeds (a failed run leaves the old OUT untouched).

    Call it after every input has been validated: it is the first thing that touches the disk.
    Ranks other than 0 never write; they get OUT's path.
    """
    out = Path(out)
    check_run_directory(out, resume=resume, overwrite=overwrite)
    if resume or not is_main:
        yield out
        return
    if out.exists():
        with atomic_dir(out, overwrite=True) as tmp:
            yield tmp
        return
    yield out
