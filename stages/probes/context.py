"""What every check-up item reads: the model loaded from a checkpoint, the episodes it is measured
on, and the model's outputs on them (computed once, shared by the checks).

Episode sets (ch07 §7.10: a check-up on data the model did not train on):

- `train`      the training split of `--data` (leak scan reference, open-set prototypes);
- `heldout`    the held-out split of `--data` plus every episode of `--eval` whose task the model
               trained on (in-distribution, never trained on);
- `unknown`    held-out or eval episodes of tasks absent from the training split (open set).

Inputs are prepared the way the model saw them in training: the history window of
`vision.frames` frames ending at the sample's frame (earlier frames clamp to the episode's first),
the action chunk of `action.horizon` steps starting there (steps past the end repeat the last
action and are invalid), state and action normalised with the statistics saved in the checkpoint's
config (`norm_stats`), never the evaluation dataset's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from stages.data import lerobot_format as fmt
from stages.data.lerobot import LeRobotDataset, open_dataset
from stages.data.loader import split_episodes
from stages.errors import BadInput
from stages.model import ModelConfig, VLAModel, build_model
from stages.model.outputs import LanguageOut, VisionOut
from stages.progress import NullReporter, Reporter
from stages.training import checkpoint

log = logging.getLogger("vla")

STATE_KEY = "observation.state"
ACTION_KEY = "action"


@dataclass
class ProbeConfig:
    seed: int = 0  # perturbations, subsampling and injected phrases are drawn from it
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 64  # forward passes are batched by this many samples
    max_episodes: int = 32  # episodes per set (held-out, unknown), chosen evenly when there are more
    max_samples: int = 256  # frames for the retrieval-type checks, spread evenly over the held-out episodes
    heldout_fraction: float = 0.1  # `--data` episodes held out when its meta names no split (as the loader)
    history_stride: int = 1  # frames between two history frames (the loader's default)


# ----------------------------------------------------------------------------- checkpoint


def load_model(ckpt: Path, device: torch.device) -> tuple[VLAModel, checkpoint.Checkpoint]:
    """Build the model from `<ckpt>/config.json` and load `<ckpt>/model.safetensors` strictly.

    Weights of a frozen pretrained text backbone may be absent from the file (the model restores
    them from their pinned copy, `VLAModel.pretrained_keys`); every other tensor must be there.
    """
    ck = checkpoint.load(ckpt, resume=False)
    config = ModelConfig.from_dict(ck.model_config, source=str(Path(ckpt) / checkpoint.CONFIG))
    model = build_model(config)
    state = model.state_dict()
    weights = {**{k: state[k] for k in model.pretrained_keys() if k not in ck.weights}, **ck.weights}
    checkpoint.load_state_into(model, weights, source=Path(ckpt) / checkpoint.MODEL)
    stats = model.config.norm_stats or {}
    for key in (STATE_KEY, ACTION_KEY):
        if key not in stats:
            raise BadInput(f"`{Path(ckpt) / checkpoint.CONFIG}`: field `norm_stats.{key}` is missing",
                           caused_by="the probe normalises inputs with the statistics the model trained with",
                           hint="train with a loader (its norm_stats() are saved in config.json)")
    return model.to(device).eval(), ck


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise BadInput(f"unknown device `{name}`", caused_by="expected auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device `cuda` was asked for but no CUDA device is available")
    return torch.device(name)


# ----------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    source: str  # "data" | "eval"
    dataset: LeRobotDataset = field(repr=False)
    index: int  # episode index inside its dataset
    episode_id: str
    task: str
    instruction: str
    start: int  # first row in the dataset
    length: int
    meta: dict = field(repr=False)

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.length)


def _episode(ds: LeRobotDataset, source: str, i: int) -> Episode:
    row = ds.episodes.iloc[i]
    meta = ds.episode_meta(i)
    ident = str(meta.get("source_id") or f"{source}:{int(row['episode_index'])}")
    return Episode(source, ds, i, ident, ds.task_name(i), str(row["task"]), int(row["from_index"]), int(row["length"]), meta)


def evenly(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list (deterministic)."""
    if len(items) <= limit:
        return list(items)
    pick = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in pick]


