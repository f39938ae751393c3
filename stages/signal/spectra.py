"""Spectra and coherence (scipy.signal), for the spectral checks of ch05 §5.8 and ch07 §7.10.

- `psd`: Welch power spectral density per channel.
- `high_frequency_ratio`: share of power above a cutoff (spectral smoothness, ch07 §7.10 item 2).
- `coherence` / `band_coherence`: magnitude-squared coherence γ²(f) between two series and its mean
  over a band (V–A spectral coherence, ch05 §5.8 checklist: γ_VA over 0.1–1 Hz ≥ 0.6).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps


def _nperseg(n: int, rate_hz: float, resolution_hz: float | None) -> int:
    want = n if resolution_hz is None else int(np.ceil(rate_hz / resolution_hz))
    return int(max(2, min(n, want)))


def psd(x: np.ndarray, rate_hz: float, *, resolution_hz: float | None = None, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD of `x` along `axis`: (freqs [F], power with `axis` replaced by F). Linear detrend per segment."""
    x = np.asarray(x, dtype=np.float64)
    nper = _nperseg(x.shape[axis], rate_hz, resolution_hz)
    return sps.welch(x, fs=rate_hz, nperseg=nper, detrend="linear", axis=axis)


def high_frequency_ratio(x: np.ndarray, rate_hz: float, cutoff_hz: float, *, axis: int = 0) -> np.ndarray:
    """Fraction of the (detrended) power above `cutoff_hz`, per channel; 0 for a constant signal."""
    f, p = psd(x, rate_hz, axis=axis)
    p = np.moveaxis(p, axis, -1)  # [..., F]
    total = p.sum(axis=-1)
    high = p[..., f > cutoff_hz].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, high / np.where(total > 0, total, 1.0), 0.0)


def coherence(x: np.ndarray, y: np.ndarray, rate_hz: float, *, resolution_hz: float | None = None,
              axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude-squared coherence γ²(f) ∈ [0, 1] of x and y along `axis`: (freqs [F], γ²)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[axis]
    # Coherence needs several segments to mean anything (one segment gives γ² ≡ 1): at most n // 4.
    nper = min(_nperseg(n, rate_hz, resolution_hz), max(2, n // 4))
    return sps.coherence(x, y, fs=rate_hz, nperseg=nper, detrend="linear", axis=axis)


def band_coherence(x: np.ndarray, y: np.ndarray, rate_hz: float, band: tuple[float, float], *,
                   resolution_hz: float | None = None, axis: int = 0) -> np.ndarray:
    """Mean γ² over the frequencies inside `band` (inclusive); NaN when the band holds no bin."""
    f, g = coherence(x, y, rate_hz, resolution_hz=resolution_hz, axis=axis)
    g = np.moveaxis(g, axis, -1)
    inside = (f >= band[0]) & (f <= band[1])
    if not inside.any():
        return np.full(g.shape[:-1], np.nan)
    return g[..., inside].mean(axis=-1)
