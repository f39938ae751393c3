"""The action stream's plant response lag, measured the way the truth schema defines it.

On a synchronised recording (every stream on true time, no offset, no jitter) the lag is the
position of the peak of the cross-correlation between the commanded action and the measured motion
it causes:

    c[k] = Σ_axes Σ_n  (v[n + k] - mean v) · (a[n] - mean a)          a = action[x, y, z]  [T, 3]
                                                                       v = EE velocity       [T, 3]
    lag  = (argmax_k c[k] + δ) · dt      δ: parabolic interpolation through the peak and its neighbours

A positive lag means the motion follows the command. The correlation is computed with an FFT, the
same numbers as `scipy.signal.correlate(v, a, mode="full", method="fft")` (tests check it) without
importing scipy.signal in every recording worker (~4 s each). The robot's lag pools the episodes: the
correlations are normalised per episode and summed before taking the peak (`pooled_lag_ms`).
"""

from __future__ import annotations

import numpy as np

MAX_LAG_S = 0.25  # search window: ±250 ms covers any plausible actuation lag at 80 Hz


def action_motion_xcorr(action: np.ndarray, motion: np.ndarray, dt: float, max_lag_s: float = MAX_LAG_S) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlation of command [T, D] and response [T, D] summed over axes, lags in seconds.

    Returns (c [2K+1], lags_s [2K+1]) with K = round(max_lag_s / dt), normalised so that the
    autocorrelation of a signal with itself would peak at 1.
    """
    a = np.asarray(action, dtype=np.float64)
    v = np.asarray(motion, dtype=np.float64)
    if a.shape != v.shape or a.ndim != 2:
        raise ValueError(f"action {a.shape} and motion {v.shape} must both be [T, D]")
    a = a - a.mean(axis=0)
    v = v - v.mean(axis=0)
    c = full_xcorr(v, a).sum(axis=1)  # [2T-1]
    lags = np.arange(-(len(a) - 1), len(v))
    norm = np.sqrt(float(np.sum(a * a)) * float(np.sum(v * v)))
    c = c / norm if norm > 0 else np.zeros_like(c)
    k = int(round(max_lag_s / dt))
    keep = np.abs(lags) <= k
    return c[keep], lags[keep] * dt


def full_xcorr(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-column full cross-correlation c[k] = Σ_n v[n + k] a[n], lags -(T-1)..T-1: [2T-1, D]."""
    t = len(a)
    nfft = 1 << int(np.ceil(np.log2(2 * t - 1)))
    spec = np.fft.rfft(v, nfft, axis=0) * np.conj(np.fft.rfft(a, nfft, axis=0))
    c = np.fft.irfft(spec, nfft, axis=0)
    return np.concatenate([c[nfft - (t - 1):], c[:t]], axis=0)


def peak_lag_s(c: np.ndarray, lags_s: np.ndarray) -> float:
    """Lag (s) of the maximum of `c`, refined by a parabola through the peak and its neighbours."""
    i = int(np.argmax(c))
    dt = float(lags_s[1] - lags_s[0])
    if 0 < i < len(c) - 1:
        y0, y1, y2 = c[i - 1], c[i], c[i + 1]
        denom = y0 - 2.0 * y1 + y2
        delta = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    else:
        delta = 0.0
    return float(lags_s[i] + delta * dt)


def lag_ms(action: np.ndarray, motion: np.ndarray, dt: float) -> float:
    return 1000.0 * peak_lag_s(*action_motion_xcorr(action, motion, dt))


def pooled_lag_ms(correlations: list[np.ndarray], lags_s: np.ndarray) -> float:
    """Peak of the summed per-episode correlations (each already normalised), ms."""
    if not correlations:
        raise ValueError("no correlations to pool")
    return 1000.0 * peak_lag_s(np.sum(correlations, axis=0), lags_s)