@dataclass
class EpisodeArrays:
    """One episode's inputs, normalised with the model's statistics."""

    frames: np.ndarray  # uint8 [T, H, W, 3] (memory-mapped)
    state: np.ndarray  # float32 [T, Ds] normalised
    action: np.ndarray  # float32 [T, Da] normalised
    action_raw: np.ndarray  # float32 [T, Da] in the robot's units
    state_raw: np.ndarray  # float32 [T, Ds]
    valid: np.ndarray  # bool [T] (`vla.valid`)


class ProbeData:
    """The datasets, their episode sets and per-episode arrays (see the module docstring)."""

    def __init__(self, data: Path, eval_dir: Path | None, model: VLAModel, config: ProbeConfig,
                 reporter: Reporter = NullReporter()):
        self.config = config
        self.data = open_dataset(data, reporter=reporter)
        self.eval = open_dataset(eval_dir, reporter=reporter) if eval_dir is not None else None
        self.image_key = self.data.image_keys[0] if self.data.image_keys else None
        for ds in self.datasets:
            _check_features(ds, self.image_key, model.config)
        self.fps = float(self.data.fps)
        if self.eval is not None and float(self.eval.fps) != self.fps:
            raise BadInput(f"`{self.eval.root}`: field `fps` is {self.eval.fps}", caused_by=f"`{self.data.root}` has {self.fps}",
                           hint="align both datasets at one rate (vla align-time --fps)")
        stats = model.config.norm_stats
        self._norm = {k: (np.asarray(stats[k]["mean"], np.float32), np.maximum(np.asarray(stats[k]["std"], np.float32), 1e-8))
                      for k in (STATE_KEY, ACTION_KEY)}
        splits = split_episodes(self.data, config.heldout_fraction)
        self.train = [_episode(self.data, "data", int(i)) for i in splits["train"]]
        self.train_tasks = sorted({e.task for e in self.train})
        candidates = [_episode(self.data, "data", int(i)) for i in splits["heldout"]]
        if self.eval is not None:
            candidates += [_episode(self.eval, "eval", i) for i in range(self.eval.num_episodes)]
        known = set(self.train_tasks)
        self.all_heldout = [e for e in candidates if e.task in known]
        self.all_unknown = [e for e in candidates if e.task not in known]
        self.heldout = evenly(self.all_heldout, config.max_episodes)
        self.unknown = evenly(self.all_unknown, config.max_episodes)
        if not self.heldout:
            raise BadInput(f"no held-out episodes of trained tasks in `{data}`" + (f" or `{eval_dir}`" if eval_dir else ""),
                           caused_by=f"trained tasks: {', '.join(self.train_tasks)}",
                           hint="give some episodes split \"val\" in meta/vla.json, or pass --eval with episodes of those tasks")
        self._cache: dict[tuple[str, int], EpisodeArrays] = {}
        self._columns: dict[tuple[str, str], np.ndarray] = {}

    @property
    def datasets(self) -> list[LeRobotDataset]:
        return [self.data] + ([self.eval] if self.eval is not None else [])

    def robot_type(self) -> str:
        return str(self.data.info.get("robot_type") or "unknown")

    def state_names(self) -> list[str]:
        return list(self.data.features[STATE_KEY].get("names") or [])

    def normalise(self, key: str, x: np.ndarray) -> np.ndarray:
        mean, std = self._norm[key]
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)

    def denormalise(self, key: str, x: np.ndarray) -> np.ndarray:
        mean, std = self._norm[key]
        return (np.asarray(x, np.float32) * std + mean).astype(np.float32)

    def arrays(self, ep: Episode) -> EpisodeArrays:
        key = (ep.source, ep.index)
        if key not in self._cache:
            ds, rows = ep.dataset, slice(ep.start, ep.start + ep.length)
            state_raw = self.column(ds, STATE_KEY)[rows]
            action_raw = self.column(ds, ACTION_KEY)[rows]
            valid = self.column(ds, fmt.VALID)[rows].astype(bool) if fmt.VALID in ds.features else np.ones(ep.length, bool)
            self._cache[key] = EpisodeArrays(
                frames=ds.images(self.image_key)[rows], state=self.normalise(STATE_KEY, state_raw),
                action=self.normalise(ACTION_KEY, action_raw), action_raw=action_raw.astype(np.float32),
                state_raw=state_raw.astype(np.float32), valid=valid)
        return self._cache[key]

    def column(self, ds: LeRobotDataset, key: str) -> np.ndarray:
        """`ds.column(key)` read once per dataset (the Arrow column is flattened on every call)."""
        ck = (str(ds.root), key)
        if ck not in self._columns:
            self._columns[ck] = np.asarray(ds.column(key))
        return self._columns[ck]


