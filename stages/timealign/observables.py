"""What two streams both observe: per-stream series and the features compared by cross-correlation.

A camera observes motion through its frame-difference energy (`motion_energy`: how much the image
changed between two frames) divided by the time between the two frames (a rate, so a dropped frame
does not look like a burst of motion), placed at the *midpoint* of the two frames' instants — the
difference belongs between them.
A continuous stream observes itself: its channels, their time derivatives (what an accelerometer or a
velocity command sees of a position), their magnitudes (what a camera's motion energy sees of a
velocity). Which feature of one stream matches which of the other is learned from the data
(`stages.timealign.estimate`), so no robot is assumed.

Features are computed on a fine uniform grid after the same zero-phase low-pass on both sides of a
pair, so that neither side's filtering or differentiation shifts it in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from stages.signal import derivative, interp_linear, lowpass, median_rate, midpoints, winsorize

CAMERA, CONTINUOUS = "camera", "continuous"
MOTION = "motion"  # the one channel of a camera series
_MAX_SIDE = 128  # frames are strided down to about this many pixels per side for the energy
_BLUR_PX = 1.0  # Gaussian blur (pixels, after striding) before differencing


@dataclass
class StreamSeries:
    """One stream of one episode on its own clock, ready for offset estimation."""

    name: str
    kind: str  # CAMERA | CONTINUOUS
    t: np.ndarray  # float64 [N], increasing (own clock, seconds)
    values: np.ndarray  # float64 [N, D]; a camera's motion energy is [N, 1]
    columns: list[str]
    rate_hz: float  # nominal rate of the stream itself (a camera: its frame rate)

    @property
    def span(self) -> tuple[float, float]:
        return float(self.t[0]), float(self.t[-1])


def continuous_series(name: str, t: np.ndarray, values: np.ndarray, columns: list[str], bad: np.ndarray | None = None) -> StreamSeries:
    """A continuous stream without its masked or non-finite rows. values: [N, D]."""
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values).all(axis=1) & np.isfinite(t)
    if bad is not None:
        keep &= ~bad
    return StreamSeries(name, CONTINUOUS, np.asarray(t, dtype=np.float64)[keep], values[keep], list(columns), median_rate(t))


def motion_energy(frames: np.ndarray, *, chunk: int = 128) -> np.ndarray:
    """Motion energy of consecutive frames: the L4 norm of their grey-level difference after a light blur.

    float64 [N-1] for uint8 frames [N, H, W, C] (strided to at most ~128 pixels a side first).
    Why L4 and not the mean |difference|: a camera sees the whole robot, and the links near its base
    follow the end effector with a lag (tens of ms on a 7-joint arm); a mean weights every moving
    pixel alike, so those slow, large parts pull the timing late. A higher norm weights the largest
    changes — the fast, near, high-contrast parts — the most. The 1-pixel blur keeps single-pixel
    noise and aliasing of thin parts from dominating that norm.
    """
    n = len(frames)
    stride = max(1, int(np.ceil(max(frames.shape[1], frames.shape[2]) / _MAX_SIDE)))
    out = np.empty(max(n - 1, 0))
    prev = None
    for a in range(0, n, chunk):  # bounded memory: a chunk of frames at a time, memory-mapped input
        grey = np.asarray(frames[a: a + chunk, ::stride, ::stride], dtype=np.float32).mean(axis=-1)  # [B, h, w]
        grey = ndimage.gaussian_filter(grey, (0.0, _BLUR_PX, _BLUR_PX))
        block = grey if prev is None else np.concatenate([prev, grey])
        diff = np.diff(block, axis=0)  # [B', h, w]
        start = a - (0 if prev is None else 1)
        out[start: start + len(diff)] = (diff.astype(np.float64) ** 4).mean(axis=(1, 2)) ** 0.25
        prev = grey[-1:]
    return out


def camera_series(name: str, t: np.ndarray, frame_index: np.ndarray, frames: np.ndarray, bad: np.ndarray | None = None) -> StreamSeries:
    """A camera as a motion-energy series at frame-pair midpoints; pairs touching a masked row are left out.

    A pair of identical frames (energy exactly 0) is a duplicated or frozen frame, not "no motion":
    real sensors never repeat a frame bit for bit, so such pairs are left out too.
    """
    t = np.asarray(t, dtype=np.float64)
    rate = median_rate(t)
    ordered = frames[np.asarray(frame_index)] if not _is_identity(frame_index, len(frames)) else frames
    energy = motion_energy(ordered)  # [N-1]
    dt = np.diff(t)
    keep = (dt > 0) & (energy > 0) & np.isfinite(energy)
    if bad is not None:
        keep &= ~(bad[1:] | bad[:-1])
    rate_energy = energy / np.where(dt > 0, dt, 1.0) / rate  # per nominal frame period: same scale as energy
    return StreamSeries(name, CAMERA, midpoints(t)[keep], rate_energy[keep, None], [MOTION], rate)


def _is_identity(index: np.ndarray, n: int) -> bool:
    index = np.asarray(index)
    return len(index) == n and bool(np.array_equal(index, np.arange(n)))


# ----------------------------------------------------------------------------- features


@dataclass
class Features:
    names: list[str]
    values: np.ndarray  # float64 [C, M] on the grid
    valid: np.ndarray  # bool [M]
    groups: list[tuple[int, str]]  # per feature: (derivative order, "signed" | "magnitude")


_ORDER_NAME = {0: "{}", 1: "d/dt {}", 2: "d2/dt2 {}"}


def features(series: StreamSeries, grid: np.ndarray, grid_rate: float, cutoff_hz: float, *,
             orders: tuple[int, ...], magnitudes: bool) -> Features:
    """Band-limited features of `series` on `grid` [M]: each channel at each derivative order, and with
    `magnitudes` also |channel| and the norm over channels (what a speed-like observer sees).
    """
    u, inside = interp_linear(series.t, series.values, grid)  # [M, D]
    u = lowpass(u, grid_rate, cutoff_hz, axis=0)
    # Filtering and differentiation spread edge effects inwards: trust samples a stream period inside.
    margin = 2.0 / series.rate_hz
    valid = inside & (grid >= series.t[0] + margin) & (grid <= series.t[-1] - margin)
    names: list[str] = []
    cols: list[np.ndarray] = []
    groups: list[tuple[int, str]] = []
    label = f"{series.name}.{{}}"
    for k in orders:
        d = derivative(u, grid_rate, order=k, axis=0)  # [M, D]
        for i, c in enumerate(series.columns):
            name = _ORDER_NAME[k].format(label.format(c))
            cols.append(d[:, i])
            names.append(name)
            groups.append((k, "signed"))
            # |x| of a position-like channel means nothing physical (and |x| = x for a speed): order >= 1 only
            if magnitudes and k >= 1 and series.kind == CONTINUOUS:
                cols.append(np.abs(d[:, i]))
                names.append(f"|{name}|")
                groups.append((k, "magnitude"))
        if magnitudes and k >= 1 and d.shape[1] > 1:
            cols.append(np.linalg.norm(d, axis=1))
            names.append(f"‖{_ORDER_NAME[k].format(series.name)}‖")
            groups.append((k, "magnitude"))
    values = np.stack(cols) if cols else np.empty((0, len(grid)))  # [C, M]
    # The feature list depends only on the stream's columns, never on the data, so that the sums of
    # different episodes line up when a session pools them; a constant feature just adds nothing.
    if valid.sum() > 2:
        values[:, valid] = winsorize(values[:, valid], axis=1)
    return Features(names, values, valid, groups)

