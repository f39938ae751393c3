"""Episode-level faults: duplicated episodes, near-duplicates, and eval episodes leaked into train.

Copies are made of fault-free episodes only (so a copy's truth holds exactly one fault), and always
get an episode id that sorts after every original: a detector that keeps the first of a group and
flags the rest flags exactly the copies.

- duplicate_episode: the stream files byte for byte, a new episode id.
- near_duplicate_episode: every continuous value plus Gaussian noise of NEAR_DUP_NOISE × the
  column's standard deviation, every pixel ±1–2 levels of fresh noise, same timestamps, and half
  of the time a paraphrased instruction.
- eval_leak: an in-distribution eval episode's stream files byte for byte, under a new train id.
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.artifacts import read_json, write_json
from stages.data.raw import META, read_episode, write_episode
from stages.sim import faults as F
from stages.sim import instructions
from stages.sim.constraints import Constraint
from stages.sim.rig import SPEED_COLUMN

NEAR_DUP_NOISE = 0.01  # relative to each column's std: far below the spread between two episodes


@dataclass(frozen=True)
class CopyPlan:
    kind: str  # duplicate_episode | near_duplicate_episode | eval_leak
    source: str  # episode id copied
    new_id: str


def plan_copies(train_truth: dict[str, dict], eval_truth: dict[str, dict], fault_free: set[str], cfg: F.FaultConfig,
                first_index: int, rng: np.random.Generator) -> list[CopyPlan]:
    """Choose the copied episodes (fault-free ones, each copied at most once) and their new ids."""
    pool = sorted(e for e in train_truth if e in fault_free)
    rng.shuffle(pool)
    kinds: list[tuple[str, str]] = []
    for kind in (F.DUP_EPISODE, F.NEAR_DUP):
        count = math.ceil(cfg.rate(kind) * len(train_truth))
        kinds += [(kind, pool.pop()) for _ in range(min(count, len(pool)))]
    leak_pool = sorted(e for e, t in eval_truth.items() if e in fault_free and not t.get("open_set"))
    rng.shuffle(leak_pool)
    count = math.ceil(cfg.rate(F.EVAL_LEAK) * len(eval_truth))
    kinds += [(F.EVAL_LEAK, leak_pool.pop()) for _ in range(min(count, len(leak_pool)))]
    order = rng.permutation(len(kinds))  # new ids do not reveal the kind
    return [CopyPlan(kinds[j][0], kinds[j][1], f"ep_{first_index + i:05d}") for i, j in enumerate(order)]


def _rewrite_meta(episode_dir: Path, **changes) -> dict:
    meta = read_json(episode_dir / META, schema="raw-meta")
    meta.update(changes)
    write_json(episode_dir / META, meta, schema="raw-meta")
    return meta


def make_copy(plan: CopyPlan, train_root: Path, eval_root: Path | None, truth_of: dict, rng: np.random.Generator) -> dict:
    """Write the copy under `train_root`; return its truth entry."""
    src_root = eval_root if plan.kind == F.EVAL_LEAK else train_root
    src_dir, dst_dir = src_root / plan.source, train_root / plan.new_id
    truth = copy.deepcopy(truth_of)
    truth.update(split="train", open_set=False)
    fault: dict = {"kind": plan.kind, "stream": None, "column": None, "of": plan.source}
    if plan.kind in (F.DUP_EPISODE, F.EVAL_LEAK):
        shutil.copytree(src_dir, dst_dir)
        _rewrite_meta(dst_dir, episode_id=plan.new_id, split="train")
    else:
        episode = read_episode(src_dir, frames="load")
        episode.episode_id = plan.new_id
        for df in episode.streams.values():
            for col in df.columns[1:]:  # `t` stays
                x = df[col].to_numpy()
                noisy = x + rng.standard_normal(len(x)) * NEAR_DUP_NOISE * float(np.std(x))
                df[col] = np.abs(noisy) if col == SPEED_COLUMN else noisy  # a magnitude stays >= 0
        for cam in episode.cameras.values():
            noise = rng.integers(-2, 3, size=cam.frames.shape)
            cam.frames = np.clip(cam.frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        meta = dict(episode.meta, episode_id=plan.new_id)
        if rng.random() < 0.5:
            constraint = Constraint(truth["constraint"]["kind"], truth["constraint"]["value"]) if truth["constraint"] else None
            meta["instruction"] = instructions.compose(truth["task"], truth["language"], constraint, rng, avoid=meta["instruction"])
            fault["detail"] = {"paraphrased": True, "noise_rel": NEAR_DUP_NOISE}
        else:
            fault["detail"] = {"paraphrased": False, "noise_rel": NEAR_DUP_NOISE}
        truth["instruction"] = meta["instruction"]
        episode.meta = meta
        write_episode(train_root, episode)
    truth["faults"] = [fault]
    return truth
