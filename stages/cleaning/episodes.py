"""Episode- and dataset-level rules: short episodes, rate mismatch, exact and near duplicates, eval
leaks (ch05 §5.7 gotcha 7: 数据泄露/重复 → 指纹/哈希去重) and task imbalance.

The dataset rules run after every episode has been through its own rules; they see only
`EpisodeResult`s and fingerprints (no stream data), so memory stays bounded by one episode.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from stages.cleaning.base import EpisodeResult, EpisodeWork, Finding, Rule, rule
from stages.data.fingerprints import EpisodeFingerprint, Match, MatchConfig, cross_matches, near_duplicates


@dataclass
class DatasetWork:
    results: dict[str, EpisodeResult]  # by episode id, in input order
    fingerprints: list[EpisodeFingerprint]  # same order as `results`
    eval_fingerprints: list[EpisodeFingerprint]
    match: MatchConfig
    findings: list[Finding] = field(default_factory=list)  # dataset-level (no single episode)
    matches: list[Match] = field(default_factory=list)  # every accepted pair, for the report


# ----------------------------------------------------------------------------- episode scope


@dataclass(frozen=True)
class ShortParams:
    min_duration_s: float = 0.5  # the action stream must span at least this long
    min_rows: int = 8  # ... and every stream must keep at least this many rows


@rule("episode.short", kind="short_episode", actions=("drop", "flag"), params=ShortParams)
def short(work: EpisodeWork, rule: Rule) -> None:
    """Episodes too short to learn from (after the time-domain fixes)."""
    p = rule.params
    action = work.streams.get("action")
    duration = float(np.ptp(action.t)) if action is not None and len(action) else 0.0
    fewest = min(len(s) for s in work.all_streams().values())
    if duration < p.min_duration_s or fewest < p.min_rows:
        work.report(rule, detail={"duration_s": round(duration, 4), "fewest_rows": int(fewest)})
        if rule.action == "drop":
            work.drop(rule, f"{duration:.3f} s of action, {fewest} rows in the shortest stream")


# ----------------------------------------------------------------------------- dataset scope


@dataclass(frozen=True)
class RateParams:
    tolerance: float = 0.05  # relative deviation of a stream's rate from its median over the dataset


@rule("timestamps.rate", kind="rate_mismatch", actions=("flag", "drop"), params=RateParams, scope="dataset")
def rate(data: DatasetWork, rule: Rule) -> None:
    """A stream whose measured rate differs from the same stream's median rate over the dataset."""
    rates: dict[str, list[float]] = {}
    for res in data.results.values():
        for name, hz in res.notes.get("rates", {}).items():
            rates.setdefault(name, []).append(hz)
    typical = {name: float(np.median(v)) for name, v in rates.items()}
    for res in data.results.values():
        for name, hz in res.notes.get("rates", {}).items():
            ref = typical[name]
            if ref > 0 and abs(hz - ref) > rule.params.tolerance * ref:
                res.findings.append(Finding(rule.id, rule.kind, rule.severity, rule.action, stream=name,
                                            detail={"rate_hz": round(hz, 4), "dataset_hz": round(ref, 4)}))
                if rule.action == "drop":
                    res.drop(rule, f"`{name}` runs at {hz:.2f} Hz, the dataset at {ref:.2f} Hz")


@dataclass(frozen=True)
class LeakParams:
    pass


@rule("dedupe.eval_leak", kind="eval_leak", actions=("drop", "flag"), severity="error", params=LeakParams, scope="dataset")
def eval_leak(data: DatasetWork, rule: Rule) -> None:
    """Train episodes that are copies (exact or near) of `--eval` episodes, whatever their name."""
    for m in sorted(cross_matches(data.fingerprints, data.eval_fingerprints, data.match), key=lambda m: (m.b, m.trajectory)):
        res = data.results[m.b]
        if any(f.kind == rule.kind for f in res.findings):
            continue  # one finding per leaked episode: its closest eval episode
        data.matches.append(m)
        res.report(rule, of=m.a, detail=m.to_json())
        if rule.action == "drop":
            res.drop(rule, f"copy of eval episode {m.a}")


def _copies(data: DatasetWork, *, exact: bool) -> dict[str, Match]:
    """For every episode that copies an earlier one: the match to the earliest such episode.

    "Earlier" is input order (episode ids sorted), so of a group of copies the first is kept as the
    original and the others are flagged; episodes already flagged as eval leaks take no part.
    """
    leaked = {res.episode_id for res in data.results.values() if any(f.kind == "eval_leak" for f in res.findings)}
    order = {fp.episode_id: i for i, fp in enumerate(data.fingerprints)}
    fps = [fp for fp in data.fingerprints if fp.episode_id not in leaked]
    best: dict[str, Match] = {}
    for m in near_duplicates(fps, data.match):
        if m.exact != exact:
            continue
        if m.b not in best or order[m.a] < order[best[m.b].a]:
            best[m.b] = m
    return best


@dataclass(frozen=True)
class DuplicateParams:
    pass


@rule("dedupe.exact", kind="duplicate_episode", actions=("drop", "flag"), params=DuplicateParams, scope="dataset")
def exact_duplicates(data: DatasetWork, rule: Rule) -> None:
    """Episodes whose sensor content is identical to an earlier episode's (renamed or re-logged copies)."""
    for b, m in sorted(_copies(data, exact=True).items()):
        data.matches.append(m)
        data.results[b].report(rule, of=m.a, detail=m.to_json())
        if rule.action == "drop":
            data.results[b].drop(rule, f"identical to {m.a}")


@rule("dedupe.near", kind="near_duplicate_episode", actions=("drop", "flag"), params=DuplicateParams, scope="dataset")
def near_duplicate(data: DatasetWork, rule: Rule) -> None:
    """Episodes whose frames and trajectories are within the `match` thresholds of an earlier
    episode's without being identical (a copy with noise, re-encoded frames, a shifted clock)."""
    exact = {b for b, res in data.results.items() if any(f.kind == "duplicate_episode" for f in res.findings)}
    for b, m in sorted(_copies(data, exact=False).items()):
        if b in exact:
            continue
        data.matches.append(m)
        data.results[b].report(rule, of=m.a, detail=m.to_json())
        if rule.action == "drop":
            data.results[b].drop(rule, f"near duplicate of {m.a}")


@dataclass(frozen=True)
class ImbalanceParams:
    max_ratio: float = 3.0  # warn when the largest task has more than this many times the smallest's episodes


@rule("dataset.task_imbalance", kind="task_imbalance", actions=("flag",), params=ImbalanceParams, scope="dataset")
def task_imbalance(data: DatasetWork, rule: Rule) -> None:
    """A warning when kept episodes are spread very unevenly over tasks (meta.json `task`, else the
    instruction): token buckets (ch07 §7.6) can rebalance, but only what exists."""
    counts = task_counts(data.results.values())
    if len(counts) < 2:
        return
    most, least = max(counts.values()), min(counts.values())
    if most > rule.params.max_ratio * least:
        data.findings.append(Finding(rule.id, rule.kind, rule.severity, rule.action,
                                     detail={"counts": dict(sorted(counts.items())), "ratio": round(most / least, 3)}))


def task_counts(results) -> dict[str, int]:
    """Kept episodes per task."""
    return dict(Counter(str(r.meta.get("task") or r.meta.get("instruction") or "?") for r in results if not r.dropped))
