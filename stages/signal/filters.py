"""Filters and derivatives on uniformly sampled series (time along axis 0 unless `axis` says).

Everything used for clock-offset estimation is zero-phase (forward-backward filtering, central
differences): a filter that delays a signal would show up as a clock offset. `band_limit` also has a
causal mode, for what a physical actuator does to a command (ch07 §7.10, item 7).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import signal as sps


def _sos(kind: str, cutoff: float | tuple[float, float], rate_hz: float, order: int) -> np.ndarray:
    key = (kind, tuple(np.atleast_1d(cutoff).astype(float).tolist()), float(rate_hz), int(order))
    return _design(*key).copy()  # scipy's filters want a writable array


@functools.lru_cache(maxsize=256)
def _design(kind: str, cutoff: tuple[float, ...], rate_hz: float, order: int) -> np.ndarray:
    """Butterworth second-order sections (designing one costs more than filtering a short series)."""
    nyquist = 0.5 * rate_hz
    edges = np.atleast_1d(np.asarray(cutoff, dtype=np.float64)) / nyquist
    if np.any(edges <= 0) or np.any(edges >= 1):
        raise ValueError(f"cutoff {cutoff} Hz must lie strictly inside (0, {nyquist}) Hz for rate {rate_hz} Hz")
    sos = sps.butter(order, edges if kind == "bandpass" else float(edges[0]), btype=kind, output="sos")
    sos.setflags(write=False)  # shared through the cache: callers get copies
    return sos


def _filtfilt(sos: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    # sosfiltfilt's default padding (3 * taps) fails on short series; pad as much as exists.
    padlen = min(3 * (2 * len(sos) + 1), n - 1)
    if n < 2:
        return np.array(x, dtype=np.float64)
    return sps.sosfiltfilt(sos, x, axis=axis, padlen=max(padlen, 0))


def lowpass(x: np.ndarray, rate_hz: float, cutoff_hz: float, *, order: int = 4, axis: int = 0) -> np.ndarray:
    """Zero-phase Butterworth low-pass (effective order 2 x `order`); no time shift."""
    return _filtfilt(_sos("lowpass", cutoff_hz, rate_hz, order), np.asarray(x, dtype=np.float64), axis)


def highpass(x: np.ndarray, rate_hz: float, cutoff_hz: float, *, order: int = 2, axis: int = 0) -> np.ndarray:
    """Zero-phase Butterworth high-pass: removes slow trends before correlating."""
    return _filtfilt(_sos("highpass", cutoff_hz, rate_hz, order), np.asarray(x, dtype=np.float64), axis)


def band_limit(x: np.ndarray, rate_hz: float, cutoff_hz: float, *, order: int = 2, causal: bool = False, axis: int = 0) -> np.ndarray:
    """Band-limit a command to an actuator bandwidth.

    `causal=True` applies the filter forward only, as a real actuator would (it lags); the default
    zero-phase form keeps timing and only removes what the actuator cannot follow.
    """
    sos = _sos("lowpass", cutoff_hz, rate_hz, order)
    x = np.asarray(x, dtype=np.float64)
    if causal:
        return _causal(sos, x, axis)
    return _filtfilt(sos, x, axis)


def _causal(sos: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """Forward-only filtering started in steady state at the first sample (no start-up transient)."""
    x = np.moveaxis(x, axis, 0)  # [N, ...]
    zi = sps.sosfilt_zi(sos)  # [S, 2]
    zi = zi.reshape(zi.shape + (1,) * (x.ndim - 1)) * x[0][None, None]  # [S, 2, ...]
    y, _ = sps.sosfilt(sos, x, axis=0, zi=zi)
    return np.moveaxis(y, 0, axis)


def derivative(x: np.ndarray, rate_hz: float, *, order: int = 1, axis: int = 0) -> np.ndarray:
    """`order`-th time derivative by central differences: centred on each sample, so no half-sample shift.

    (A forward difference x[k+1] - x[k] belongs to the midpoint t[k] + dt/2, not to t[k].)
    """
    y = np.asarray(x, dtype=np.float64)
    for _ in range(order):
        if y.shape[axis] < 2:
            return np.zeros_like(y)
        # second-order one-sided differences at the ends, so repeated derivatives stay exact on quadratics
        y = np.gradient(y, 1.0 / rate_hz, axis=axis, edge_order=2 if y.shape[axis] > 2 else 1)
    return y


def winsorize(x: np.ndarray, *, k: float = 6.0, axis: int = 0) -> np.ndarray:
    """Clip each column to median ± k robust sigmas (1.4826 MAD), so one glitch cannot own a correlation."""
    x = np.asarray(x, dtype=np.float64)
    median = np.nanmedian if np.isnan(x).any() else np.median  # nanmedian is ~10x slower
    med = median(x, axis=axis, keepdims=True)
    mad = median(np.abs(x - med), axis=axis, keepdims=True) * 1.4826
    scale = np.where(mad > 0, mad, np.nanstd(x, axis=axis, keepdims=True))
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(x, med - k * scale, med + k * scale)
