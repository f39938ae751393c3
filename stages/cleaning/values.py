"""Value rules on continuous streams: NaN/Inf, negative speeds, spikes, jerk outliers (ch07 §7.7:
行动轨迹去毛刺（jerk 裁剪、速度负值异常）), and saturated or dead dimensions.

All detectors work on one column at a time, vectorised over its samples.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stages.cleaning.base import EpisodeWork, Rule, StreamWork, interpolate_rows, rule, runs

# ----------------------------------------------------------------------------- detectors


def _windows(x: np.ndarray, window: int, *, odd: bool = False) -> np.ndarray:
    """Sliding windows over axis 0 of x [n, ...] -> view [n, ..., window], edges reflected
    (`odd`: 2·x0 − x[k], which keeps a linear trend through the edge)."""
    half = window // 2
    pad = [(half, half)] + [(0, 0)] * (x.ndim - 1)
    if len(x) > half:
        padded = np.pad(x, pad, mode="reflect", reflect_type="odd" if odd else "even")
    else:
        padded = np.pad(x, pad, mode="edge")
    return sliding_window_view(padded, window, axis=0)


def quadratic_smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Savitzky–Golay smoothing along axis 0 (local least-squares quadratic over an odd `window`)."""
    half = window // 2
    k = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.linalg.pinv(np.stack([np.ones_like(k), k, k**2], axis=1))[0]  # [window]: the fit's value at k=0
    return _windows(x, window, odd=True) @ weights


def isolation(x: np.ndarray, window: int) -> np.ndarray:
    """How far each sample is from every other sample of its window (axis 0).

    A glitch is unlike all its neighbours; a value that recurs within the window (a command that
    chatters with a period of up to window // 2 rows, a step that stays, a physical impulse a few
    samples wide) is part of the signal.
    """
    half = window // 2
    view = _windows(x, window)  # [n, ..., window], sample i at position `half`
    others = [j for j in range(window) if j != half]
    return np.abs(view[..., others] - x[..., None]).min(axis=-1)


def _range(x: np.ndarray) -> np.ndarray:
    """Robust range per column (q99 − q01) of x [n, ...]."""
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return q99 - q01


def neighbour_residual(x: np.ndarray) -> np.ndarray:
    """r_i = x_i − (x_{i−1} + x_{i+1}) / 2 along axis 0 (0 at both ends): what a single sample adds
    to the line through its neighbours. A spike of height h reads [−h/2, h, −h/2]; smooth motion,
    whatever its slope, reads its (small) curvature."""
    r = np.zeros_like(x, dtype=np.float64)
    r[1:-1] = x[1:-1] - 0.5 * (x[:-2] + x[2:])
    return r


def _nan_windows(x: np.ndarray, window: int) -> np.ndarray:
    """Sliding windows over axis 0 of x [n, ...] -> [n, ..., window], NaN beyond the ends (no
    mirrored copies of a sample can land in its own window)."""
    half = window // 2
    pad = [(half, half)] + [(0, 0)] * (x.ndim - 1)
    return sliding_window_view(np.pad(x.astype(np.float64), pad, constant_values=np.nan), window, axis=0)


