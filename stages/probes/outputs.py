"""The model's outputs on the probe's episodes, computed once and shared by the checks.

- `ProbeContext.outputs(ep)`: every frame of one episode -> vision z, action-chunk z, the policy's
  chunk (mean, log-std) and, for each camera shift δ (frames) the latency check asks for, the
  policy's first step with the camera window taken δ frames earlier (proprio and text unchanged).
- `ProbeContext.samples()`: up to `max_samples` frames spread evenly over the held-out episodes
  with their vision / language / action z, for the retrieval-type checks and the health metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.probes.context import (ACTION_KEY, Episode, EpisodeArrays, ProbeConfig, ProbeData, Runner, chunks, load_model,
                                   pick_device, windows)
from stages.progress import NullReporter, Reporter

log = logging.getLogger("vla")


@dataclass
class EpisodeOutputs:
    z_v: np.ndarray  # [T, Z] vision z of the window ending at each frame
    z_a: np.ndarray  # [T, Z] action z of the teacher chunk starting at each frame
    mean: np.ndarray  # [T, H, Da] policy mean (normalised units), aligned inputs
    log_std: np.ndarray  # [T, H, Da]
    teacher: np.ndarray  # [T, H, Da] recorded action chunks (normalised): the (QP-projected) teacher
    teacher_valid: np.ndarray  # bool [T, H]
    first_step: dict[int, np.ndarray] = field(default_factory=dict)  # camera shift (frames) -> [T, Da] step-0 mean


@dataclass
class Samples:
    """Frames spread over the held-out episodes; row i of every array is one sample."""

    episodes: list[Episode]
    episode: np.ndarray  # int [N]: position in `episodes`
    frame: np.ndarray  # int [N]: frame inside that episode
    task: np.ndarray  # str [N]
    instruction: list[str]
    z_v: np.ndarray  # [N, Z]
    z_l: np.ndarray  # [N, Z]
    z_a: np.ndarray  # [N, Z]

    def __len__(self) -> int:
        return len(self.frame)


def spread(episodes: list[Episode], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(episode position, frame) pairs: about `limit` frames spread evenly over the episodes' time lines."""
    lengths = np.array([e.length for e in episodes])
    total = int(lengths.sum())
    flat = np.unique(np.linspace(0, total - 1, min(limit, total)).round().astype(np.int64))
    starts = np.cumsum(lengths) - lengths
    which = np.searchsorted(starts, flat, side="right") - 1
    return which, flat - starts[which]


