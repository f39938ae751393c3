"""Token buckets: budgeted sampling over data clusters (ch07 §7.6).

Each cluster k (a modality / task / difficulty slice of the data) has a capacity B_k tokens, a leak
rate r_k tokens per step, and a consumption u_k(t): the tokens drawn from it that have not leaked
back yet. Sampling follows

    p_k(t) ∝ max(0, B_k − u_k(t))^γ · q_k(difficulty, t)

where q_k comes from the schedule's current phase:

    q_k = share_k · task_mix[task_k] · gate(d_k ∈ difficulty range) · priority_k,
    share_k = (mix[m_k] / Σ mix) / n_{m_k}

(n_m = number of eligible clusters of modality m, so with equally full buckets and equal
priorities modality m gets exactly its mix share; a cluster without a modality, such as a probe
bucket, gets the share of an average cluster, 1/K; a cluster outside the difficulty range gets the
gate value `difficulty_outside`, 0 by default; without a `mix`, share_k = 1).

Clusters with q_k = 0 are switched off by the schedule; every other cluster keeps at least its
floor p_k^min (ch07 §7.6 "multi-objective fairness": cold tasks never starve), the rest of the
mass is shared in proportion. Priority buckets (safety / open-set probes) get a `priority` factor
> 1 and may carry a higher floor. γ sets how hard empty buckets are avoided ("补齐性").

Clock: u_k refers to `self.step`. `probabilities(step)` first leaks u_k by r_k per elapsed step
(u ← max(0, u − r·Δt)); `consume(counts)` then adds the tokens drawn at that step.
The config lives in the schedule file under `buckets` (docs/schedule.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stages.errors import BadInput


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    capacity: float  # B_k, tokens
    leak: float  # r_k, tokens leaking back per step
    modality: str | None = None  # matched against the phase's `mix` keys
    task: str | None = None  # matched against the phase's `task_mix` keys (dataset task_name)
    difficulty: float = 0.0  # in [0, 1], matched against the phase's difficulty range
    priority: float = 1.0  # multiplies q_k; > 1 for priority buckets
    p_min: float | None = None  # this bucket's floor; None = the config's p_min


@dataclass(frozen=True)
class BucketConfig:
    clusters: tuple[ClusterSpec, ...]
    gamma: float = 1.0  # exponent on the remaining tokens
    p_min: float = 0.0  # default floor p_k^min for every switched-on cluster
    difficulty_outside: float = 0.0  # q factor of a cluster outside the phase's difficulty range
    log_every: int = 100  # steps between rows of logs/buckets.jsonl

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clusters]

    def floor(self, cluster: ClusterSpec) -> float:
        return self.p_min if cluster.p_min is None else cluster.p_min


def parse_buckets(obj: dict, *, source: str, where: str = "buckets") -> BucketConfig:
    """Semantic checks on the (schema-valid) `buckets` object; errors name the JSON path."""

    def bad(path: str, message: str) -> BadInput:
        return BadInput(f"`{source}`: field `{path}` is invalid", caused_by=message)

    clusters = []
    seen: set[str] = set()
    for i, c in enumerate(obj["clusters"]):
        path = f"{where}.clusters[{i}]"
        if c["name"] in seen:
            raise bad(f"{path}.name", f"duplicate cluster name `{c['name']}`")
        seen.add(c["name"])
        spec = ClusterSpec(
            name=c["name"],
            capacity=float(c["capacity"]),
            leak=float(c.get("leak", 0.0)),
            modality=c.get("modality"),
            task=c.get("task"),
            difficulty=float(c.get("difficulty", 0.0)),
            priority=float(c.get("priority", 1.0)),
            p_min=None if c.get("p_min") is None else float(c["p_min"]),
        )
        for field, value, ok, rule in (
            ("capacity", spec.capacity, spec.capacity > 0, "> 0"),
            ("leak", spec.leak, spec.leak >= 0, ">= 0"),
            ("difficulty", spec.difficulty, 0.0 <= spec.difficulty <= 1.0, "in [0, 1]"),
            ("priority", spec.priority, spec.priority > 0, "> 0"),
            ("p_min", spec.p_min, spec.p_min is None or 0.0 <= spec.p_min < 1.0, "in [0, 1)"),
        ):
            if not ok or (value is not None and not math.isfinite(value)):
                raise bad(f"{path}.{field}", f"must be {rule}, got {value}")
        clusters.append(spec)
    config = BucketConfig(
        clusters=tuple(clusters),
        gamma=float(obj.get("gamma", 1.0)),
        p_min=float(obj.get("p_min", 0.0)),
        difficulty_outside=float(obj.get("difficulty_outside", 0.0)),
        log_every=int(obj.get("log_every", 100)),
    )
    if not config.gamma >= 0:
        raise bad(f"{where}.gamma", f"must be >= 0, got {config.gamma}")
    if not 0.0 <= config.p_min < 1.0:
        raise bad(f"{where}.p_min", f"must be in [0, 1), got {config.p_min}")
    if not 0.0 <= config.difficulty_outside <= 1.0:
        raise bad(f"{where}.difficulty_outside", f"must be in [0, 1], got {config.difficulty_outside}")
    if config.log_every < 1:
        raise bad(f"{where}.log_every", f"must be >= 1, got {config.log_every}")
    floors = sum(config.floor(c) for c in clusters)
    if floors > 1.0 + 1e-9:
        raise bad(f"{where}.p_min", f"the floors of all clusters sum to {floors:g} > 1")
    return config


def apply_floors(p: torch.Tensor, floor: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Raise every eligible p_k below its floor to the floor and rescale the others (water-filling).

    p: [K] a distribution over the eligible clusters (0 elsewhere); floor: [K]; Σ floor ≤ 1.
    Result: p'_k = floor_k on the clamped set S, p'_k = p_k (1 − Σ_S floor) / Σ_{∉S} p elsewhere,
    with S grown until no eligible p'_k is below its floor (at most K rounds).
    """
    out = p.clone()
    clamped = torch.zeros_like(eligible)
    for _ in range(p.shape[0]):
        below = eligible & ~clamped & (out < floor)
        if not bool(below.any()):
            break
        clamped |= below
        free = eligible & ~clamped
        mass = 1.0 - floor[clamped].sum()
        out = torch.where(clamped, floor, out)
        rest = p[free].sum()
        if float(rest) > 0.0:
            out[free] = p[free] / rest * mass
        else:  # nothing left to rescale: renormalise the floors themselves
            out = out / out.sum()
            break
    return out


