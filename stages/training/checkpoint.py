"""Checkpoint directories (ARCHITECTURE §5): safetensors + JSON only, every write atomic.

    <out>/
      model.safetensors          weights; metadata: format_version, preset, config_digest, step, provides
      config.json                model config (schema `checkpoint-config`)
      trainer_state.json         step, phase, data position, schedule position, temperature, loss weights,
                                 combiner / recipe / EMA state (schema `trainer-state`)
      trainer_state.safetensors  the tensors that state refers to: per-rank RNG states as uint8
                                 (`rng.<rank>.<torch|cuda|numpy|python>`), EMA weights (`ema.*`),
                                 combiner and recipe tensors
      optimizer.safetensors      AdamW moments by parameter name (`state/<param>/<key>`)
      optimizer.json             param groups (names, lr, betas, weight decay, ...)
      schedule.json              the schedule that produced it (copy; only when a schedule was used)
      logs/                      metrics.jsonl, gradients.jsonl, buckets.jsonl
      checkpoints/step-000500/   periodic snapshots, same layout, the newest `keep_last` kept

Atomicity: a snapshot is written into a temporary sibling directory and renamed into place, so it
either exists complete or not at all. The top-level (final) checkpoint shares its directory with the
live logs and the snapshots, so its files are staged in a temporary directory first (a failure while
serialising leaves the previous files untouched), `trainer_state.json` is removed, the other files are
renamed in, and `trainer_state.json` is renamed last. Every file carries the step, and `load` refuses a
directory whose files disagree. Loading never executes code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

import schemas
from stages.artifacts import atomic_dir, atomic_file, read_json, write_json
from stages.errors import BadInput

log = logging.getLogger("vla")

FORMAT_VERSION = 1
MODEL = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULE = "schedule.json"
LOGS = "logs"
SNAPSHOTS = "checkpoints"
INIT_FILES = (MODEL, CONFIG)  # enough to take weights from (--init, probe, export)
RESUME_FILES = (MODEL, CONFIG, STATE, STATE_TENSORS, OPTIMIZER, OPTIMIZER_JSON)
_SNAPSHOT_RE = re.compile(r"^step-(\d{6,})$")


def config_digest(config: dict) -> str:
    """sha256 of the config's canonical JSON (sorted keys): equal configs, equal digests."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_document(model_config: dict) -> dict:
    """config.json exactly as written (and hashed): the model config with `schema_version` first."""
    return {"schema_version": 1, **{k: v for k, v in model_config.items() if k != "schema_version"}}


def snapshot_name(step: int) -> str:
    return f"step-{step:06d}"


# ----------------------------------------------------------------------------- state <-> files


