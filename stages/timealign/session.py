"""Pooling a session's per-episode offsets: shared offset + drift, shrunk towards each episode's own peak.

The episodes of one recording session share their clocks, so their offsets differ only by drift
(a slow, linear change over the session's time). Each episode's own estimate is noisy (short
episodes, little motion); the session's model is precise but may not hold for every episode. The
two are combined as a random-effects meta-analysis:

    own_i ~ N(θ_i, σ_i²),   θ_i ~ N(a + b·(τ_i - τ̄), β²)

with τ_i the episode's start on the reference clock, β² the between-episode spread the model
does not explain (estimated by Paule–Mandel), a + b·τ fitted by weighted least squares. An
episode's final offset is the precision-weighted mean of its own estimate and the model's
leave-one-out prediction, so it never counts its own evidence twice.

Episodes whose own estimate is unusable (no peak, or a peak pushed to the search window's edge)
take the model's prediction; episodes far from the model (robust outliers) are left out of the fit
and keep their own estimate when it is confident, else the model's, with the disagreement as
their residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SessionConfig:
    min_drift_span_s: float = 30.0  # fit drift only when the session's episodes spread over this long
    min_drift_episodes: int = 4
    outlier_sigmas: float = 5.0  # robust z beyond which an episode is left out of the session fit
    coverage: float = 2.0  # residual bound = coverage x final standard error (≈ 95 %)


@dataclass
class EpisodeOffset:
    offset_ms: float | None  # final estimate (None: nothing to go by)
    sigma_ms: float  # its standard error
    residual_ms: float  # bound on the misalignment left after correcting by offset_ms (inf: unbounded)
    source: str  # "pooled" | "episode" | "session" | "none"
    outlier: bool = False


@dataclass
class SessionFit:
    episodes: list[EpisodeOffset]
    offset_ms: float | None  # model at the session's mean episode time
    drift_ppm: float | None  # None: drift not fitted
    between_ms: float  # spread of episodes the model does not explain
    used: int  # episodes in the fit


def _wls(x: np.ndarray, w: np.ndarray, tau: np.ndarray, linear: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of x on [1, tau]: (coefficients [p], covariance [p, p])."""
    a = np.column_stack([np.ones_like(tau), tau]) if linear else np.ones((len(tau), 1))
    aw = a * w[:, None]
    cov = np.linalg.pinv(a.T @ aw)
    return cov @ (aw.T @ x), cov


def _paule_mandel(x: np.ndarray, var: np.ndarray, tau: np.ndarray, linear: bool) -> float:
    """Between-episode variance β² such that the weighted residual sum of squares equals its d.o.f."""
    p = 2 if linear else 1
    dof = len(x) - p
    if dof <= 0:
        return 0.0

    def q(b2: float) -> float:
        w = 1.0 / (var + b2)
        coef, _ = _wls(x, w, tau, linear)
        pred = coef[0] + (coef[1] * tau if linear else 0.0)
        return float((w * (x - pred) ** 2).sum())

    if q(0.0) <= dof:
        return 0.0
    lo, hi = 0.0, float(np.var(x) * 10 + var.max())
    for _ in range(60):  # bisection: q decreases monotonically in β²
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if q(mid) > dof else (lo, mid)
    return 0.5 * (lo + hi)