def _check_features(ds: LeRobotDataset, image_key: str | None, config: ModelConfig) -> None:
    info = ds.root / fmt.INFO_PATH
    feats = ds.features
    if image_key is None or image_key not in feats:
        raise BadInput(f"`{info}`: feature `{image_key or 'observation.images.*'}` is missing", caused_by="the probe needs the camera the model saw")
    h, w = feats[image_key]["shape"][:2]
    size = config.vision.image_size
    if (h, w) != (size, size):
        raise BadInput(f"`{info}`: field `features.{image_key}.shape` is [{h}, {w}, 3]", caused_by=f"the model takes {size}x{size} frames")
    for key, want in ((STATE_KEY, config.action.state_dim), (ACTION_KEY, config.action.action_dim)):
        if key not in feats:
            raise BadInput(f"`{info}`: feature `{key}` is missing", caused_by="the model's policy reads it")
        got = int(feats[key]["shape"][0])
        if got != want:
            raise BadInput(f"`{info}`: field `features.{key}.shape` is [{got}]", caused_by=f"the model expects {want} dims")


# ----------------------------------------------------------------------------- model inputs


def windows(frames: np.ndarray, index: np.ndarray, history: int, stride: int) -> torch.Tensor:
    """History windows ending at `index` [B] of one episode's frames [T, H, W, 3] -> uint8 [B, h, 3, H, W]."""
    back = np.arange(-(history - 1), 1) * stride  # [h], 0 = the sample's frame
    rows = np.clip(index[:, None] + back[None, :], 0, len(frames) - 1)  # [B, h]: clamp to the episode
    x = np.asarray(frames[rows.reshape(-1)]).reshape(len(index), history, *frames.shape[1:])
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))


