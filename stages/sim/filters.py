"""Zero-phase smoothing for the simulated sensors (no group delay, so no hidden clock offset)."""

from __future__ import annotations

import numpy as np


def lowpass_zero_phase(x: np.ndarray, sigma_steps: float) -> np.ndarray:
    """Gaussian smoothing of [T, D] along time with edge padding; σ in samples.

    Real sensors filter causally and so delay their stream; a symmetric kernel keeps the truth
    simple (a stream's offset is its clock offset) while contact impacts become bumps a few samples
    wide instead of one-sample outliers that a spike detector could not tell from injected spikes.
    """
    radius = int(np.ceil(3 * sigma_steps))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_steps) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((radius, radius), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(x.shape[1])], axis=1)