def split_state(obj: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor in a nested dict/list by `{"$tensor": key}`; return (JSON, tensors)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach()
            return {"$tensor": path}
        if isinstance(x, dict):
            return {str(k): walk(v, f"{path}.{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, np.generic):
            return x.item()
        return x

    return walk(obj, prefix), tensors


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"$tensor"}:
            return tensors[obj["$tensor"]]
        return {k: join_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_state(v, tensors) for v in obj]
    return obj


def _saveable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no shared storage (safetensors refuses aliases such as tied weights)."""
    out, seen = {}, set()
    for k, t in state.items():
        t = t.detach()
        ptr = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        t = t.to("cpu").contiguous()
        if (ptr is not None and ptr in seen) or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        if ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_file(path) as tmp:
        safetensors.torch.save_file(_saveable(tensors), str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise BadInput(f"checkpoint `{path.parent}` is incomplete: `{path.name}` is missing", caused_by=f"no such file: {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise BadInput(f"cannot read `{path}`", caused_by=str(exc)) from None
    return tensors, metadata


def check_files(ckpt: Path, files: tuple[str, ...] = INIT_FILES) -> None:
    """Raise BadInput naming the first missing file of a checkpoint directory."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise BadInput(f"checkpoint `{ckpt}` does not exist or is not a directory")
    for name in files:
        if not (ckpt / name).is_file():
            raise BadInput(f"checkpoint `{ckpt}` is incomplete: `{name}` is missing", caused_by=f"no such file: {ckpt / name}")


# ----------------------------------------------------------------------------- optimizer


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors keyed `state/<param name>/<key>`, JSON with the param groups)."""
    sd = optimizer.state_dict()
    index_to_name = {i: n for g in sd["param_groups"] for i, n in zip(g["params"], g["param_names"])}
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        name = index_to_name[index]
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, {"schema_version": 1, "type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: dict, *, source: Path) -> None:
    """Restore optimizer moments and groups by parameter name; a different parameter set is BadInput."""
    current = optimizer.state_dict()
    saved_groups = doc["param_groups"]
    if [g["param_names"] for g in saved_groups] != [g["param_names"] for g in current["param_groups"]]:
        mine = {n for g in current["param_groups"] for n in g["param_names"]}
        theirs = {n for g in saved_groups for n in g["param_names"]}
        first = sorted(mine ^ theirs)[:1] or ["(parameter order or grouping differs)"]
        raise BadInput(f"`{source}`: optimizer parameters do not match the model", caused_by=f"first difference: `{first[0]}`")
    name_to_index = {n: i for g in current["param_groups"] for i, n in zip(g["params"], g["param_names"])}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        name, _, sub = key.removeprefix("state/").rpartition("/")  # state/<param name>/<exp_avg|exp_avg_sq|step>
        if name not in name_to_index:
            raise BadInput(f"`{source}`: optimizer state for unknown parameter `{name}`")
        state.setdefault(name_to_index[name], {})[sub] = value
    for name, values in doc.get("scalars", {}).items():
        state.setdefault(name_to_index[name], {}).update(values)
    groups = []
    for cur, saved in zip(current["param_groups"], saved_groups):
        g = {**cur, **saved, "params": cur["params"]}
        if isinstance(cur.get("betas"), tuple):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- save


@dataclass
class Checkpoint:
    """Everything one checkpoint directory holds, in memory."""

    step: int
    weights: dict[str, torch.Tensor]
    model_config: dict
    trainer_state: dict = field(default_factory=dict)
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_json: dict = field(default_factory=dict)
    schedule: dict | None = None
    preset: str | None = None
    provides: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def _model_metadata(ck: Checkpoint) -> dict[str, str]:
    provides = ck.provides if ck.provides is not None else sorted({k.split(".")[0] for k in ck.weights})
    provides = [p.rstrip(".") for p in provides]  # "vision." and "vision" name the same module
    return {
        "format": "vla-checkpoint",
        "format_version": str(FORMAT_VERSION),
        "preset": ck.preset or "",
        "config_digest": config_digest(config_document(ck.model_config)),
        "step": str(ck.step),
        "provides": ",".join(provides),
    }


def write_files(directory: Path, ck: Checkpoint, *, logs_from: Path | None = None) -> None:
    """Write every file of `ck` into `directory` (which the caller makes atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    step_meta = {"format_version": str(FORMAT_VERSION), "step": str(ck.step)}
    _save_tensors(directory / MODEL, ck.weights, _model_metadata(ck))
    write_json(directory / CONFIG, config_document(ck.model_config), schema="checkpoint-config")
    if ck.trainer_state:
        _save_tensors(directory / STATE_TENSORS, ck.state_tensors, step_meta)
        _save_tensors(directory / OPTIMIZER, ck.optimizer_tensors, step_meta)
        write_json(directory / OPTIMIZER_JSON, {**ck.optimizer_json, "step": ck.step}, schema="optimizer-state")
        write_json(directory / STATE, ck.trainer_state, schema="trainer-state")
    if ck.schedule is not None:
        write_json(directory / SCHEDULE, ck.schedule, schema="schedule" if "schedule" in schemas.names() else None)
    if logs_from is not None and logs_from.is_dir():
        shutil.copytree(logs_from, directory / LOGS, dirs_exist_ok=True)


def save_snapshot(out_dir: Path, ck: Checkpoint, *, keep_last: int) -> Path:
    """Write `<out>/checkpoints/step-NNNNNN/` atomically (logs copied in) and prune old snapshots."""
    target = Path(out_dir) / SNAPSHOTS / snapshot_name(ck.step)
    with atomic_dir(target, overwrite=True) as tmp:
        write_files(tmp, ck, logs_from=Path(out_dir) / LOGS)
    if keep_last > 0:
        for old in snapshots(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def save_final(out_dir: Path, ck: Checkpoint) -> Path:
    """Write the top-level checkpoint files of `<out>/` (the live `logs/` stay where they are)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".final-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_files(staging, ck)
        (out_dir / STATE).unlink(missing_ok=True)  # from here on the top level reads as incomplete
        names = sorted(p.name for p in staging.iterdir() if p.name != STATE)
        for stale in {*RESUME_FILES, SCHEDULE} - {*names, STATE}:
            (out_dir / stale).unlink(missing_ok=True)
        for name in [*names, STATE] if (staging / STATE).exists() else names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def snapshots(out_dir: Path) -> list[Path]:
    """Snapshot directories of a run, oldest first."""
    root = Path(out_dir) / SNAPSHOTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _SNAPSHOT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(out_dir: Path) -> Path | None:
    """The checkpoint `--resume` continues from: the newest snapshot, or the top level if newer."""
    candidates = [(int(_SNAPSHOT_RE.match(p.name).group(1)), 1, p) for p in snapshots(out_dir)]
    out_dir = Path(out_dir)
    if all((out_dir / f).is_file() for f in RESUME_FILES):
        state = read_json(out_dir / STATE, schema="trainer-state")
        candidates.append((int(state["step"]), 0, out_dir))
    return max(candidates)[2] if candidates else None


def remove_stale_temporaries(out_dir: Path) -> list[str]:
    """Delete what a killed save left behind (`.step-*.tmp-*` snapshot dirs, `.final-*` staging)."""
    out_dir = Path(out_dir)
    stale = [*out_dir.glob(".final-*"), *(out_dir / SNAPSHOTS).glob(".step-*.tmp-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def holds_run(out_dir: Path) -> bool:
    """True when `out_dir` already holds (part of) a training run: logs, snapshots or a checkpoint."""
    out_dir = Path(out_dir)
    return any((out_dir / name).exists() for name in (LOGS, SNAPSHOTS, STATE, MODEL))


# ----------------------------------------------------------------------------- load


def read_config(ckpt: Path) -> dict:
    """The model config saved in `<ckpt>/config.json` (as written, `schema_version` included)."""
    return read_json(Path(ckpt) / CONFIG, schema="checkpoint-config")


def load(ckpt: Path, *, resume: bool = True) -> Checkpoint:
    """Read a checkpoint directory; `resume=False` reads only weights and config."""
    ckpt = Path(ckpt)
    check_files(ckpt, RESUME_FILES if resume else INIT_FILES)
    weights, meta = _load_tensors(ckpt / MODEL)
    if meta.get("format") != "vla-checkpoint":
        raise BadInput(f"`{ckpt / MODEL}` is not a vla checkpoint", caused_by="metadata `format` is missing")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise BadInput(f"`{ckpt / MODEL}` has format version {meta['format_version']}", caused_by=f"this vla reads up to {FORMAT_VERSION}")
    config = read_config(ckpt)
    if config_digest(config) != meta.get("config_digest"):
        raise BadInput(f"`{ckpt / CONFIG}` does not belong to `{ckpt / MODEL}`", caused_by="config digest differs")
    step = int(meta.get("step", "0"))
    ck = Checkpoint(step=step, weights=weights, model_config=config, preset=meta.get("preset") or None,
                    provides=[p for p in meta.get("provides", "").split(",") if p], metadata=meta, path=ckpt)
    if not resume:
        return ck
    ck.trainer_state = read_json(ckpt / STATE, schema="trainer-state")
    ck.state_tensors, state_meta = _load_tensors(ckpt / STATE_TENSORS)
    ck.optimizer_tensors, optim_meta = _load_tensors(ckpt / OPTIMIZER)
    ck.optimizer_json = read_json(ckpt / OPTIMIZER_JSON, schema="optimizer-state")
    steps = {MODEL: step, STATE: ck.trainer_state["step"], STATE_TENSORS: int(state_meta.get("step", -1)),
             OPTIMIZER: int(optim_meta.get("step", -1)), OPTIMIZER_JSON: ck.optimizer_json.get("step")}
    for name, value in steps.items():
        if value != step:
            raise BadInput(f"checkpoint `{ckpt}` mixes files of different steps", caused_by=f"`{MODEL}` is step {step}, `{name}` is step {value}")
    if ck.trainer_state.get("schedule") is not None:
        check_files(ckpt, (SCHEDULE,))
        ck.schedule = read_json(ckpt / SCHEDULE, schema="schedule" if "schedule" in schemas.names() else None)
    return ck


def load_weights(model: torch.nn.Module, ckpt: Path) -> Checkpoint:
    """Load every tensor of `<ckpt>/model.safetensors` into `model` (strict; probe, export, finetune)."""
    ck = load(ckpt, resume=False)
    load_state_into(model, ck.weights, source=Path(ckpt) / MODEL)
    return ck


def load_state_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], *, source: Path) -> None:
    """Strict copy: BadInput naming the first missing / unexpected / mis-shaped tensor."""
    _check_match(model.state_dict(), weights, None, source)
    _copy_into(model, weights)


def restore_logs(ckpt: Path, out_dir: Path) -> None:
    """Make `<out>/logs/` what it was when `ckpt` (a snapshot) was written: later rows go away."""
    src, dst = Path(ckpt) / LOGS, Path(out_dir) / LOGS
    kept = {p.name for p in src.glob("*.jsonl")} if src.is_dir() else set()
    for p in dst.glob("*.jsonl") if dst.is_dir() else []:
        if p.name not in kept:
            p.unlink()
    for name in sorted(kept):
        with atomic_file(dst / name) as tmp:
            shutil.copyfile(src / name, tmp)


def _under(key: str, prefixes: list[str] | None) -> bool:
    return prefixes is None or any(key == p or key.startswith(p + ".") for p in prefixes)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_match(model_state: dict, weights: dict, prefixes: list[str] | None, source: Path) -> None:
    """BadInput naming the first tensor (model order, then file order) that does not match."""
    for key, t in model_state.items():
        if not _under(key, prefixes):
            continue
        if key not in weights:
            raise BadInput(f"`{source}` does not match the model: tensor `{key}` is missing", caused_by=f"the model has `{key}` {_shape(t)}")
        if weights[key].shape != t.shape:
            raise BadInput(f"`{source}` does not match the model: tensor `{key}` has shape {_shape(weights[key])}",
                           caused_by=f"the model expects {_shape(t)}")
    for key in weights:
        if _under(key, prefixes) and key not in model_state:
            raise BadInput(f"`{source}` does not match the model: tensor `{key}` is unexpected", caused_by="the model has no tensor of that name")


@torch.no_grad()
def _copy_into(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in weights.items():
        state[key].copy_(value.to(state[key].dtype))


def merge_init(model: torch.nn.Module, dirs: list[Path]) -> dict[str, str]:
    """`--init DIR ...`: copy each checkpoint's provided module prefixes into `model`.

    A checkpoint provides the prefixes recorded in its weights' metadata (`provides`, set by the run
    that wrote it, e.g. `vision,heads.mvm,logit_scale` for a vision pretraining run). A prefix that
    several checkpoints provide (the shared `logit_scale`) comes from the last `--init` naming it,
    with a warning. A missing / unexpected tensor or a shape mismatch raises BadInput naming the first
    such tensor (model order, then file order); everything is checked before any weight is copied.
    Returns {prefix: checkpoint dir}.
    """
    model_state = model.state_dict()
    owners: dict[str, str] = {}
    staged: dict[str, torch.Tensor] = {}
    for d in map(Path, dirs):
        ck = load(d, resume=False)
        provides = ck.provides or []
        _check_match(model_state, ck.weights, provides, d / MODEL)
        for prefix in provides:
            if prefix in owners:
                log.warning("init: `%s` is in both `%s` and `%s`; taking it from the later `%s`", prefix, owners[prefix], d, d)
            owners[prefix] = str(d)
        staged.update({k: v for k, v in ck.weights.items() if _under(k, provides)})
    _copy_into(model, staged)
    for prefix, d in sorted(owners.items()):
        log.info("init: `%s` from %s", prefix, d)
    return owners
