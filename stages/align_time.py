"""`vla align-time`: raw (cleaned) episodes with their own clocks in, one LeRobot v3.0 dataset out.

ch07 §7.7: align in time first — 50–100 ms of misalignment is enough for L–A alignment to learn a
systematic lag. ch05 §5.7: find the alignment point by maximising the cross-correlation of video and
action; downweight or drop what stays misaligned beyond 150 ms. The recipe:

1. Read every episode; keep its signals (timestamps, values, the camera's motion energy).
2. Per session and stream: the clock offset against the reference stream, pooled over the session
   and refined per episode (`stages.timealign.estimate`, `stages.timealign.session`); the action
   stream's peak also holds the plant's response lag, which is taken off (`--action-lag-ms`).
3. Keep, downweight or drop each episode by the misalignment left after correction.
4. Resample every stream onto one grid at `fps` on the reference clock, apply `clean`'s masks, and
   write the dataset (`stages.data.lerobot.write_dataset`) with `align_report.json` inside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.artifacts import atomic_dir, check_writable_parent, sha256_file, write_json
from stages.data.lerobot import AlignedEpisode, write_dataset
from stages.data.raw import ACTION, read_episode
from stages.errors import BadInput
from stages.progress import NullReporter, Reporter
from stages.timealign.estimate import EstimateConfig, estimate_session
from stages.timealign.inputs import EpisodeSignals, action_lag, collect, masked_rows
from stages.timealign.observables import CAMERA
from stages.timealign.report import EpisodeResult, StreamResult, decide, percentiles, stream_stats, summary
from stages.timealign.resample import ResampleConfig, feature_key, resample_episode, state_stream_of
from stages.timealign.session import SessionConfig, fit_session

log = logging.getLogger("vla")

REPORT = "align_report.json"


@dataclass
class AlignTimeConfig:
    fps: int = 20
    reference: str = "state"  # the stream whose clock the dataset keeps
    max_residual_ms: float = 150.0  # ch05 §5.7
    drop_factor: float = 2.0  # residual beyond drop_factor x max_residual_ms: drop (between: downweight)
    action_lag_ms: float | None = None  # plant response lag; None: meta.json `action_lag_ms`, else 0 with a warning
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    camera_max_gap: float = 0.75  # camera periods from the nearest frame before a grid instant is invalid


@dataclass
class AlignPlan:
    """Everything decided before writing: streams, offsets, weights."""

    streams: list[str]  # written streams (reference first)
    kinds: dict[str, str]
    rates: dict[str, float]
    left_out: dict[str, str]  # stream -> why it is not written
    lag_ms: float
    lag_source: str
    results: list[EpisodeResult]
    sessions: dict[str, dict]
    masks: dict[str, int]  # episodes with `clean` masks, and their intervals


def align_time(src: str | Path, out: str | Path, cfg: AlignTimeConfig | None = None, *, overwrite: bool = False,
               reporter: Reporter = NullReporter()) -> dict:
    """Run the stage; returns the align report (also written as `out/align_report.json`)."""
    src, out, cfg = Path(src), Path(out), cfg or AlignTimeConfig()
    _check_options(cfg, out, overwrite)
    episodes = collect(src, cfg.reference, reporter)
    plan = estimate_offsets(episodes, cfg, reporter)
    by_id = {ep.episode_id: ep for ep in episodes}
    _frame_counts(plan, by_id, cfg, reporter)
    kept = [r for r in plan.results if r.status != "dropped"]
    if not kept:
        reasons = sorted({r.reason for r in plan.results if r.reason})
        raise BadInput(f"no episode of `{src}` could be aligned", caused_by="; ".join(reasons[:3]),
                       hint="check the streams share motion, or raise --max-residual-ms")
    report = _report(src, plan, cfg)
    robot_type = str(episodes[0].meta.get("robot_type") or "unknown")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / REPORT, report, schema="align-report")
        vla_meta = {"source": str(src), "align_report_digest": sha256_file(tmp / REPORT),
                    "clean_report_digest": _digest_if_exists(src / "clean_report.json"),
                    "reference": cfg.reference, "action_lag_ms": plan.lag_ms}
        written = write_dataset(tmp, _aligned(plan, by_id, cfg), fps=cfg.fps, robot_type=robot_type, vla_meta=vla_meta, reporter=reporter)
    report["dataset"] = written  # for the caller's summary; not part of the file
    return report


def _check_options(cfg: AlignTimeConfig, out: Path, overwrite: bool) -> None:
    if not isinstance(cfg.fps, int) or cfg.fps <= 0:
        raise BadInput(f"option `--fps` is {cfg.fps!r}", caused_by="expected a positive integer")
    if not cfg.max_residual_ms > 0:
        raise BadInput(f"option `--max-residual-ms` is {cfg.max_residual_ms!r}", caused_by="expected a positive number")
    if not cfg.estimate.max_offset_ms > 0:
        raise BadInput(f"option `--max-offset-ms` is {cfg.estimate.max_offset_ms!r}", caused_by="expected a positive number")
    if cfg.action_lag_ms is not None and not np.isfinite(cfg.action_lag_ms):
        raise BadInput(f"option `--action-lag-ms` is {cfg.action_lag_ms!r}", caused_by="expected a finite number")
    if out.exists() and not overwrite:
        raise BadInput(f"output `{out}` already exists", hint="choose another --out, or pass --overwrite")
    check_writable_parent(out)


def _digest_if_exists(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


# ----------------------------------------------------------------------------- estimation


def _stream_table(episodes: list[EpisodeSignals]) -> tuple[list[str], dict[str, str], dict[str, float]]:
    kinds: dict[str, str] = {}
    rates: dict[str, list[float]] = {}
    for ep in episodes:
        for name, s in ep.series.items():
            if kinds.setdefault(name, ep.kinds[name]) != ep.kinds[name]:
                raise BadInput(f"`{ep.path}`: stream `{name}` is a {ep.kinds[name]} here but a {kinds[name]} elsewhere")
            rates.setdefault(name, []).append(s.rate_hz)
    return sorted(kinds), kinds, {k: float(np.median(v)) for k, v in rates.items()}


def estimate_offsets(episodes: list[EpisodeSignals], cfg: AlignTimeConfig, reporter: Reporter = NullReporter()) -> AlignPlan:
    """Every episode's stream offsets and keep/downweight/drop decision (steps 2–3), nothing written.

    `episodes` come from `stages.timealign.inputs.collect`; the result's `results[i].streams[name]`
    hold offset_ms, confidence and residual_ms per stream.
    """
    names, kinds, rates = _stream_table(episodes)
    lag_ms, lag_source = action_lag(episodes, cfg.action_lag_ms)
    results = [EpisodeResult(ep.episode_id, ep.session) for ep in episodes]
    for ep, res in zip(episodes, results):
        res.streams[cfg.reference] = StreamResult(0.0, 1.0, 0.0, source="reference")
        missing = [n for n in names if n not in ep.series]
        if missing:
            res.drop(f"missing stream `{missing[0]}` that other episodes have")
        elif not str(ep.meta.get("instruction", "")).strip():
            res.drop("empty instruction (run `vla clean` to repair or drop it)")
    sessions: dict[str, list[int]] = {}
    for i, ep in enumerate(episodes):
        sessions.setdefault(ep.session, []).append(i)
    left_out: dict[str, str] = {}
    session_json: dict[str, dict] = {s: {"episodes": len(idx), "streams": {}} for s, idx in sessions.items()}
    others = [n for n in names if n != cfg.reference]
    with reporter.task("estimating clock offsets", total=len(sessions) * len(others)) as advance:
        for session, idx in sessions.items():
            for name in others:
                members = [i for i in idx if name in episodes[i].series]
                if members:
                    session_json[session]["streams"][name] = _estimate_stream(
                        [episodes[i] for i in members], [results[i] for i in members], name, cfg, lag_ms if name == ACTION else 0.0)
                    if not session_json[session]["streams"][name]["views"] and _optional(name, kinds):
                        left_out.setdefault(name, f"shares no observable with `{cfg.reference}` in session `{session}`")
                advance(1)
    for name in left_out:
        log.warning("stream `%s` is left out of the dataset: it %s", name, left_out[name])
        for res in results:
            res.streams.pop(name, None)
    for res in results:
        decide(res, cfg.max_residual_ms, cfg.drop_factor)
    written = [cfg.reference] + [n for n in others if n not in left_out]
    masks = {"episodes": sum(bool(ep.masks) for ep in episodes), "intervals": sum(len(ep.masks) for ep in episodes)}
    return AlignPlan(written, kinds, rates, left_out, lag_ms, lag_source, results, session_json, masks)


def _optional(name: str, kinds: dict[str, str]) -> bool:
    """Cameras and the action stream are what a VLA dataset is for; other streams may be left out."""
    return name != ACTION and kinds[name] != CAMERA


def _estimate_stream(members: list[EpisodeSignals], results: list[EpisodeResult], name: str, cfg: AlignTimeConfig,
                     lag_ms: float) -> dict:
    """Offsets of one stream in one session; fills `results[i].streams[name]` and returns the session's entry."""
    ref = cfg.reference
    plan, estimates = estimate_session([m.series[name] for m in members], [m.series[ref] for m in members], cfg.estimate)
    fit = fit_session([e.lag_ms for e in estimates], [e.sigma_ms for e in estimates], [e.usable for e in estimates],
                      [m.start_s for m in members], cfg.session,
                      pooled_ms=plan.session_lag_ms if plan.session_z >= cfg.estimate.min_z else None,
                      pooled_sigma_ms=plan.session_sigma_ms)
    for res, est, final in zip(results, estimates, fit.episodes):
        offset = None if final.offset_ms is None else final.offset_ms + lag_ms
        res.streams[name] = StreamResult(
            offset_ms=offset, confidence=est.confidence, residual_ms=final.residual_ms, own_ms=est.lag_ms,
            apparent_ms=final.offset_ms if name == ACTION else None,
            sigma_ms=final.sigma_ms if np.isfinite(final.sigma_ms) else None, source=final.source)
    entry = plan.to_json()
    # session_lag_ms stays the correlation peak; offset_ms (the model) is the clock offset, lag included
    entry.update({"offset_ms": None if fit.offset_ms is None else fit.offset_ms + lag_ms, "drift_ppm": fit.drift_ppm,
                  "between_ms": fit.between_ms if np.isfinite(fit.between_ms) else None, "used": fit.used})
    return entry


