"""Every stream of an episode onto one grid at `fps`, on the reference stream's clock.

A stream whose clock reads `offset` ahead of the reference has its samples at reference time
t_stream - offset. Continuous streams are interpolated linearly there; cameras give the frame
nearest in time (a frame is never blended). Grid instants covered by a `clean` mask, by a
non-finite sample, or farther than `max_gap` periods from any camera frame are marked invalid
(`vla.valid` false, `vla.weight` 0): the frame is kept so that histories and chunks stay regular.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stages.data.raw import ACTION, RawEpisode
from stages.signal import interp_linear, median_rate, nearest_index, uniform_grid

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


@dataclass
class ResampleConfig:
    fps: int = 20
    camera_max_gap: float = 0.75  # a grid instant farther than this many camera periods from a frame is invalid


def feature_key(stream: str, *, state_stream: str) -> str:
    """LeRobot feature name of a continuous stream: `action`, `observation.state`, `observation.<name>`."""
    if stream == ACTION:
        return ACTION
    if stream == state_stream:
        return STATE_KEY
    return f"observation.{stream}"


def state_stream_of(streams: list[str], reference: str) -> str:
    """The stream that becomes `observation.state`: one named `state`, else the reference."""
    return "state" if "state" in streams else reference


@dataclass
class Resampled:
    images: dict[str, np.ndarray]  # feature -> uint8 [T, H, W, 3]
    vectors: dict[str, np.ndarray]  # feature -> float32 [T, D]
    names: dict[str, list[str]]
    valid: np.ndarray  # bool [T]
    invalid_by: dict[str, int]  # stream -> frames it invalidated


MaskFn = Callable[[np.ndarray, str, float], np.ndarray]  # (grid on reference clock, stream, offset_s) -> bool [T]


def common_span(ep: RawEpisode, offsets_s: dict[str, float], streams: list[str]) -> tuple[float, float]:
    """[start, stop] on the reference clock where every stream has data."""
    starts, stops = [], []
    for name in streams:
        t = ep.cameras[name].t if name in ep.cameras else ep.streams[name]["t"].to_numpy()
        starts.append(float(t[0]) - offsets_s[name])
        stops.append(float(t[-1]) - offsets_s[name])
    return max(starts), min(stops)


def resample_episode(ep: RawEpisode, offsets_s: dict[str, float], streams: list[str], *, reference: str,
                     cfg: ResampleConfig, masked: MaskFn, with_frames: bool = True) -> Resampled | None:
    """All `streams` of `ep` on the grid; None when the streams share no instant after correction.

    `with_frames=False` computes the grid and its validity from time stamps alone (no image read).
    """
    start, stop = common_span(ep, offsets_s, streams)
    grid = uniform_grid(start, stop, cfg.fps)  # [T], reference clock
    if len(grid) == 0:
        return None
    valid = np.ones(len(grid), dtype=bool)
    invalid_by: dict[str, int] = {}
    out = Resampled({}, {}, {}, valid, invalid_by)
    state = state_stream_of(streams, reference)
    for name in streams:
        offset = offsets_s[name]
        if name in ep.cameras:
            bad = _camera(ep, name, grid, offset, cfg, out, with_frames)
        else:
            bad = _continuous(ep, name, grid, offset, out, feature_key(name, state_stream=state))
        bad |= masked(grid, name, offset)
        invalid_by[name] = int(bad.sum())
        valid &= ~bad
    return out


def _camera(ep: RawEpisode, name: str, grid: np.ndarray, offset: float, cfg: ResampleConfig, out: Resampled,
            with_frames: bool) -> np.ndarray:
    cam = ep.cameras[name]
    t = cam.t - offset
    rows, err = nearest_index(t, grid)  # [T]
    if with_frames:
        frames = cam.frames[cam.index["frame"].to_numpy()[rows]]  # uint8 [T, H, W, 3]
        out.images[IMAGE_PREFIX + name] = np.ascontiguousarray(frames)
    return err > cfg.camera_max_gap / median_rate(cam.t)


def _continuous(ep: RawEpisode, name: str, grid: np.ndarray, offset: float, out: Resampled, key: str) -> np.ndarray:
    df = ep.streams[name]
    columns = [c for c in df.columns if c != "t"]
    t = df["t"].to_numpy(dtype=np.float64) - offset
    values = df[columns].to_numpy(dtype=np.float64)  # [N, D]
    finite = np.isfinite(values).all(axis=1)
    if finite.sum() == 0:
        out.vectors[key] = np.zeros((len(grid), len(columns)), dtype=np.float32)
        out.names[key] = columns
        return np.ones(len(grid), dtype=bool)
    # interpolate between finite samples only, then invalidate frames that leaned on a bad one
    resampled, _ = interp_linear(t[finite], values[finite], grid)
    leaned, _ = interp_linear(t, (~finite).astype(np.float64), grid)
    out.vectors[key] = resampled.astype(np.float32)
    out.names[key] = columns
    return leaned > 0
