"""Numbers the report derives from the training logs (pure functions over validated rows).

- phase spans from `logs/metrics.jsonl` (a train row at step s summarises steps (s − window, s]);
- per-loss series (losses, effective weights) aligned on the logged steps, None where a term is absent;
- gradient statistics of `logs/gradients.jsonl` (ch07 §7.8): per-loss norms, pairwise cosines, the
  share of conflicting pairs (cos < 0) and the PCGrad hit rate;
- token-bucket series of `logs/buckets.jsonl` (ch07 §7.6): p_k, remaining tokens, consumption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.report.plotting import finite


def phase_spans(rows: Sequence[dict], *, schedule: dict | None = None) -> list[tuple[str, float, float]]:
    """[(phase, start, end)] in steps, in order; runs of rows with the same `phase` form one span.

    Rows give the phases that actually ran (early exits included); without rows, the schedule's own
    [start, end) bounds are used.
    """
    spans: list[list] = []
    for row in rows:
        step, phase = row["step"], row.get("phase") or "main"
        start = step - row.get("window", 1) if row.get("kind", "train") == "train" else step
        if spans and spans[-1][0] == phase:
            spans[-1][2] = step
        else:
            if spans:
                spans[-1][2] = max(spans[-1][2], start)
            spans.append([phase, max(0, start), step])
    if not spans and schedule is not None:
        return [(p["name"], float(p["start"]), float(p["end"])) for p in schedule.get("phases", [])]
    return [(name, float(a), float(b)) for name, a, b in spans]


def keyed_series(rows: Sequence[dict], field: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps [R], {key: values [R]}) of the dict-valued `field` of each row (NaN where a key is absent)."""
    keys = sorted({k for r in rows for k in (r.get(field) or {})})
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    return steps, {k: finite([(r.get(field) or {}).get(k) for r in rows]) for k in keys}


def scalar_series(rows: Sequence[dict], field: str) -> np.ndarray:
    return finite([r.get(field) for r in rows])


@dataclass
class GradientStats:
    """Summary of a gradient log (ch07 §7.8): what the combiner saw and did."""

    rows: int
    combiner: list[str]  # combiners seen, in order of first use
    norms: dict[str, np.ndarray]  # loss -> ‖∇L_i‖ per row (NaN where absent)
    cosines: np.ndarray  # pairwise cosines of gradients that share parameters, pooled over rows and pairs
    disjoint: int  # pair entries with cos exactly 0: the two losses reach disjoint parameters (left out above)
    pairs: list[tuple[str, str, float, float, int]]  # (a, b, mean cos, share cos < 0, n)
    conflict_share: float | None  # pooled share of pairs with cos < 0
    hit_rate: np.ndarray  # PCGrad hit rate per row (NaN where absent)
    steps: np.ndarray

    @property
    def mean_hit_rate(self) -> float | None:
        h = self.hit_rate[np.isfinite(self.hit_rate)]
        return float(h.mean()) if h.size else None


def gradient_stats(rows: Sequence[dict]) -> GradientStats:
    steps, norms = keyed_series(rows, "grad_norms")
    combiners: list[str] = []
    by_pair: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["combiner"] not in combiners:
            combiners.append(r["combiner"])
        for c in r["cosines"]:
            if c["cos"] is not None:
                by_pair.setdefault((c["a"], c["b"]), []).append(float(c["cos"]))
    every = np.array([v for vals in by_pair.values() for v in vals], dtype=np.float64)
    # cos = 0 exactly: the two gradients touch disjoint parameter sets (e.g. a vision loss and an
    # action loss); they can neither conflict nor agree, so they would only dilute the shares.
    pooled = every[every != 0.0]
    pairs = [(a, b, float(np.mean(v)), float(np.mean(np.array(v) < 0)), len(v))
             for (a, b), v in sorted(by_pair.items()) if any(c != 0.0 for c in v)]
    return GradientStats(
        rows=len(rows), combiner=combiners, norms=norms, cosines=pooled, disjoint=int((every == 0.0).sum()), pairs=pairs,
        conflict_share=float(np.mean(pooled < 0)) if pooled.size else None,
        hit_rate=finite([r.get("pcgrad_hit_rate") for r in rows]), steps=steps)


@dataclass
class BucketSeries:
    """Token buckets over the logged steps (ch07 §7.6); arrays are [R, K] in `names` order."""

    steps: np.ndarray
    names: list[str]
    capacity: np.ndarray
    remaining: np.ndarray
    consumed: np.ndarray
    p: np.ndarray

    def final(self) -> list[tuple[str, float, float, float, float]]:
        """(name, capacity, remaining, consumed_total, p) at the last logged step."""
        return [(n, *(float(a[-1, k]) for a in (self.capacity, self.remaining, self.consumed, self.p)))
                for k, n in enumerate(self.names)]


def bucket_series(rows: Sequence[dict]) -> BucketSeries:
    names: list[str] = []
    for r in rows:
        for b in r["buckets"]:
            if b["name"] not in names:
                names.append(b["name"])
    index = {n: k for k, n in enumerate(names)}
    shape = (len(rows), len(names))
    arrays = {f: np.full(shape, np.nan) for f in ("capacity", "remaining", "consumed_total", "p")}
    for i, r in enumerate(rows):
        for b in r["buckets"]:
            for f, a in arrays.items():
                a[i, index[b["name"]]] = b[f]
    return BucketSeries(steps=np.array([r["step"] for r in rows], dtype=np.float64), names=names,
                        capacity=arrays["capacity"], remaining=arrays["remaining"], consumed=arrays["consumed_total"],
                        p=arrays["p"])


def retrieval_keys(metrics: dict) -> tuple[list[str], list[int]]:
    """Directions and K of held-out retrieval metrics named `<dir>_r<K>` (stages.alignment.retrieval)."""
    dirs, ks = [], []
    for key in metrics:
        head, sep, tail = key.rpartition("_r")
        if sep and head and tail.isdigit() and f"{head}_mrr" in metrics:
            if head not in dirs:
                dirs.append(head)
            if int(tail) not in ks:
                ks.append(int(tail))
    return dirs, sorted(ks)


MI_KEYS = ("mi_vl", "mi_la", "mi_va")  # log N − L_InfoNCE per pair of modalities (ch05 §5.6)


def retrieval_metric_names(metrics: dict) -> set[str]:
    """Every key the retrieval / MI figure shows, so the generic eval figure can leave them out."""
    dirs, ks = retrieval_keys(metrics)
    names = {f"{d}_r{k}" for d in dirs for k in ks} | {f"{d}_mrr" for d in dirs} | {f"{d}_chance_r1" for d in dirs}
    return names | ({k for k in MI_KEYS if k in metrics} | {"log_n"} if dirs else set())