# ----------------------------------------------------------------------------- resampling and writing


def _offsets_s(res: EpisodeResult, streams: list[str]) -> dict[str, float]:
    return {n: res.streams[n].offset_ms / 1000.0 for n in streams}


def _mask_fn(ep: EpisodeSignals):
    return lambda grid, stream, offset: masked_rows(grid, ep.masks, stream, offset)


def _frame_counts(plan: AlignPlan, by_id: dict[str, EpisodeSignals], cfg: AlignTimeConfig, reporter: Reporter) -> None:
    """Grid length and valid frames of every kept episode (timestamps only, no frames read)."""
    rcfg = ResampleConfig(cfg.fps, cfg.camera_max_gap)
    todo = [r for r in plan.results if r.status != "dropped"]
    with reporter.task("planning the grid", total=len(todo)) as advance:
        for res in todo:
            sig = by_id[res.episode_id]
            raw = read_episode(sig.path, frames="none")
            grid = resample_episode(raw, _offsets_s(res, plan.streams), plan.streams, reference=cfg.reference, cfg=rcfg,
                                    masked=_mask_fn(sig), with_frames=False)
            advance(1)
            if grid is None:
                res.drop("the streams share no instant once their clocks are corrected")
                continue
            res.frames, res.valid_frames = len(grid.valid), int(grid.valid.sum())
            for name, count in grid.invalid_by.items():
                res.streams[name].invalid_frames = count
            if res.valid_frames == 0:
                res.drop("every frame is masked or invalid")