def spike_flags(x: np.ndarray, *, window: int, sigmas: float, spread: float, abs_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Single-sample spikes in x [n] or [n, D] -> (bool spikes, replacement values), same shape.

    With r the `neighbour_residual`, a sample (not the first or last: one neighbour cannot tell a
    spike from a step) is a spike when
      (1) |r| > threshold = max(sigmas × local robust σ, spread × the column's standard deviation,
          abs_floor), the local σ being 1.4826 × median |r| over the window without rows i−1..i+1
          (the three residuals a spike itself disturbs);
      (2) it has a spike's shape: its neighbours agree with each other (|x_{i+1} − x_{i−1}| < |r| / 2)
          and their own residuals echo it at −r/2 (within |r| / 4), where the smooth peak of a
          physical impulse (an accelerometer at a contact) has neighbours bent the same way;
      (3) it is isolated: no sample of the window beyond its neighbours has a residual within
          threshold / 2 of it (a command that chatters repeats its pattern, a glitch does not).
    The replacement is the mean of the two neighbours.
    """
    r = neighbour_residual(x)
    half = window // 2
    view = _nan_windows(r, window)  # [n, ..., window], sample i at position `half`
    others = [j for j in range(window) if abs(j - half) > 1]  # the window without the spike's own footprint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows of very short streams
        local = 1.4826 * np.nanmedian(np.abs(view[..., others]), axis=-1)
    threshold = np.fmax(np.maximum(spread * np.std(x, axis=0), abs_floor), sigmas * local)
    size = np.abs(r)
    disagree = np.zeros_like(r)
    disagree[1:-1] = np.abs(x[2:] - x[:-2])
    echo = np.full_like(r, np.inf)  # how far the neighbours' residuals are from the spike's −r/2
    echo[1:-1] = np.maximum(np.abs(r[:-2] + 0.5 * r[1:-1]), np.abs(r[2:] + 0.5 * r[1:-1]))
    isolated = np.fmin.reduce(np.abs(view[..., others] - r[..., None]), axis=-1)
    isolated = np.where(np.isnan(isolated), np.inf, isolated)
    bad = (size > threshold) & (disagree < 0.5 * size) & (echo < 0.25 * size) & (isolated > 0.5 * threshold)
    bad[0] = bad[-1] = False
    return bad, x - r


def huber_clip(x: np.ndarray, *, window: int, sigmas: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber-style jerk clipping, x [n] or [n, D] -> (clipped x, bool samples changed), same shape.

    The residual against a local quadratic fit (Savitzky–Golay, `window` samples) is what carries the
    jerk. Where it is an isolated burr (larger than c and unlike its neighbours, see `isolation`) it is
    passed through Huber's ψ: clipped to ±c, with c = max(sigmas × robust σ of the residual,
    floor × the column's robust range). Ordinary motion and sustained chatter are untouched.
    """
    if len(x) < window:
        return x, np.zeros(x.shape, bool)
    smooth = quadratic_smooth(x, window)
    resid = x - smooth
    med = np.median(resid, axis=0)
    sigma = 1.4826 * np.median(np.abs(resid - med), axis=0)
    c = np.maximum(sigmas * sigma, floor * _range(x))
    burr = (np.abs(resid) > c) & (isolation(x, window) > c)
    clipped = np.where(burr, np.clip(resid, -c, c), resid)
    return smooth + clipped, burr


def is_discrete(x: np.ndarray, levels: int) -> bool:
    """True when a column takes at most `levels` distinct values (a gripper open/close command)."""
    return len(np.unique(x[: 4096])) <= levels and len(np.unique(x)) <= levels


def _columns(stream: StreamWork, patterns: tuple[str, ...]) -> list[str]:
    return [c for c in stream.value_columns() if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def _streams(work: EpisodeWork, names: tuple[str, ...]) -> list[StreamWork]:
    return [s for n, s in work.streams.items() if not names or n in names]


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class NanParams:
    max_fix_rows: int = 8  # runs up to this many rows are interpolated; longer runs are masked


@rule("values.nan_inf", kind="nan_inf", actions=("fix", "mask", "drop", "flag"), params=NanParams)
def nan_inf(work: EpisodeWork, rule: Rule) -> None:
    """Non-finite values. fix: linear interpolation over the row index from the finite neighbours
    (runs longer than `max_fix_rows` are masked instead); rows whose clock `t` is not finite are
    dropped whatever the action."""
    for stream in work.all_streams().values():
        bad_t = ~np.isfinite(stream.t)
        for start, end in runs(bad_t):
            work.report(rule, stream=stream, column="t", rows=(start, end), action="fix", detail={"rows": int(end - start)})
        if bad_t.any():
            stream.take(np.flatnonzero(~bad_t))
        for col in ([] if stream.is_camera else stream.value_columns()):
            x = stream.values(col)
            bad = ~np.isfinite(x)
            if not bad.any():
                continue
            if bad.all():
                work.report(rule, stream=stream, column=col, rows=(0, len(x)), action="drop", detail={"rows": len(x)})
                work.drop(rule, f"`{stream.name}.{col}` has no finite value")
                continue
            long_bad = np.zeros_like(bad)
            for start, end in runs(bad):
                long = end - start > rule.params.max_fix_rows
                action = "mask" if (rule.action == "fix" and long) else rule.action
                work.report(rule, stream=stream, column=col, rows=(start, end), action=action, detail={"rows": int(end - start)})
                if action == "mask":
                    work.mask(rule, stream, *stream.time_span(start - 1, end + 1))
                    long_bad[start:end] = True
            if rule.action in ("fix", "mask"):
                # masked runs are still filled, so later rules and resampling see finite numbers
                stream.set(col, interpolate_rows(x, bad), bad.sum())
            if rule.action == "drop":
                work.drop(rule, f"`{stream.name}.{col}` has {int(bad.sum())} non-finite value(s)")


@dataclass(frozen=True)
class SpeedParams:
    columns: tuple[str, ...] = ("speed", "*_speed", "speed_*")  # glob patterns of non-negative speed magnitudes
    tolerance: float = 0.01  # sensor noise allowance: only values below -tolerance are glitches (column units, m/s)


@rule("values.negative_speed", kind="negative_speed", actions=("fix", "mask", "flag"), params=SpeedParams)
def negative_speed(work: EpisodeWork, rule: Rule) -> None:
    """Negative values in a speed magnitude (which cannot be negative). fix: interpolate the run from
    its neighbours."""
    for stream in work.streams.values():
        for col in _columns(stream, rule.params.columns):
            x = stream.values(col)
            bad = x < -rule.params.tolerance
            for start, end in runs(bad, merge=1):
                work.report(rule, stream=stream, column=col, rows=(start, end), detail={"min": float(x[start:end].min())})
                if rule.action == "mask":
                    work.mask(rule, stream, *stream.time_span(start - 1, end + 1))
            if bad.any() and rule.action == "fix":
                stream.set(col, interpolate_rows(x, bad), bad.sum())


@dataclass(frozen=True)
class SpikeParams:
    streams: tuple[str, ...] = ()  # continuous streams to check; empty = all
    window: int = 15  # rows (odd) over which the local noise and the chatter test look: ±7
    sigmas: float = 10.0  # threshold in local robust σ of the neighbour residual
    spread: float = 1.5  # ... and at least this many standard deviations of the column
    abs_floor: float = 1e-6  # ... and at least this (a constant column has std 0)
    discrete_levels: int = 2  # two-level columns (an open/close command) are skipped; a spike adds a third level


@rule("values.spike", kind="spike", actions=("fix", "mask", "flag"), params=SpikeParams)
def spike(work: EpisodeWork, rule: Rule) -> None:
    """Single-sample spikes: a sample far off the line through its two neighbours, which agree with
    each other, in a stretch where nothing similar recurs. fix: replace it by its neighbours' mean."""
    p = rule.params
    for stream in _streams(work, p.streams):
        if len(stream) < p.window:
            continue
        cols = [c for c in stream.value_columns() if not is_discrete(stream.values(c), p.discrete_levels)]
        if not cols:
            continue
        x = np.stack([stream.values(c) for c in cols], axis=1)  # [n, D], one vectorised pass per stream
        bad, med = spike_flags(x, window=p.window, sigmas=p.sigmas, spread=p.spread, abs_floor=p.abs_floor)
        for d in np.flatnonzero(bad.any(axis=0)):
            col = cols[d]
            for start, end in runs(bad[:, d], merge=1):
                peak = start + int(np.argmax(np.abs(x[start:end, d] - med[start:end, d])))
                work.report(rule, stream=stream, column=col, rows=(start, end),
                            detail={"peak_row": int(stream.source_row[peak]), "deviation": float(x[peak, d] - med[peak, d])})
                if rule.action == "mask":
                    work.mask(rule, stream, *stream.time_span(start - 1, end + 1))
            if rule.action == "fix":
                stream.set(col, np.where(bad[:, d], med[:, d], x[:, d]), bad[:, d].sum())


@dataclass(frozen=True)
class JerkParams:
    streams: tuple[str, ...] = ("action",)  # streams whose jerk is clipped
    window: int = 11  # Savitzky–Golay window (odd) of the local quadratic fit (and the isolation test)
    sigmas: float = 10.0  # Huber threshold c in robust σ of the residual
    floor: float = 0.1  # ... and at least this fraction of the column's robust range
    discrete_levels: int = 3  # columns with at most this many distinct values are skipped


@rule("values.jerk", kind="jerk_outlier", actions=("fix", "flag"), severity="info", params=JerkParams)
def jerk(work: EpisodeWork, rule: Rule) -> None:
    """Jerk outliers (burrs) left after spike removal. fix: Huber-style jerk clipping of the residual
    against a local quadratic fit."""
    p = rule.params
    for stream in _streams(work, p.streams):
        cols = [c for c in stream.value_columns() if not is_discrete(stream.values(c), p.discrete_levels)]
        if not cols or len(stream) < p.window:
            continue
        x = np.stack([stream.values(c) for c in cols], axis=1)  # [n, D]
        clipped, changed = huber_clip(x, window=p.window, sigmas=p.sigmas, floor=p.floor)
        for d in np.flatnonzero(changed.any(axis=0)):
            for start, end in runs(changed[:, d], merge=2):
                work.report(rule, stream=stream, column=cols[d], rows=(start, end),
                            detail={"max_change": float(np.abs(clipped[start:end, d] - x[start:end, d]).max())})
            if rule.action == "fix":
                stream.set(cols[d], clipped[:, d], changed[:, d].sum())


@dataclass(frozen=True)
class DeadParams:
    min_rows: int = 20  # shorter streams are not judged


@dataclass(frozen=True)
class SaturatedParams:
    saturated_fraction: float = 0.5  # a column at its min or max in more than this fraction of rows
    min_rows: int = 20  # shorter streams are not judged


@rule("values.dead_dimension", kind="dead_dimension", actions=("flag",), severity="info", params=DeadParams)
def dead_dimension(work: EpisodeWork, rule: Rule) -> None:
    """Columns that never change over the episode (a dead sensor, or an unused command)."""
    for stream in work.streams.values():
        if len(stream) < rule.params.min_rows:
            continue
        for col in stream.value_columns():
            x = stream.values(col)
            if np.nanmax(x) == np.nanmin(x):
                work.report(rule, stream=stream, column=col, rows=(0, len(x)), detail={"value": float(x[0])})


@rule("values.saturated_dimension", kind="saturated_dimension", actions=("flag",), severity="info", params=SaturatedParams)
def saturated_dimension(work: EpisodeWork, rule: Rule) -> None:
    """Columns pinned at their extreme value for most of the episode (clipped commands or sensors)."""
    for stream in work.streams.values():
        if len(stream) < rule.params.min_rows:
            continue
        for col in stream.value_columns():
            x = stream.values(col)
            lo, hi = np.nanmin(x), np.nanmax(x)
            if lo == hi:
                continue  # dead, not saturated
            share = max(np.mean(x == lo), np.mean(x == hi))
            if share > rule.params.saturated_fraction:
                work.report(rule, stream=stream, column=col, rows=(0, len(x)), detail={"fraction": round(float(share), 4)})
