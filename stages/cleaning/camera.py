"""Camera rules: frozen cameras and degenerate images.

Frames are compared in the order of the camera's (already time-fixed) rows; differences are computed
in chunks straight from the memory-mapped `.npy`, so memory stays bounded by the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.cleaning.base import EpisodeWork, Rule, rule, runs

CHUNK = 256  # frames per vectorised block


def frame_differences(frames: np.ndarray, rows: np.ndarray, *, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Change from the previous row's frame to each row's: (mean absolute difference in grey levels,
    fraction of pixels that changed), both float32 [n] with entry 0 = +inf / 1 (no previous frame).
    `stride` subsamples pixels for large frames."""
    n = len(rows)
    mad = np.full(n, np.inf, np.float32)
    changed = np.ones(n, np.float32)
    for start in range(1, n, CHUNK):  # a loop over blocks of frames, vectorised inside
        cur = rows[start : start + CHUNK]
        prev = rows[start - 1 : start - 1 + len(cur)]
        d = np.abs(np.asarray(frames[cur][:, ::stride, ::stride], dtype=np.int16) - np.asarray(frames[prev][:, ::stride, ::stride], dtype=np.int16))
        mad[start : start + len(cur)] = d.mean(axis=(1, 2, 3))
        changed[start : start + len(cur)] = (d.max(axis=3) > 0).mean(axis=(1, 2))
    return mad, changed


def frame_spread(frames: np.ndarray, rows: np.ndarray, *, stride: int = 1) -> np.ndarray:
    """Standard deviation of the grey levels of each row's frame: float32 [n] (≈0 for a blank image)."""
    out = np.zeros(len(rows), np.float32)
    for start in range(0, len(rows), CHUNK):
        block = np.asarray(frames[rows[start : start + CHUNK]][:, ::stride, ::stride], dtype=np.float32)
        out[start : start + len(block)] = block.mean(axis=-1).reshape(len(block), -1).std(axis=1)
    return out


def _stride(frames: np.ndarray) -> int:
    """Pixel stride so a comparison reads about 64x64 pixels per frame, whatever the resolution."""
    return max(1, min(frames.shape[1], frames.shape[2]) // 64)


def motion_in(work: EpisodeWork, stream_name: str, t0: float, t1: float, *, share: float) -> bool | None:
    """Did `stream_name` move during [t0, t1]? None when there is no such stream.

    Motion = mean absolute per-row change, each column scaled by its episode-wide mean absolute change,
    above `share` of the episode's typical activity (1.0). A robot standing still reads ≈0.
    """
    stream = work.streams.get(stream_name)
    if stream is None or len(stream) < 3:
        return None
    t = stream.t
    values = np.stack([stream.values(c) for c in stream.value_columns()], axis=1)  # [n, D]
    step = np.abs(np.diff(values, axis=0))  # [n-1, D]
    scale = step.mean(axis=0)
    live = scale > 0
    if not live.any():
        return False
    activity = (step[:, live] / scale[live]).mean(axis=1)  # [n-1], mean 1 over the episode
    inside = (t[1:] >= t0) & (t[:-1] <= t1)
    if not inside.any():
        return None
    return bool(activity[inside].mean() > share)


@dataclass(frozen=True)
class FrozenParams:
    min_rows: int = 3  # at least this many consecutive rows showing the same picture
    tolerance: float = 0.0  # mean absolute difference (grey levels) that still counts as the same picture
    motion_stream: str = "state"  # noise-free cameras: a static scene is not frozen, require motion here ("" = never)
    motion_share: float = 0.2  # motion = activity above this share of the episode's typical activity
    noisy_pixels: float = 0.5  # a camera changing more than this share of its pixels per frame (median) has sensor noise


@rule("camera.frozen", kind="frozen_camera", actions=("mask", "drop", "flag"), params=FrozenParams)
def frozen(work: EpisodeWork, rule: Rule) -> None:
    """A camera that keeps delivering the same picture: identical frames on a camera with sensor noise,
    or, on a noise-free camera, identical frames while `motion_stream` moves. mask: the repeated rows
    are marked invalid."""
    p = rule.params
    for cam in work.cameras.values():
        rows = cam.columns["frame"]
        diff, share = frame_differences(cam.frames, rows, stride=_stride(cam.frames))  # [n], [n]
        same = diff <= p.tolerance
        # A camera with sensor noise changes most of its pixels from frame to frame and never repeats
        # a picture by itself; a noise-free one (a renderer) changes only what moved and repeats the
        # picture whenever the scene stands still: only then is motion evidence needed.
        noisy = bool(np.median(share[1:]) > p.noisy_pixels) if len(share) > 1 else False
        for start, end in runs(same):  # rows start..end-1 repeat row start-1
            if end - start + 1 < p.min_rows:
                continue
            t0, t1 = cam.time_span(start, end)
            check = p.motion_stream and not noisy
            moving = motion_in(work, p.motion_stream, t0, t1, share=p.motion_share) if check else None
            if moving is False:
                continue
            work.report(rule, stream=cam, rows=(start - 1, end), detail={"repeated_rows": int(end - start), "motion_checked": moving is not None})
            if rule.action == "mask":
                work.mask(rule, cam, t0, t1)
            elif rule.action == "drop":
                work.drop(rule, f"`{cam.name}` frozen for {end - start} rows")


@dataclass(frozen=True)
class DegenerateParams:
    min_spread: float = 1.0  # frames whose grey levels vary less than this (std) are blank


@rule("camera.degenerate", kind="degenerate_image", actions=("mask", "drop", "flag"), params=DegenerateParams)
def degenerate(work: EpisodeWork, rule: Rule) -> None:
    """Blank frames (black, white or one flat colour). mask: those rows are marked invalid."""
    for cam in work.cameras.values():
        rows = cam.columns["frame"]
        blank = frame_spread(cam.frames, rows, stride=_stride(cam.frames)) < rule.params.min_spread
        for start, end in runs(blank):
            work.report(rule, stream=cam, rows=(start, end), detail={"frames": int(end - start)})
            if rule.action == "mask":
                work.mask(rule, cam, *cam.time_span(start, end))
        if blank.any() and rule.action == "drop":
            work.drop(rule, f"`{cam.name}` has {int(blank.sum())} blank frame(s)")