def chunks(action: np.ndarray, valid: np.ndarray, index: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Action chunks starting at `index` [B]: ([B, H, Da], valid [B, H]); steps past the end repeat the last, invalid."""
    steps = index[:, None] + np.arange(horizon)[None, :]  # [B, H]
    inside = steps < len(action)
    steps = np.minimum(steps, len(action) - 1)
    return action[steps], inside & valid[steps]


class Runner:
    """Batched, gradient-free forward passes of the model's parts."""

    def __init__(self, model: VLAModel, device: torch.device, batch_size: int, history_stride: int):
        self.model, self.device, self.batch = model, device, batch_size
        self.history = model.config.vision.frames
        self.stride = history_stride
        self.horizon = model.config.action.horizon
        self._lang: dict[tuple[str, ...], LanguageOut] = {}

    @cached_property
    def logit_scale(self) -> float:
        """exp(clamped logit scale) = 1/τ, the scale the model's InfoNCE used."""
        with torch.no_grad():
            return float(self.model.clamped_logit_scale().exp())

    @torch.no_grad()
    def vision(self, frames: torch.Tensor) -> VisionOut:
        """uint8 [B, h, 3, H, W] -> VisionOut on the probe's device, batched."""
        outs = [self.model.encode_vision(frames[i:i + self.batch].to(self.device)) for i in range(0, len(frames), self.batch)]
        return VisionOut(*(torch.cat([getattr(o, f) for o in outs]) for f in ("tokens", "pooled", "z")))

    @torch.no_grad()
    def language_z(self, texts: list[str]) -> np.ndarray:
        """z of each distinct text, batched: [len(texts), Z]."""
        unique = list(dict.fromkeys(texts))
        zs = torch.cat([self.model.encode_language(unique[i:i + self.batch]).z for i in range(0, len(unique), self.batch)])
        lookup = {t: i for i, t in enumerate(unique)}
        return zs.cpu().numpy()[[lookup[t] for t in texts]]

    @torch.no_grad()
    def action_z(self, action: np.ndarray, state: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """z of action chunks [B, H, Da] with proprio [B, Ds] -> [B, Z]."""
        out = []
        for i in range(0, len(action), self.batch):
            a = torch.from_numpy(np.ascontiguousarray(action[i:i + self.batch])).to(self.device)
            s = torch.from_numpy(np.ascontiguousarray(state[i:i + self.batch])).to(self.device)
            v = torch.from_numpy(np.ascontiguousarray(valid[i:i + self.batch])).to(self.device)
            out.append(self.model.encode_action(a, s, v).z.cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def fuse(self, vision: VisionOut, vision_index: np.ndarray, texts: list[str]) -> torch.Tensor:
        """Fused context [B, D] of vision rows `vision_index` with `texts` (each distinct text encoded once)."""
        unique = list(dict.fromkeys(texts))
        lang = self._language_memo(tuple(unique))
        lookup = {t: i for i, t in enumerate(unique)}
        which = torch.as_tensor([lookup[t] for t in texts], dtype=torch.long)  # [B] row of each sample's text
        out = []
        for i in range(0, len(vision_index), self.batch):
            idx = torch.as_tensor(vision_index[i:i + self.batch], device=vision.tokens.device)
            v = VisionOut(vision.tokens[idx], vision.pooled[idx], vision.z[idx])
            k = which[i:i + self.batch].to(lang.tokens.device)
            out.append(self.model.fuse(v, LanguageOut(lang.tokens[k], lang.mask[k], lang.pooled[k], lang.z[k])))
        return torch.cat(out)

    @torch.no_grad()
    def head(self, fused: torch.Tensor, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy head on fused contexts [B, D] and normalised proprio [B, Ds] -> (mean, log_std) [B, H, Da]."""
        mean, log_std = self.model.policy(fused, torch.from_numpy(np.ascontiguousarray(state)).to(self.device))
        return mean.cpu().numpy(), log_std.cpu().numpy()

    def policy(self, vision: VisionOut, vision_index: np.ndarray, texts: list[str], state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """π(· | vision rows `vision_index`, texts, state) -> (mean, log_std), each float32 [B, H, Da]."""
        return self.head(self.fuse(vision, vision_index, texts), state)

    def _language_memo(self, unique: tuple[str, ...]) -> LanguageOut:
        """The last few encodings of a text set (an episode's frames share one text; the compliance check
        alternates the plain and the constrained instruction of an episode)."""
        if unique not in self._lang:
            if len(self._lang) >= 8:
                self._lang.pop(next(iter(self._lang)))
            self._lang[unique] = self.model.encode_language(list(unique))
        return self._lang[unique]

    @torch.no_grad()
    def cycle(self, z_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(g_LA(g_VL(z_v)), g_VA(z_v)), each [B, Z] (`VLAModel.cycle`)."""
        via, direct = self.model.cycle(torch.from_numpy(np.ascontiguousarray(z_v)).to(self.device))
        return via.cpu().numpy(), direct.cpu().numpy()
