"""Check 10 — data-leak scan: eval vs train fingerprints of frames, text and trajectories
(ch07 §7.10 item 10, ch05 gotcha 7).

Every evaluation episode (the held-out split of `--data` and all of `--eval`, of any task) is
fingerprinted with `stages.data.fingerprints` — sensor-content digest, 16 grey thumbnails with
dHashes, a 32-point sketch of the action and state trajectories, a MinHash of the instruction —
and matched against every training episode (`cross_matches`: exact digest, or trajectory RMS ≤
`trajectory` and mean thumbnail difference ≤ `frames` grey levels). Instructions alone are not a
leak (paraphrase templates repeat across episodes), so text similarity is reported per match and
exact instruction overlap is counted, but neither gates.

Resampling onto the aligned grid erases the raw clocks, and on repetitive demonstrations two
different recordings of one task can look alike in content. When every episode carries the raw
recording's signature (`recording` in meta/vla.json, written by `vla clean` and carried by
`vla align-time`), a near-duplicate must also share its sample-timing pattern — as copies of one
recording do — exactly as `vla clean` matches; otherwise matching is on content alone and the
report says so (`details.timing`).

    value = number of evaluation episodes with a match in train   (gate: ≤ 0, i.e. none)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.data.fingerprints import FingerprintConfig, MatchConfig, cross_matches, fingerprint, normalise_text
from stages.probes.check import Check, CheckSpec, Measurement
from stages.probes.context import ACTION_KEY, STATE_KEY, Episode

SPEC = CheckSpec(
    id=10, name="data_leak_scan", title="Data-leak scan", comparator="<=", unit="leaked episodes",
    what="evaluation episodes whose frame/trajectory fingerprints match a training episode",
    suggestion="Deduplicate by fingerprint before training (`vla clean --eval`), split by scene/time block, and "
               "keep an OOD validation set (ch05 gotcha 7, ch07 gotcha 8).",
)


@dataclass(frozen=True)
class Params:
    threshold: float = 0.0  # no leaked episode is acceptable
    trajectory: float = MatchConfig.trajectory  # RMS of z-scored trajectory sketches
    frames: float = MatchConfig.frames  # mean absolute thumbnail difference, grey levels


def episode_fingerprint(ctx, ep: Episode):
    """Fingerprint an aligned episode: streams `action` and `state` on its timestamps, its camera frames."""
    ds, rows = ep.dataset, slice(ep.start, ep.start + ep.length)
    t = ctx.data.column(ds, "timestamp")[rows].astype(np.float64)
    streams = {}
    for stream, key in (("action", ACTION_KEY), ("state", STATE_KEY)):
        values = ctx.data.column(ds, key)[rows]
        names = ds.features[key].get("names") or [f"{i}" for i in range(values.shape[1])]
        streams[stream] = {"t": t, **{str(n): values[:, i] for i, n in enumerate(names)}}
    frames = ds.images(ctx.data.image_key)[rows]
    fp = fingerprint(ep.episode_id, ep.instruction, streams, {"camera": (np.arange(ep.length), frames)}, FingerprintConfig())
    recording = ep.meta.get("recording") if isinstance(ep.meta, dict) else None
    if recording is not None:
        fp.timing = np.array([np.nan if x is None else x for x in recording["timing"]], dtype=np.float64)
        fp.extra["recorded"] = True
    return fp


def measure(ctx, params: Params) -> Measurement:
    data = ctx.data
    evaluation = data.all_heldout + data.all_unknown
    with ctx.reporter.task("leak scan: fingerprints", total=len(data.train) + len(evaluation)) as advance:
        train_fps = []
        for ep in data.train:
            train_fps.append(episode_fingerprint(ctx, ep))
            advance(1)
        eval_fps = []
        for ep in evaluation:
            eval_fps.append(episode_fingerprint(ctx, ep))
            advance(1)
    recorded = all(fp.extra.get("recorded") for fp in train_fps + eval_fps)
    config = MatchConfig(trajectory=params.trajectory, frames=params.frames, same_timing=recorded)
    matches = cross_matches(train_fps, eval_fps, config)  # a = eval (reference), b = train copy
    leaked = sorted({m.a for m in matches})
    train_text = {normalise_text(ep.instruction) for ep in data.train}
    details = {
        "train_episodes": len(train_fps), "eval_episodes": len(eval_fps), "leaked": leaked,
        "exact": sorted({m.a for m in matches if m.exact}),
        "matches": [m.to_json() for m in matches[:50]],
        "exact_instruction_overlap": sum(1 for ep in evaluation if normalise_text(ep.instruction) in train_text),
        "match_config": {"trajectory": config.trajectory, "frames": config.frames},
        "timing": "recorded" if recorded else "unavailable: content-only matching (look-alike episodes of one task can match)",
    }
    return Measurement(float(len(leaked)), details, len(evaluation) + len(data.train), len(evaluation))


CHECK = Check(SPEC, Params, measure)
