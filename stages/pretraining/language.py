"""Language pretraining (ch07 §7.4): paraphrase-contrastive adaptation, constraints kept apart from their negation.

The backbone is either the small byte-level encoder trained from scratch (default) or a frozen
pretrained encoder (MiniLM) with LoRA and an adapter trained on top ("冻结主干仅训练适配层", §7.4
rule of thumb) — the recipe is the same, only the trainable parameters differ.

Per step, on the batch's instructions a_1..a_B:

- each a_i gets a paraphrase partner b_i: another instruction of the same *identity* drawn from
  the training split (task family + constraint clause; English and Chinese wordings of one command
  are paraphrases of each other — `stages.data.instructions`); a_i itself when it has none;
- every constraint instruction adds its synthesised hard negatives (the constraint negated by a
  minimal edit, the constraint removed) as extra candidates h_1..h_M;
- `paraphrase_nce` = symmetric InfoNCE of a against [b; h] and b against [a; h], with a
  multi-positive soft target: every candidate of the same identity is a positive (so duplicates
  and paraphrases in the batch are never pushed apart), every other one a negative — the negated
  variants always, the removed variants unless the row is itself the unconstrained command.

The contrast is local to each rank under DDP (hard negatives vary in number between ranks).

Held-out metrics: `para_R@1` / `para_MRR` — each distinct held-out instruction retrieves, among all
other distinct instructions of the dataset, one of the same identity; `task_R@1` — the same with
task-level relevance (any instruction of the same task family); `negation_acc` — the share of
constraint instructions closer (cosine) to their paraphrases than to their own negated variant;
`negation_cos` — the mean cosine between a constraint instruction and its negated variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.data.instructions import Identity, episode_identity, hard_negatives
from stages.data.lerobot import LeRobotDataset
from stages.data.loader import split_episodes
from stages.objectives import info_nce
from stages.pretraining import inverse_temperature
from stages.probes.metrics import cosine_similarity, retrieval_metrics

LOSS_WEIGHTS = {"paraphrase_nce": 1.0}


@dataclass
class LanguagePretrainConfig:
    hard_negatives: bool = True         # add negated / removed-constraint variants as candidates
    eval_max_texts: int = 512           # distinct instructions embedded per evaluation
    eval_batch: int = 128


class InstructionPool:
    """Distinct instructions of a dataset with their identities, per split."""

    def __init__(self, dataset: LeRobotDataset, heldout_fraction: float):
        self.identity: dict[str, Identity] = {}
        self.task: dict[str, str] = {}
        splits = split_episodes(dataset, heldout_fraction)
        self.split_texts: dict[str, list[str]] = {}
        for split, episodes in splits.items():
            texts = []
            for i in episodes:
                text = str(dataset.episodes["task"].iloc[int(i)])
                if text not in self.identity:
                    self.identity[text] = episode_identity(dataset.episode_meta(int(i)), dataset.task_name(int(i)), text)
                    self.task[text] = dataset.task_name(int(i))
                texts.append(text)
            self.split_texts[split] = sorted(set(texts))
        self.groups: dict[Identity, list[str]] = {}  # identity -> distinct training texts
        for text in self.split_texts["train"]:
            self.groups.setdefault(self.identity[text], []).append(text)
        self._negatives: dict[str, list] = {}

    def negatives(self, text: str) -> list:
        if text not in self._negatives:
            self._negatives[text] = hard_negatives(text, self.identity[text])
        return self._negatives[text]

    def partners(self, texts: list[str]) -> list[str]:
        """A different training text of the same identity for each text (itself when there is none)."""
        u = torch.rand(len(texts)).tolist()  # global RNG: seeded and restored by the engine
        out = []
        for text, r in zip(texts, u):  # B strings per step, not a loop over frames
            others = [t for t in self.groups.get(self.identity[text], []) if t != text]
            out.append(others[min(int(r * len(others)), len(others) - 1)] if others else text)
        return out


class LanguageRecipe:
    def __init__(self, cfg: LanguagePretrainConfig, pool: InstructionPool):
        self.cfg, self.pool = cfg, pool

    def losses(self, model, batch: dict, step: int, phase) -> dict[str, torch.Tensor]:
        anchors = list(batch["instruction"])
        partners = self.pool.partners(anchors)
        extra: dict[str, Identity] = {}
        if self.cfg.hard_negatives:
            for text in dict.fromkeys(anchors):
                for neg in self.pool.negatives(text):
                    extra.setdefault(neg.text, neg.identity)
        texts = anchors + partners + list(extra)
        z = model.encode_language(texts).z  # [2B + M, Z], one forward
        n = len(anchors)
        a, b, h = z[:n], z[n:2 * n], z[2 * n:]
        ids = _index([self.pool.identity[t] for t in anchors] + list(extra.values()))
        targets = (ids[:n, None] == torch.cat([ids[:n], ids[n:]])[None, :]).float().to(z.device)  # [B, B + M]
        scale = inverse_temperature(model, phase)
        loss = info_nce(a, b, scale, soft_targets=targets, a_all=torch.cat([a, h]), b_all=torch.cat([b, h]), offset=0)
        return {"paraphrase_nce": loss}

    def batch_size(self, batch: dict) -> int:
        return len(batch["instruction"])

    # ------------------------------------------------------------------ held-out progress

    @torch.no_grad()
    def _embed(self, model, texts: list[str]) -> np.ndarray:
        step = self.cfg.eval_batch
        return np.concatenate([model.encode_language(texts[i:i + step]).z.float().cpu().numpy() for i in range(0, len(texts), step)])

    @torch.no_grad()
    def evaluate(self, model, loader, step: int) -> dict[str, float]:
        pool, cap = self.pool, self.cfg.eval_max_texts
        queries = pool.split_texts["heldout"][:cap]
        if not queries:
            return {}
        others = [t for t in pool.split_texts["train"] if t not in set(queries)]
        candidates = queries + others[: max(0, cap - len(queries))]  # queries first: row i of z_c is query i
        z_c = self._embed(model, candidates)
        sim = cosine_similarity(z_c[: len(queries)], z_c)  # [Q, C]
        exclude = np.eye(len(queries), len(candidates), dtype=bool)  # a query never retrieves itself
        ids = _index([pool.identity[t] for t in candidates]).numpy()
        tasks = np.array([pool.task[t] for t in candidates])
        q = len(queries)
        para = retrieval_metrics(sim, ids[:q, None] == ids[None, :], ks=(1, 5), exclude=exclude)
        task = retrieval_metrics(sim, tasks[:q, None] == tasks[None, :], ks=(1,), exclude=exclude)
        out = {"para_R@1": para["R@1"], "para_R@5": para["R@5"], "para_MRR": para["MRR"], "para_queries": float(para["queries"]),
               "task_R@1": task["R@1"]}
        out.update(self._negation(model, candidates, z_c, ids))
        return out

    def _negation(self, model, candidates: list[str], z_c: np.ndarray, ids: np.ndarray) -> dict[str, float]:
        """Constraint instructions vs their own negated variant (the §7.10 item 5 failure mode)."""
        rows, negated = [], []
        for i, text in enumerate(candidates):
            neg = [h.text for h in self.pool.negatives(text) if h.kind == "negated"]
            if neg:
                rows.append(i)
                negated.append(neg[0])
        if not rows:
            return {}
        unit = z_c / np.maximum(np.linalg.norm(z_c, axis=1, keepdims=True), 1e-12)
        z_neg = self._embed(model, negated)
        z_neg = z_neg / np.maximum(np.linalg.norm(z_neg, axis=1, keepdims=True), 1e-12)
        neg_cos = (unit[rows] * z_neg).sum(axis=1)  # [R]
        mates = (ids[rows, None] == ids[None, :]) & (np.arange(len(candidates))[None, :] != np.array(rows)[:, None])  # [R, C]
        has = mates.any(axis=1)
        out = {"negation_cos": float(neg_cos.mean())}
        if has.any():
            pos_cos = (unit[rows] @ unit.T * mates).sum(axis=1)[has] / mates.sum(axis=1)[has]  # mean cosine to the paraphrases
            out["negation_acc"] = float((pos_cos > neg_cos[has]).mean())
        return out


def _index(identities: list[Identity]) -> torch.Tensor:
    """Identities -> int ids [N] (equal identities, equal ids)."""
    table: dict[Identity, int] = {}
    return torch.tensor([table.setdefault(i, len(table)) for i in identities], dtype=torch.long)