class TokenBuckets:
    """State and sampling of the token buckets (ch07 §7.6). Deterministic given a torch.Generator."""

    def __init__(self, config: BucketConfig, schedule=None):
        """schedule: anything with `.at(step)` returning a PhaseState (mix, task_mix, difficulty, name)."""
        self.config = config
        self.schedule = schedule
        self.names = config.names
        k = len(config.clusters)
        self.capacity = torch.tensor([c.capacity for c in config.clusters], dtype=torch.float64)
        self.leak = torch.tensor([c.leak for c in config.clusters], dtype=torch.float64)
        self.floor = torch.tensor([config.floor(c) for c in config.clusters], dtype=torch.float64)
        self.used = torch.zeros(k, dtype=torch.float64)  # u_k(step)
        self.off = torch.zeros(k, dtype=torch.bool)  # clusters with no data: never sampled (see `switch_off`)
        self.consumed_total = torch.zeros(k, dtype=torch.float64)  # Σ tokens ever drawn
        self.step = 0

    # ------------------------------------------------------------------ dynamics

    def advance(self, step: int) -> None:
        """Leak r_k per elapsed step: u ← max(0, u − r (step − self.step))."""
        if step < self.step:
            raise ValueError(f"token buckets are at step {self.step}; cannot go back to {step}")
        if step > self.step:
            self.used = (self.used - self.leak * (step - self.step)).clamp_min(0.0)
            self.step = step

    def consume(self, counts) -> None:
        """Add tokens drawn at the current step: a [K] tensor/sequence or a {cluster name: tokens} dict."""
        if isinstance(counts, dict):
            unknown = [n for n in counts if n not in self.names]
            if unknown:
                raise ValueError(f"unknown bucket cluster(s) {unknown}; known: {self.names}")
            counts = [float(counts.get(n, 0.0)) for n in self.names]
        c = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
        if c.shape[0] != len(self.names) or bool((c < 0).any()):
            raise ValueError(f"consume expects {len(self.names)} non-negative counts, got {c.tolist()}")
        self.used += c
        self.consumed_total += c

    def switch_off(self, names) -> None:
        """Never sample these clusters (e.g. the dataset has no sample for them): q_k = 0 from now on.
        Derived from the data at start-up, so it is not part of the saved state."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"unknown bucket cluster(s) {unknown}; known: {self.names}")
        for n in names:
            self.off[self.names.index(n)] = True

    def quality(self, step: int) -> torch.Tensor:
        """q_k(difficulty, t) [K] from the schedule's phase at `step` (all ones without a schedule);
        0 for switched-off clusters."""
        clusters = self.config.clusters
        q = torch.tensor([c.priority for c in clusters], dtype=torch.float64).masked_fill(self.off, 0.0)
        if self.schedule is None:
            return q
        phase = self.schedule.at(step)
        lo, hi = phase.difficulty
        gate = torch.tensor(
            [1.0 if lo <= c.difficulty <= hi else self.config.difficulty_outside for c in clusters], dtype=torch.float64
        )
        task = torch.tensor(
            [phase.task_mix.get(c.task, 1.0) if c.task is not None else 1.0 for c in clusters], dtype=torch.float64
        )
        q = q * gate * task
        if phase.mix:
            share = torch.zeros_like(q)
            groups = {m: torch.tensor([c.modality == m for c in clusters]) & (q > 0) for m in phase.mix}
            total = sum(v for m, v in phase.mix.items() if bool(groups[m].any()))
            for m, value in phase.mix.items():
                if bool(groups[m].any()) and total > 0:
                    share[groups[m]] = value / total / int(groups[m].sum())
            # A cluster outside the mix (no modality, e.g. a probe bucket) weighs like an average cluster.
            share[torch.tensor([c.modality is None for c in clusters])] = 1.0 / len(clusters)
            q = q * share
        return q

    def probabilities(self, step: int) -> torch.Tensor:
        """p_k(step) [K] float64, summing to 1 (advances the leak clock to `step`)."""
        self.advance(step)
        q = self.quality(step)
        eligible = q > 0
        if not bool(eligible.any()):
            phase = self.schedule.at(step).name if self.schedule is not None else "?"
            raise BadInput(f"token buckets: phase `{phase}` switches every cluster off at step {step}")
        remaining = (self.capacity - self.used).clamp_min(0.0)
        raw = remaining.pow(self.config.gamma) * q
        raw = torch.where(eligible, raw, torch.zeros_like(raw))
        if float(raw.sum()) <= 0.0:  # every eligible bucket is empty: fall back on q alone
            raw = torch.where(eligible, q, torch.zeros_like(q))
        return apply_floors(raw / raw.sum(), self.floor, eligible)

    def sample(self, n: int, generator: torch.Generator | None = None, *, step: int | None = None) -> torch.Tensor:
        """n cluster indices [n] (int64) drawn with replacement from p(step or the current step)."""
        p = self.probabilities(self.step if step is None else step)
        return torch.multinomial(p, n, replacement=True, generator=generator)

    # ------------------------------------------------------------------ persistence and logs

    def state_dict(self) -> dict:
        """JSON-able (float64 values round-trip exactly through JSON)."""
        return {
            "names": list(self.names),
            "step": self.step,
            "used": self.used.tolist(),
            "consumed_total": self.consumed_total.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise BadInput(
                f"bucket state is for clusters {state['names']}, the schedule declares {self.names}",
                hint="resume with the schedule that produced the checkpoint",
            )
        self.step = int(state["step"])
        self.used = torch.tensor(state["used"], dtype=torch.float64)
        self.consumed_total = torch.tensor(state["consumed_total"], dtype=torch.float64)

    def log_row(self, step: int, *, phase: str | None = None) -> dict:
        """One line of `logs/buckets.jsonl` (schema `bucket-log`)."""
        p = self.probabilities(step).tolist()
        remaining = (self.capacity - self.used).clamp_min(0.0).tolist()
        return {
            "schema_version": 1,
            "step": int(step),
            "phase": phase if phase is not None else (self.schedule.at(step).name if self.schedule is not None else None),
            "buckets": [
                {
                    "name": name,
                    "capacity": cap,
                    "remaining": rem,
                    "used": used,
                    "consumed_total": total,
                    "p": prob,
                }
                for name, cap, rem, used, total, prob in zip(
                    self.names, self.capacity.tolist(), remaining, self.used.tolist(), self.consumed_total.tolist(), p
                )
            ],
        }
