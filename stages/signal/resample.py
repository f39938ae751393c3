"""Irregularly sampled series onto uniform grids, and nearest-in-time lookup.

Sensor logs arrive with their own rate and jitter; every comparison between two streams starts by
putting both on one uniform grid. Continuous streams are interpolated linearly (exact for linear
signals, zero-phase: no time shift); cameras are looked up nearest-in-time (a frame is never blended).
"""

from __future__ import annotations

import numpy as np


def uniform_grid(start: float, stop: float, rate_hz: float) -> np.ndarray:
    """Instants start, start + 1/rate, ... up to `stop` inclusive (within 1e-9 s). float64 [M]."""
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if stop < start:
        return np.empty(0, dtype=np.float64)
    n = int(np.floor((stop - start) * rate_hz + 1e-9)) + 1
    return start + np.arange(n, dtype=np.float64) / rate_hz


def interp_linear(t: np.ndarray, values: np.ndarray, t_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of `values` [N, D] (or [N]) sampled at increasing `t` [N] onto `t_new` [M].

    Returns (out [M, D] float64, inside [M] bool). Points outside [t[0], t[-1]] hold the nearest end
    value and are marked `inside=False` so that callers can mask them instead of trusting a clamp.
    """
    t = np.asarray(t, dtype=np.float64)
    t_new = np.asarray(t_new, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    squeeze = v.ndim == 1
    v = v[:, None] if squeeze else v  # [N, D]
    if len(t) == 0:
        out = np.full((len(t_new), v.shape[1]), np.nan)
        return (out[:, 0] if squeeze else out), np.zeros(len(t_new), dtype=bool)
    if len(t) == 1:
        out = np.repeat(v, len(t_new), axis=0)
        inside = np.isclose(t_new, t[0])
        return (out[:, 0] if squeeze else out), inside
    # One searchsorted shared by all columns instead of D calls to np.interp.
    i = np.clip(np.searchsorted(t, t_new, side="right") - 1, 0, len(t) - 2)  # [M]
    t0, t1 = t[i], t[i + 1]
    w = np.clip((t_new - t0) / np.where(t1 > t0, t1 - t0, 1.0), 0.0, 1.0)[:, None]  # [M, 1]
    out = v[i] * (1.0 - w) + v[i + 1] * w  # [M, D]
    inside = (t_new >= t[0]) & (t_new <= t[-1])
    return (out[:, 0] if squeeze else out), inside


def nearest_index(t: np.ndarray, t_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the sample of increasing `t` [N] nearest to each of `t_new` [M], and |time error| [M].

    Ties go to the earlier sample (a frame that already exists at that instant).
    """
    t = np.asarray(t, dtype=np.float64)
    t_new = np.asarray(t_new, dtype=np.float64)
    if len(t) == 0:
        raise ValueError("nearest_index needs at least one sample")
    right = np.clip(np.searchsorted(t, t_new, side="left"), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    pick_left = np.abs(t_new - t[left]) <= np.abs(t[right] - t_new)
    idx = np.where(pick_left, left, right)
    return idx, np.abs(t[idx] - t_new)


def midpoints(t: np.ndarray) -> np.ndarray:
    """Instants halfway between consecutive samples: where a difference x[k+1] - x[k] belongs. [N-1]"""
    t = np.asarray(t, dtype=np.float64)
    return 0.5 * (t[1:] + t[:-1])


def median_rate(t: np.ndarray) -> float:
    """Nominal rate (Hz) of a jittered series: 1 / median positive sample spacing."""
    dt = np.diff(np.asarray(t, dtype=np.float64))
    dt = dt[dt > 0]
    if len(dt) == 0:
        raise ValueError("a rate needs at least two distinct timestamps")
    return float(1.0 / np.median(dt))