class ProbeContext:
    """Model + data + shared outputs for one probe run."""

    def __init__(self, ckpt: Path, data: Path, eval_dir: Path | None, config: ProbeConfig,
                 reporter: Reporter = NullReporter()):
        self.config = config
        self.reporter = reporter
        self.device = pick_device(config.device)
        self.model, self.checkpoint = load_model(ckpt, self.device)
        self.data = ProbeData(data, eval_dir, self.model, config, reporter)
        self.runner = Runner(self.model, self.device, config.batch_size, config.history_stride)
        self.rng_seed = config.seed
        self.shifts: set[int] = {0}
        self._outputs: dict[tuple[str, int], EpisodeOutputs] = {}
        self._samples: Samples | None = None
        self.timing: dict[str, float] = {}

    @property
    def fps(self) -> float:
        return self.data.fps

    def rng(self, purpose: int) -> np.random.Generator:
        """A generator per purpose, so one check's draws never shift another's."""
        return np.random.default_rng([self.rng_seed, purpose])

    # ------------------------------------------------------------------ per-episode outputs

    def outputs(self, ep: Episode) -> EpisodeOutputs:
        key = (ep.source, ep.index)
        if key not in self._outputs:
            t0 = time.perf_counter()
            self._outputs[key] = self._compute(ep, self.data.arrays(ep))
            self.timing["episode_outputs_s"] = self.timing.get("episode_outputs_s", 0.0) + time.perf_counter() - t0
        return self._outputs[key]

    def _compute(self, ep: Episode, arr: EpisodeArrays) -> EpisodeOutputs:
        r = self.runner
        t = np.arange(ep.length)
        vis = r.vision(windows(arr.frames, t, r.history, r.stride))  # tokens [T, N, D]
        teacher, teacher_valid = chunks(arr.action, arr.valid, t, r.horizon)  # [T, H, Da], [T, H]
        fused = r.fuse(vis, t, [ep.instruction] * ep.length)  # [T, D]: one text per episode
        mean, log_std = r.head(fused, arr.state)
        out = EpisodeOutputs(z_v=vis.z.cpu().numpy(), z_a=r.action_z(teacher, arr.state, teacher_valid), mean=mean,
                             log_std=log_std, teacher=teacher, teacher_valid=teacher_valid)
        out.first_step[0] = mean[:, 0, :]
        for shift in sorted(self.shifts - {0}):
            # the camera lags (shift > 0) or leads (shift < 0) the proprio clock by `shift` frames; the text is the
            # episode's own, so the fused context of the shifted window is the unshifted one at t − shift
            source = torch.as_tensor(np.clip(t - shift, 0, ep.length - 1))
            m, _ = r.head(fused[source], arr.state)
            out.first_step[shift] = m[:, 0, :]
        return out

    def first_step(self, ep: Episode, shift: int = 0) -> np.ndarray:
        """Policy step-0 mean [T, Da] (normalised) with the camera shifted by `shift` frames."""
        if shift not in self.shifts:  # a check that did not declare its shift in `prepare`: recompute this episode
            self.shifts.add(shift)
            self._outputs.pop((ep.source, ep.index), None)
        out = self.outputs(ep)
        if shift not in out.first_step:
            self._outputs.pop((ep.source, ep.index))
            out = self.outputs(ep)
        return out.first_step[shift]

    def student_actions(self, ep: Episode, shift: int = 0) -> np.ndarray:
        """The executed command at each frame (policy step 0, receding horizon) in robot units [T, Da]."""
        return self.data.denormalise(ACTION_KEY, self.first_step(ep, shift))

    # ------------------------------------------------------------------ samples

    def samples(self) -> Samples:
        if self._samples is None:
            t0 = time.perf_counter()
            self._samples = self.sample_set(self.data.heldout, self.config.max_samples)
            self.timing["samples_s"] = time.perf_counter() - t0
        return self._samples

    def sample_set(self, episodes: list[Episode], limit: int) -> Samples:
        which, frame = spread(episodes, limit)
        z_v, z_a = [], []
        for k in np.unique(which):
            ep, rows = episodes[k], frame[which == k]
            arr = self.data.arrays(ep)
            z_v.append(self.runner.vision(windows(arr.frames, rows, self.runner.history, self.runner.stride)).z.cpu().numpy())
            act, valid = chunks(arr.action, arr.valid, rows, self.runner.horizon)
            z_a.append(self.runner.action_z(act, arr.state[rows], valid))
        instruction = [episodes[k].instruction for k in which]
        return Samples(episodes=episodes, episode=which, frame=frame, task=np.array([episodes[k].task for k in which]),
                       instruction=instruction, z_v=np.concatenate(z_v), z_l=self.runner.language_z(instruction),
                       z_a=np.concatenate(z_a))

    def sample_windows(self, samples: Samples, index: np.ndarray | None = None) -> torch.Tensor:
        """uint8 windows [n, h, 3, H, W] of the chosen samples (all when `index` is None), in `index` order."""
        index = np.arange(len(samples)) if index is None else np.asarray(index)
        out = None
        for k in np.unique(samples.episode[index]):
            pos = np.flatnonzero(samples.episode[index] == k)
            arr = self.data.arrays(samples.episodes[k])
            w = windows(arr.frames, samples.frame[index[pos]], self.runner.history, self.runner.stride)
            if out is None:
                out = torch.empty((len(index),) + tuple(w.shape[1:]), dtype=w.dtype)
            out[torch.from_numpy(pos)] = w
        return out

    # ------------------------------------------------------------------ prototypes

    def task_prototypes(self) -> tuple[list[str], np.ndarray]:
        """(trained task names, [K, Z] language prototypes): the mean normalised language z of each
        task's distinct training instructions (CLIP-style zero-shot classes, ch07 §7.2 energy score)."""
        by_task: dict[str, list[str]] = {}
        for ep in self.data.train:
            by_task.setdefault(ep.task, [])
            if ep.instruction not in by_task[ep.task]:
                by_task[ep.task].append(ep.instruction)
        names = sorted(by_task)
        protos = []
        for name in names:
            z = self.runner.language_z(by_task[name])
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            protos.append(z.mean(axis=0))
        return names, np.stack(protos)
