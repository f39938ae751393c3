"""Held-out cross-modal retrieval with task-level relevance, and the InfoNCE MI bound (ch05 §5.6, §5.8).

Which samples. The held-out episodes of the dataset (split meta, else the loader's hashed
`heldout_fraction`; never trained on — the training buckets draw only from the train split), and in
each of them `frames_per_episode` sample frames evenly spaced over the episode (fixed across
evaluations). Each sample gives a vision query/candidate (its frame window), an action one (its
action chunk + proprio state) and the text of its episode's instruction.

Queries and galleries (N samples, U distinct held-out instructions):

| direction | queries | gallery |
|-----------|---------|---------|
| v2l       | N frame windows           | U instructions |
| l2v       | U instructions            | N frame windows |
| l2a       | U instructions            | N action chunks |
| a2l       | N action chunks           | U instructions |
| v2a       | N frame windows           | N action chunks |

Relevance is by task: a candidate is relevant to a query when both come from episodes of the same
task (the dataset's task_name, e.g. "reach"; an instruction's task is its episode's). Scores are
cosine similarities of the z embeddings. Per direction: R@1/5/10, MRR (`stages.probes.metrics`, ties
counted pessimistically) and the chance level of R@1 for that query/gallery (`chance_r1`: the expected
R@1 of a random ranking, ≈ the share of the gallery that is relevant — about 1/8 with eight
balanced tasks). `mi_vl`, `mi_la`, `mi_va`: log N − L_InfoNCE of the N paired samples at the
stage's current temperature, a lower bound on the mutual information in nats (ch05 §5.6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stages.data.loader import Loader
from stages.probes.metrics import chance_recall, cosine_similarity, info_nce_bound, retrieval_metrics

DIRECTIONS = ("v2l", "l2v", "l2a", "a2l", "v2a")


@dataclass
class RetrievalConfig:
    frames_per_episode: int = 16  # evenly spaced sample frames per held-out episode
    batch: int = 64  # samples per forward pass


@dataclass
class HeldoutSet:
    rows: np.ndarray  # int64 [N] dataset rows
    tasks: np.ndarray  # object [N] task name per sample
    texts: list[str]  # [U] distinct instructions
    text_of: np.ndarray  # int64 [N] index into `texts` per sample
    text_tasks: np.ndarray  # object [U]


def heldout_set(loader: Loader, cfg: RetrievalConfig) -> HeldoutSet:
    """The evaluation samples of a held-out loader (module doc)."""
    ds = loader.dataset
    samples = loader.samples  # [S] held-out rows that may be sampled (weight > 0)
    episode = ds.column("episode_index")[samples]
    picked = []
    for e in np.unique(episode):  # one slice per held-out episode
        rows = samples[episode == e]
        picked.append(rows[np.unique(np.linspace(0, len(rows) - 1, cfg.frames_per_episode).round().astype(np.int64))])
    rows = np.concatenate(picked)
    ep = ds.column("episode_index")[rows]
    names = np.array([ds.task_name(i) for i in range(ds.num_episodes)], dtype=object)
    text_all = np.array(ds.episodes["task"].tolist(), dtype=object)[ep]
    texts, text_of = np.unique(text_all.astype(str), return_inverse=True)
    text_tasks = np.empty(len(texts), dtype=object)
    text_tasks[text_of] = names[ep]
    return HeldoutSet(rows=rows, tasks=names[ep], texts=texts.tolist(), text_of=text_of.astype(np.int64), text_tasks=text_tasks)


@torch.no_grad()
def embed(model, loader: Loader, held: HeldoutSet, cfg: RetrievalConfig, device: torch.device,
          prepare: Callable[[dict], dict] | None = None) -> dict[str, np.ndarray]:
    """{"v": [N, Z], "a": [N, Z], "l": [U, Z]} (float32, not normalised). `prepare` maps a loader batch
    to the model's inputs (e.g. a fine-tuning run re-normalises state and action to the model's stats)."""
    zv, za = [], []
    for i in range(0, len(held.rows), cfg.batch):
        rows = held.rows[i:i + cfg.batch]
        batch = loader.batch_of(rows, np.ones(len(rows), dtype=np.int64))
        if prepare is not None:
            batch = prepare(batch)
        frames = batch["frames"].to(device)
        valid = batch["action_valid"].to(device)
        action = torch.nan_to_num(batch["action"].to(device)).masked_fill(~valid[..., None], 0.0)
        zv.append(model.encode_vision(frames).z.float().cpu())
        za.append(model.encode_action(action, batch["state"].to(device), valid).z.float().cpu())
    zl = [model.encode_language(held.texts[i:i + cfg.batch]).z.float().cpu() for i in range(0, len(held.texts), cfg.batch)]
    return {"v": torch.cat(zv).numpy(), "a": torch.cat(za).numpy(), "l": torch.cat(zl).numpy()}


def report(z: dict[str, np.ndarray], held: HeldoutSet, logit_scale: float) -> dict[str, float]:
    """R@1/5/10, MRR, chance R@1 per direction and the MI bounds (module doc)."""
    row_text = held.tasks[:, None] == held.text_tasks[None, :]  # [N, U] relevance by task
    row_row = held.tasks[:, None] == held.tasks[None, :]  # [N, N]
    pairs = {
        "v2l": (z["v"], z["l"], row_text),
        "l2v": (z["l"], z["v"], row_text.T),
        "l2a": (z["l"], z["a"], row_text.T),
        "a2l": (z["a"], z["l"], row_text),
        "v2a": (z["v"], z["a"], row_row),
    }
    out: dict[str, float] = {}
    for name, (q, g, relevant) in pairs.items():
        r = retrieval_metrics(cosine_similarity(q, g), relevant)
        out.update({f"{name}_r1": r["R@1"], f"{name}_r5": r["R@5"], f"{name}_r10": r["R@10"], f"{name}_mrr": r["MRR"],
                    f"{name}_chance_r1": chance_recall(relevant, 1)})
    zl_rows = z["l"][held.text_of]  # [N, Z] each sample's own instruction
    for name, a, b in (("vl", z["v"], zl_rows), ("la", zl_rows, z["a"]), ("va", z["v"], z["a"])):
        out[f"mi_{name}"] = info_nce_bound(a, b, logit_scale)["mi_bound"]
    out["log_n"] = float(np.log(len(held.rows)))
    out["heldout_samples"] = float(len(held.rows))
    out["heldout_texts"] = float(len(held.texts))
    return out