def _aligned(plan: AlignPlan, by_id: dict[str, EpisodeSignals], cfg: AlignTimeConfig) -> Iterator[AlignedEpisode]:
    rcfg = ResampleConfig(cfg.fps, cfg.camera_max_gap)
    for res in plan.results:
        if res.status == "dropped":
            continue
        sig = by_id[res.episode_id]
        raw = read_episode(sig.path, frames="mmap")
        grid = resample_episode(raw, _offsets_s(res, plan.streams), plan.streams, reference=cfg.reference, cfg=rcfg,
                                masked=_mask_fn(sig))
        weight = np.where(grid.valid, res.weight, 0.0).astype(np.float32)
        meta = sig.meta
        yield AlignedEpisode(
            source_id=res.episode_id,
            instruction=str(meta["instruction"]).strip(),
            images=grid.images,
            vectors=grid.vectors,
            names=grid.names,
            weight=weight,
            valid=grid.valid,
            meta=_episode_meta(meta, res, plan),
        )


def _episode_meta(meta: dict, res: EpisodeResult, plan: AlignPlan) -> dict:
    out = {k: meta[k] for k in ("session", "scene", "split", "language", "constraints") if k in meta}
    out.update({
        "task_name": str(meta.get("task") or meta["instruction"]),
        "offsets_ms": {n: res.streams[n].offset_ms for n in plan.streams},
        "confidence": {n: res.streams[n].confidence for n in plan.streams},
        "residual_ms": res.residual_ms,
        "weight": res.weight,
        "action_lag_ms": plan.lag_ms,
    })
    recording = (meta.get("clean") or {}).get("recording")
    if recording is not None:  # the raw clocks' signature, for leak scans after resampling
        out["recording"] = recording
    return out


