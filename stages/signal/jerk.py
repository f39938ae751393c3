"""Jerk and its integral: the smoothness measures of ch07 §7.10 (item 2) and the dynamics prior.

Jerk is the third time derivative of position (or the second of a velocity-like command). The
integral ∫|jerk| dt is summed over time (trapezoid) and over channels as the Euclidean norm, so it
does not depend on the sampling rate for a smooth signal.
"""

from __future__ import annotations

import numpy as np

from stages.signal.filters import derivative


def jerk(x: np.ndarray, rate_hz: float, *, of: str = "position", axis: int = 0) -> np.ndarray:
    """Jerk of `x` sampled uniformly at `rate_hz`; `of` says what x is: position, velocity or acceleration."""
    orders = {"position": 3, "velocity": 2, "acceleration": 1}
    if of not in orders:
        raise ValueError(f"`of` must be one of {sorted(orders)}, got {of!r}")
    return derivative(x, rate_hz, order=orders[of], axis=axis)


def jerk_integral(x: np.ndarray, rate_hz: float, *, of: str = "position") -> float:
    """∫ ‖jerk(t)‖ dt of x [T] or [T, D] (time first; the norm runs over the D channels)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return 0.0
    j = jerk(x, rate_hz, of=of, axis=0)
    mag = np.abs(j) if x.ndim == 1 else np.linalg.norm(j.reshape(len(j), -1), axis=1)  # [T]
    return float(np.trapezoid(mag, dx=1.0 / rate_hz))