def fit_session(own_ms: list[float | None], sigma_ms: list[float], usable: list[bool], times_s: list[float],
                cfg: SessionConfig, *, pooled_ms: float | None = None, pooled_sigma_ms: float = float("inf")) -> SessionFit:
    """Final per-episode offsets of one stream in one session (see the module docstring).

    `usable[i]`: episode i's own peak is evidence (inside its search window, above chance).
    `pooled_ms`: the peak of the session's pooled correlation, with its standard error, used when
    no episode is evidence on its own (None when that peak is not above chance either).
    """
    n = len(own_ms)
    own = np.array([np.nan if v is None else v for v in own_ms], dtype=np.float64)
    sig = np.asarray(sigma_ms, dtype=np.float64)
    usable = np.isfinite(own) & np.isfinite(sig) & (sig > 0) & np.asarray(usable, dtype=bool)
    tau_all = np.asarray(times_s, dtype=np.float64)
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        # nothing to go by but the session's pooled peak (many weak episodes can add up to a strong one)
        return _pooled_only(own, sig, usable, cfg, pooled_ms, pooled_sigma_ms)
    # robust outliers: far from the weighted median in units of their own error and the robust spread
    med = float(np.median(own[idx]))
    spread = 1.4826 * float(np.median(np.abs(own[idx] - med))) if len(idx) > 2 else 0.0
    z = np.abs(own - med) / np.sqrt(sig**2 + spread**2)
    inlier = usable & (z <= cfg.outlier_sigmas)
    fit_idx = np.flatnonzero(inlier)
    if len(fit_idx) == 0:
        # the usable episodes disagree with one another (two confident peaks far apart): no session
        # model to fit; each keeps its own peak, bounded by its distance from the pooled peak
        return _pooled_only(own, sig, usable, cfg, pooled_ms, pooled_sigma_ms)
    tau0 = float(tau_all[fit_idx].mean())
    tau = tau_all - tau0
    linear = len(fit_idx) >= cfg.min_drift_episodes and float(np.ptp(tau_all[fit_idx])) >= cfg.min_drift_span_s
    between2 = _paule_mandel(own[fit_idx], sig[fit_idx] ** 2, tau[fit_idx], linear)
    weights = 1.0 / (sig**2 + between2)

    def predict(members: np.ndarray, i: int) -> tuple[float, float]:
        """Model prediction for episode i from `members` (mean, variance incl. the between spread)."""
        lin = linear and len(members) >= 3
        coef, cov = _wls(own[members], weights[members], tau[members], lin)
        basis = np.array([1.0, tau[i]]) if lin else np.array([1.0])
        return float(basis @ coef), float(basis @ cov @ basis) + between2

    coef, _ = _wls(own[fit_idx], weights[fit_idx], tau[fit_idx], linear)
    out = []
    for i in range(n):
        others = fit_idx[fit_idx != i]
        if len(others) == 0:
            # a session of one: the episode's own estimate is all there is
            out.append(_own(own[i], sig[i], cfg) if usable[i] else EpisodeOffset(None, np.inf, np.inf, "none"))
            continue
        m, v = predict(others, i)
        if not usable[i]:
            out.append(EpisodeOffset(m, np.sqrt(v), cfg.coverage * np.sqrt(v), "session"))
        elif inlier[i]:
            var = 1.0 / (1.0 / sig[i] ** 2 + 1.0 / v)
            final = var * (own[i] / sig[i] ** 2 + m / v)
            out.append(EpisodeOffset(final, np.sqrt(var), cfg.coverage * np.sqrt(var), "pooled"))
        else:
            # the episode disagrees with its session: a confident own peak wins, but the
            # disagreement bounds how well it is known
            disagreement = abs(own[i] - m)
            out.append(EpisodeOffset(own[i], sig[i], max(cfg.coverage * sig[i], disagreement), "episode", outlier=True))
    drift = float(coef[1]) * 1000.0 if linear else None  # ms per s -> ppm
    return SessionFit(out, float(coef[0]), drift, float(np.sqrt(between2)), len(fit_idx))


def _pooled_only(own: np.ndarray, sig: np.ndarray, usable: np.ndarray, cfg: SessionConfig, pooled_ms: float | None,
                 pooled_sigma_ms: float) -> SessionFit:
    """No session model: the session's pooled peak for the episodes without evidence of their own
    (None without one); a usable episode keeps its own peak, its bound widened to its distance from
    the pooled peak."""
    out = []
    for i in range(len(own)):
        if usable[i]:
            bound = cfg.coverage * float(sig[i])
            disagreement = 0.0 if pooled_ms is None else abs(float(own[i]) - pooled_ms)
            out.append(EpisodeOffset(float(own[i]), float(sig[i]), max(bound, disagreement), "episode", outlier=disagreement > bound))
        elif pooled_ms is not None:
            sigma = float(pooled_sigma_ms)
            out.append(EpisodeOffset(pooled_ms, sigma, cfg.coverage * sigma, "session"))
        else:
            out.append(EpisodeOffset(None, np.inf, np.inf, "none"))
    return SessionFit(out, pooled_ms, None, float("nan"), 0)


def _own(value: float, sigma: float, cfg: SessionConfig) -> EpisodeOffset:
    return EpisodeOffset(float(value), float(sigma), cfg.coverage * float(sigma), "episode")
