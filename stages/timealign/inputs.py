"""Reading a raw (or cleaned) dataset for `align-time`: every episode validated, reduced to its series.

The first pass keeps, per episode, only what offset estimation needs (timestamps, continuous
values, the camera's motion energy) and never the frames, so memory stays bounded by the signals;
the second pass (writing) reads each episode again. Every input problem is a `BadInput` naming the
file and the field, raised before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.cleaning import masks as cleaning_masks
from stages.data.raw import ACTION, RawEpisode, list_episodes, read_episode
from stages.errors import BadInput
from stages.progress import NullReporter, Reporter
from stages.timealign.observables import CAMERA, CONTINUOUS, StreamSeries, camera_series, continuous_series

log = logging.getLogger("vla")

LAG_KEY = "action_lag_ms"  # meta.json key in which a recorder may state its plant's response lag


@dataclass
class EpisodeSignals:
    episode_id: str
    path: Path
    meta: dict
    session: str
    start_s: float  # the reference stream's first time stamp: the episode's place on the session clock
    series: dict[str, StreamSeries] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    masks: list = field(default_factory=list)  # stages.cleaning Mask records from meta.json `clean`


def episode_masks(meta: dict, path: Path) -> list:
    """Masks `vla clean` left in meta.json (`clean.masks`, schema clean-meta); [] for uncleaned data."""
    return cleaning_masks.episode_masks(meta, source=str(path / "meta.json"))


def masked_rows(t: np.ndarray, masks: list, stream: str, offset_s: float = 0.0) -> np.ndarray:
    """bool [N]: instants `t` (reference clock) inside a mask of `stream`, whose clock reads t + offset_s."""
    return cleaning_masks.masked(t, masks, stream, offset_s=offset_s)


def _check_times(path: Path, t: np.ndarray) -> None:
    """Offsets are only defined on a clock that moves forward: strictly increasing, finite stamps."""
    if not np.all(np.isfinite(t)):
        row = int(np.flatnonzero(~np.isfinite(t))[0])
        raise BadInput(f"`{path}`: field `t` is not finite at row {row}", hint=f"vla clean {path.parent.parent} --out CLEAN")
    steps = np.diff(t)
    if np.any(steps <= 0):
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise BadInput(f"`{path}`: field `t` does not increase at row {row}",
                       caused_by=f"{float(t[row - 1])!r} then {float(t[row])!r}", hint=f"vla clean {path.parent.parent} --out CLEAN")
    if len(t) < 4:
        raise BadInput(f"`{path}`: stream has {len(t)} rows", caused_by="at least 4 samples are needed to estimate a clock offset")


def episode_signals(ep: RawEpisode, reference: str) -> EpisodeSignals:
    path = ep.path
    if reference not in ep.streams and reference not in ep.cameras:
        raise BadInput(f"episode `{path}` has no reference stream `{reference}`",
                       caused_by=f"streams are {', '.join(ep.stream_names())}", hint="choose one with --reference")
    masks = episode_masks(ep.meta, path)
    out = EpisodeSignals(ep.episode_id, path, ep.meta, str(ep.meta.get("session") or ep.episode_id), 0.0, masks=masks)
    for name, df in ep.streams.items():
        t = df["t"].to_numpy(dtype=np.float64)
        _check_times(path / f"{name}.parquet", t)
        columns = [c for c in df.columns if c != "t"]
        out.series[name] = continuous_series(name, t, df[columns].to_numpy(dtype=np.float64), columns,
                                             bad=masked_rows(t, masks, name))
        out.kinds[name] = CONTINUOUS
    for name, cam in ep.cameras.items():
        t = cam.t.astype(np.float64)
        _check_times(path / f"{name}.parquet", t)
        out.series[name] = camera_series(name, t, cam.index["frame"].to_numpy(), cam.frames, bad=masked_rows(t, masks, name))
        out.kinds[name] = CAMERA
    for name, s in out.series.items():
        if len(s.t) < 4:
            where = path / f"{name}.parquet"
            raise BadInput(f"`{where}`: stream has {len(s.t)} usable samples", caused_by="the rest are masked, non-finite or repeated frames")
    out.start_s = float(out.series[reference].t[0])
    return out


def collect(src: Path, reference: str, reporter: Reporter = NullReporter()) -> list[EpisodeSignals]:
    """Every episode of `src`, validated and reduced to its signals (episode folder order)."""
    paths = list_episodes(src)
    out = []
    with reporter.task("reading episodes", total=len(paths)) as advance:
        for path in paths:
            ep = read_episode(path, frames="mmap")
            out.append(episode_signals(ep, reference))
            advance(1)
    return out


def action_lag(episodes: list[EpisodeSignals], option_ms: float | None) -> tuple[float, str]:
    """The plant's response lag: --action-lag-ms, else the recorder's statement in meta.json, else 0.

    A dataset holds no truth about its plant: without either, the action stream's offset still
    contains the lag, and the user is told so.
    """
    if option_ms is not None:
        return float(option_ms), "option"
    stated = {ep.meta.get(LAG_KEY) for ep in episodes}
    if None not in stated and len(stated) == 1:
        value = stated.pop()
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise BadInput(f"`{episodes[0].path / 'meta.json'}`: field `{LAG_KEY}` is {value!r}", caused_by="expected a number of milliseconds")
        return float(value), "meta"
    if len(stated - {None}) > 1:
        raise BadInput(f"episodes of `{episodes[0].path.parent}` state different `{LAG_KEY}` values",
                       caused_by=", ".join(sorted(str(v) for v in stated)), hint="pass --action-lag-ms")
    log.warning("no plant response lag given: the `%s` offsets include it (pass --action-lag-ms; docs/align-time.md says how to measure it)", ACTION)
    return 0.0, "default"