def _report(src: Path, plan: AlignPlan, cfg: AlignTimeConfig) -> dict:
    state = state_stream_of(plan.streams, cfg.reference)
    streams = {}
    for name in sorted(plan.kinds):
        written = name in plan.streams
        kind = plan.kinds[name]
        entry = {"kind": kind, "rate_hz": plan.rates[name],
                 "status": "reference" if name == cfg.reference else ("aligned" if written else "left_out"),
                 "reason": plan.left_out.get(name),
                 "feature": None if not written else (f"observation.images.{name}" if kind == CAMERA else feature_key(name, state_stream=state))}
        if written:
            entry.update(stream_stats(plan.results, name))
        streams[name] = entry
    apparent = [r.streams[ACTION].apparent_ms for r in plan.results if r.status != "dropped" and ACTION in r.streams]
    return {
        "schema_version": 1,
        "source": str(src),
        "reference": cfg.reference,
        "fps": cfg.fps,
        "max_residual_ms": cfg.max_residual_ms,
        "max_offset_ms": cfg.estimate.max_offset_ms,
        "action_lag": {"stream": ACTION, "ms": plan.lag_ms, "source": plan.lag_source, "apparent_ms": percentiles(apparent)},
        "masks": plan.masks,
        "streams": streams,
        "sessions": plan.sessions,
        "episodes": [r.to_json() for r in plan.results],
        "summary": summary(plan.results, cfg.fps),
        "dropped": [{"episode_id": r.episode_id, "reason": r.reason} for r in plan.results if r.status == "dropped"],
        "downweighted": [{"episode_id": r.episode_id, "weight": r.weight, "reason": r.reason} for r in plan.results if r.status == "downweighted"],
    }
