"""The data side of the token buckets (ch07 §7.6): difficulty, cluster membership, routing.

A bucket cluster k of the schedule (`buckets.clusters[k]`: modality, task, difficulty) becomes here

- a set of *training sample rows* it draws from (`members[k]`): the rows of its task (all tasks when
  it names none) whose difficulty level is the cluster's (see below); a cluster without a modality
  label is a *probe* bucket (ch07 §7.6 "关键安全/开集 Probe 的桶给优先级") and draws from the rows
  selected by `probe_rows` (default: instructions with a constraint clause — the safety probe);
- the objectives its samples *serve* (`serves[k]`, bool over V, L, A): a sample drawn from a
  `vision` cluster spends its budget on vision — the intra-modal vision terms and the cross-modal
  terms that involve V — and likewise for `language` and `action`; a probe sample serves every term.

Difficulty of the demo data (ch07 §7.5 "难度维度 … 动作曲率"): the curvature of the sample's action
chunk, κ = mean over the chunk of ‖a_{t+1} − a_t‖₂ in normalised action units (how much the command
turns or changes within the H steps the sample trains on; differences never cross an episode end or
an invalid frame), mapped to [0, 1] as its percentile rank among the training samples, so
difficulty 0.5 is the median chunk. The clusters of one (modality, task) group split the rows by
the nearest cluster difficulty (a tie goes to the lower level): with levels 0.25 (easy) and 0.75
(hard) a row of difficulty ≤ 0.5 is easy, the rest hard — half of the data each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from stages.cleaning.constraints import find_constraints
from stages.data import lerobot_format as fmt
from stages.data.loader import Loader
from stages.errors import BadInput
from stages.training.buckets import BucketConfig

log = logging.getLogger("vla")

MODALITIES = ("vision", "language", "action")  # column order of `serves` (V, L, A)
PROBE_ROWS = ("constraint", "all")


@dataclass(frozen=True)
class SampleTable:
    """Per training sample (the train loader's `samples`, in order): what cluster membership reads."""

    rows: np.ndarray  # int64 [S] dataset rows
    task: np.ndarray  # object [S] task name
    difficulty: np.ndarray  # float64 [S] in (0, 1): percentile rank of the chunk curvature
    curvature: np.ndarray  # float64 [S] κ, normalised action units per step
    constraint: np.ndarray  # bool [S] the instruction carries a constraint clause


def constraint_flags(loader: Loader) -> np.ndarray:
    """bool [num_episodes]: the episode's instruction has a constraint clause (meta `constraints`
    written by `vla clean`, else parsed from the text)."""
    ds = loader.dataset
    texts = ds.episodes["task"].tolist()
    flags = np.zeros(ds.num_episodes, dtype=bool)
    for i in range(ds.num_episodes):  # one look per episode, not per frame
        meta = ds.episode_meta(i)
        flags[i] = bool(meta["constraints"]) if "constraints" in meta else bool(find_constraints(str(texts[i])))
    return flags


def chunk_curvature(loader: Loader) -> np.ndarray:
    """κ [S] of every training sample's action chunk (module doc), vectorised over the split."""
    ds, cfg = loader.dataset, loader.cfg
    stats = loader.norm_stats()[cfg.action_key]
    action = (ds.column(cfg.action_key).astype(np.float64) - np.asarray(stats["mean"])) / np.asarray(stats["std"])  # [N, Da]
    episode = ds.column("episode_index")
    valid = ds.column(fmt.VALID).astype(bool) if fmt.VALID in ds.features else np.ones(len(episode), bool)
    step = np.linalg.norm(np.diff(action, axis=0), axis=1)  # [N-1]: ‖a_{t+1} − a_t‖
    ok = (episode[1:] == episode[:-1]) & valid[1:] & valid[:-1]
    total = np.concatenate([[0.0], np.cumsum(np.where(ok, step, 0.0))])  # [N] prefix sums over differences
    count = np.concatenate([[0], np.cumsum(ok)])
    rows = loader.samples
    lengths = ds.episodes["length"].to_numpy()
    ends = np.repeat(ds.episodes["from_index"].to_numpy() + lengths, lengths)[rows]  # exclusive
    hi = np.minimum(rows + cfg.chunk - 1, ends - 1)  # differences t in [row, hi) stay inside the chunk
    n = count[hi] - count[rows]
    return np.where(n > 0, (total[hi] - total[rows]) / np.maximum(n, 1), 0.0)


def sample_table(loader: Loader) -> SampleTable:
    ds = loader.dataset
    rows = loader.samples
    episode = ds.column("episode_index")[rows]
    names = np.array([ds.task_name(i) for i in range(ds.num_episodes)], dtype=object)
    kappa = chunk_curvature(loader)
    difficulty = (rankdata(kappa, method="average") - 0.5) / len(kappa)  # percentile rank in (0, 1)
    return SampleTable(rows=rows, task=names[episode], difficulty=difficulty, curvature=kappa,
                       constraint=constraint_flags(loader)[episode])


def cluster_members(config: BucketConfig, table: SampleTable, *, probe_rows: str = "constraint",
                    source: str = "schedule") -> list[np.ndarray]:
    """Indices into the sample table [n_k] for every cluster (module doc); BadInput naming the
    cluster's JSON path when it names an unknown modality or task. A cluster that draws from no
    sample gets an empty array and a warning: switch it off in the buckets (`TokenBuckets.switch_off`)."""
    if probe_rows not in PROBE_ROWS:
        raise BadInput(f"unknown probe rows `{probe_rows}`", caused_by=f"known: {', '.join(PROBE_ROWS)}")
    known_tasks = sorted(set(table.task.tolist()))
    groups: dict[tuple, list[float]] = {}
    for i, c in enumerate(config.clusters):
        path = f"`{source}`: field `buckets.clusters[{i}]"
        if c.modality is not None and c.modality not in MODALITIES:
            raise BadInput(f"{path}.modality` is invalid",
                           caused_by=f"the align recipe serves modalities {', '.join(MODALITIES)}, not `{c.modality}`")
        if c.task is not None and c.task not in known_tasks:
            raise BadInput(f"{path}.task` is invalid", caused_by=f"the dataset has no task `{c.task}` (tasks: {', '.join(known_tasks)})")
        groups.setdefault((c.modality, c.task), []).append(c.difficulty)
    members = []
    for i, c in enumerate(config.clusters):
        mask = np.ones(len(table.rows), dtype=bool) if c.task is None else table.task == c.task
        if c.modality is None and probe_rows == "constraint":
            mask &= table.constraint
        levels = np.array(sorted(set(groups[(c.modality, c.task)])))  # [L] the group's difficulty levels
        nearest = levels[np.abs(table.difficulty[:, None] - levels[None, :]).argmin(axis=1)]  # ties: the lower level
        mask &= nearest == c.difficulty
        if not mask.any():  # e.g. a constraint-probe bucket on data without constraint instructions
            probe = ", constraint rows" if c.modality is None and probe_rows == "constraint" else ""
            log.warning("%s: bucket cluster `%s` (buckets.clusters[%d]) draws from no training sample (task %s, difficulty "
                        "level %g%s): it is switched off", source, c.name, i, c.task or "any", c.difficulty, probe)
        members.append(np.flatnonzero(mask))
    return members


def serves(config: BucketConfig) -> np.ndarray:
    """bool [K, 3]: the modalities (V, L, A) whose objectives a sample of cluster k serves."""
    out = np.zeros((len(config.clusters), len(MODALITIES)), dtype=bool)
    for k, c in enumerate(config.clusters):
        if c.modality is None:
            out[k] = True  # a probe sample is a full (v, l, a) triple
        else:
            out[k, MODALITIES.index(c.modality)] = True
    return out
