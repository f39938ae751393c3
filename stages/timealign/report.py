"""Per-episode results, the keep / downweight / drop decision, and `align_report.json`.

Decision (ch05 §5.7: video–action misalignment beyond 150 ms → downweight or drop): an episode's
residual is the worst residual bound over its streams. Within `max_residual_ms` it is kept with
weight 1; up to `drop_factor` times that it is kept with weight max_residual / residual (between
1/drop_factor and 1); beyond, or when a residual cannot be bounded at all, it is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamResult:
    offset_ms: float | None  # stream clock minus reference clock (lag-corrected for the action stream)
    confidence: float
    residual_ms: float  # inf: unbounded
    own_ms: float | None = None  # the episode's own peak
    apparent_ms: float | None = None  # action stream: the final offset before the lag was added
    sigma_ms: float | None = None
    source: str = "none"
    invalid_frames: int = 0

    def to_json(self) -> dict:
        return {"offset_ms": self.offset_ms, "confidence": float(np.clip(self.confidence, 0.0, 1.0)), "residual_ms": self.residual_ms,
                "own_ms": self.own_ms, "apparent_ms": self.apparent_ms, "sigma_ms": self.sigma_ms, "source": self.source,
                "invalid_frames": self.invalid_frames}


@dataclass
class EpisodeResult:
    episode_id: str
    session: str
    streams: dict[str, StreamResult] = field(default_factory=dict)
    status: str = "kept"  # kept | downweighted | dropped
    reason: str | None = None
    weight: float = 1.0
    frames: int = 0
    valid_frames: int = 0

    @property
    def residual_ms(self) -> float:
        values = [s.residual_ms for s in self.streams.values()]
        return float(max(values)) if values else 0.0

    def drop(self, reason: str) -> None:
        if self.status != "dropped":
            self.status, self.reason, self.weight = "dropped", reason, 0.0

    def to_json(self) -> dict:
        return {"episode_id": self.episode_id, "session": self.session, "status": self.status, "reason": self.reason,
                "weight": self.weight, "residual_ms": self.residual_ms, "frames": self.frames, "valid_frames": self.valid_frames,
                "streams": {k: v.to_json() for k, v in sorted(self.streams.items())}}


def decide(result: EpisodeResult, max_residual_ms: float, drop_factor: float) -> None:
    """Keep, downweight or drop one episode by its worst stream residual (module docstring)."""
    if result.status == "dropped":
        return
    worst_stream, worst = max(result.streams.items(), key=lambda kv: kv[1].residual_ms, default=(None, None))
    if worst is None or worst.residual_ms <= max_residual_ms:
        return
    r = worst.residual_ms
    if not np.isfinite(r):
        why = "no estimate" if worst.offset_ms is None else "estimate cannot be bounded"
        result.drop(f"`{worst_stream}`: {why} (no correlation peak usable by the episode or its session)")
    elif r > drop_factor * max_residual_ms:
        result.drop(f"`{worst_stream}`: residual {r:.0f} ms > {drop_factor:g} x --max-residual-ms {max_residual_ms:g}")
    else:
        result.status, result.weight = "downweighted", float(max_residual_ms / r)
        result.reason = f"`{worst_stream}`: residual {r:.0f} ms > --max-residual-ms {max_residual_ms:g}"


def percentiles(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "n": int(len(v))}


def stream_stats(results: list[EpisodeResult], stream: str) -> dict:
    """P50/P95 of |offset|, residual and confidence over the episodes that are written."""
    rows = [r.streams[stream] for r in results if r.status != "dropped" and stream in r.streams]
    return {
        "offset_abs_ms": percentiles([abs(s.offset_ms) for s in rows if s.offset_ms is not None]),
        "residual_ms": percentiles([s.residual_ms for s in rows]),
        "confidence": percentiles([s.confidence for s in rows]),
    }


def summary(results: list[EpisodeResult], fps: int) -> dict:
    kept = [r for r in results if r.status != "dropped"]
    frames = sum(r.frames for r in kept)
    return {
        "episodes": len(results),
        "kept": sum(r.status == "kept" for r in results),
        "downweighted": sum(r.status == "downweighted" for r in results),
        "dropped": sum(r.status == "dropped" for r in results),
        "frames": frames,
        "valid_frames": sum(r.valid_frames for r in kept),
        "seconds": frames / fps,
    }
