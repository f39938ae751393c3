"""Clock offset of one stream against the reference, by FFT cross-correlation of shared observables.

For a pair (target stream, reference stream) in one session:

1. `plan_pair` chooses the views (`stages.timealign.views`: which reference observable explains
   each target feature, e.g. camera motion energy ~ end-effector speed, imu ~ d²/dt² position,
   action ~ d/dt position) from the pooled correlations of up to `selection_episodes` episodes, and
   keeps those that are significant and agree in lag with the strongest.
2. `estimate_session` correlates every episode's views (FFT, masked Pearson per lag), pools the
   sums over the session (they add up) and takes the session's peak of the views' weighted mean
   (weights ρ²/(1-ρ²), their signal-to-noise ratio): ch05 §5.7, maximise the cross-correlation to
   find the alignment point.
3. Each episode then takes its own peak within ±refine_ms of the session's, interpolated to a
   fraction of a grid step, with a standard error and a significance (`_episode_peak`);
   `stages.timealign.session` pools these into the final offsets.

Lag convention (stages.signal.xcorr): the target is the reference delayed by `lag`, so for sensors
the lag is the target clock minus the reference clock. For a command stream the lag also holds the
plant's response lag (added back by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.signal import CORRELATORS, PairSums, find_peak, uniform_grid
from stages.timealign.observables import CAMERA, Features, StreamSeries, features
from stages.timealign.views import View, candidates


@dataclass
class EstimateConfig:
    max_offset_ms: float = 1000.0  # search range of the offsets, ±
    refine_ms: float = 100.0  # an episode's own peak is searched this close to its session's peak
    band_fraction: float = 0.35  # zero-phase low-pass at this fraction of the slower stream's rate (below its Nyquist, 0.5)
    min_grid_hz: float = 200.0  # fine grid: parabolic peak interpolation is unbiased well below 1 ms here
    max_grid_hz: float = 1000.0
    min_rho: float = 0.2  # a view correlating less than this carries no usable timing
    min_prominence: float = 0.02  # nor does one whose peak stands no higher than its best rival
    min_z: float = 4.0  # a peak's Fisher z below this is what chance gives over the lags and mixes searched
    min_confidence: float = 0.05  # an episode's own peak needs at least this prominence to count
    method: str = "fft"  # stages.signal.CORRELATORS: "fft", or "direct" (the O(N·L) baseline)
    relative_rho: float = 0.5  # views weaker than this fraction of the best one are left out
    view_agreement_ms: float = 40.0  # views whose session peaks lie farther from the best one's are left out
    selection_episodes: int = 12  # episodes of a session used to choose the views
    min_overlap: float = 0.8  # a lag counts when this fraction of the best overlap is covered


REFERENCE_ORDERS = (0, 1, 2)  # position-, velocity- and acceleration-like views of the reference
TARGET_ORDERS = ((0,), (1,))  # the target as it is; its derivative only when nothing matches it as it is


@dataclass
class PairPlan:
    target: str
    reference: str
    grid_hz: float
    cutoff_hz: float
    max_lag: int  # samples of the fine grid
    target_orders: tuple[int, ...] = (0,)  # derivative orders of the target's features
    views: list[View] = field(default_factory=list)
    session_lag_ms: float | None = None
    session_rho: float = 0.0
    session_confidence: float = 0.0
    session_sigma_ms: float = float("inf")
    session_z: float = 0.0
    bartlett: float = 1.0  # the views' weighted Bartlett factor (see View)

    def to_json(self) -> dict:
        return {
            "grid_hz": self.grid_hz, "band_hz": self.cutoff_hz,
            "views": [{"target": v.target, "reference": v.reference, "rho": v.rho, "weight": v.weight, "lag_ms": v.lag_ms,
                       "n_eff_per_s": self.grid_hz / v.bartlett} for v in self.views],
            "session_lag_ms": self.session_lag_ms, "session_rho": self.session_rho,
            "session_confidence": self.session_confidence, "session_z": self.session_z,
        }


@dataclass
class EpisodeEstimate:
    lag_ms: float | None  # None: no usable peak
    rho: float = 0.0  # the weighted correlation at the peak
    confidence: float = 0.0  # peak height above the best rival alignment, in [0, 1]
    sigma_ms: float = float("inf")  # standard error of lag_ms from the peak's sharpness and height
    at_edge: bool = False  # the peak sits on the edge of the window around the session's peak
    overlap_s: float = 0.0
    z: float = 0.0  # Fisher z of the peak (`fisher_z`): how far above chance it is
    usable: bool = False  # a real peak: inside the window, above chance, standing above its rivals


def _rate(series: list[StreamSeries]) -> float:
    return float(np.median([s.rate_hz for s in series]))


def new_plan(target: str, reference: str, target_rate: float, reference_rate: float, cfg: EstimateConfig) -> PairPlan:
    slow = min(target_rate, reference_rate)
    cutoff = cfg.band_fraction * slow
    grid_hz = float(np.clip(max(target_rate, reference_rate, 8 * cutoff), cfg.min_grid_hz, cfg.max_grid_hz))
    return PairPlan(target, reference, grid_hz, cutoff, int(np.ceil(cfg.max_offset_ms / 1000.0 * grid_hz)))


def pair_features(target: StreamSeries, ref: StreamSeries, plan: PairPlan) -> tuple[Features, Features]:
    """Both streams' features on one fine grid spanning both (each valid over its own span)."""
    grid = uniform_grid(min(target.t[0], ref.t[0]), max(target.t[-1], ref.t[-1]), plan.grid_hz)
    ft = features(target, grid, plan.grid_hz, plan.cutoff_hz, orders=plan.target_orders, magnitudes=False)
    fr = features(ref, grid, plan.grid_hz, plan.cutoff_hz, orders=REFERENCE_ORDERS, magnitudes=True)
    return ft, fr


def plan_pair(targets: list[StreamSeries], refs: list[StreamSeries], cfg: EstimateConfig) -> PairPlan:
    """Choose the views of a pair from a session's episodes (targets[i] and refs[i]: one episode).

    For every target feature and every reference family F, the share of the target's variance that
    a mix of F explains at lag d is R²(d) = 1 - min_β Σ(y - βx)² / Σ(y - ȳ)², solved exactly over each
    lag's overlap, adjusted for |F| against the pooled number of independent samples.
    """
    plan = new_plan(targets[0].name, refs[0].name, _rate(targets), _rate(refs), cfg)
    step = max(1, len(targets) // cfg.selection_episodes)
    chosen = list(zip(targets, refs))[::step][: cfg.selection_episodes]
    for orders in TARGET_ORDERS:
        plan.target_orders = orders
        feats = [pair_features(t, r, plan) for t, r in chosen]  # computed once, used twice
        found = candidates(feats, max_lag=plan.max_lag, cutoff_hz=plan.cutoff_hz, grid_hz=plan.grid_hz,
                           min_overlap=cfg.min_overlap, min_rho=cfg.min_rho, correlator=CORRELATORS.get(cfg.method),
                           magnitudes_only=targets[0].kind == CAMERA)
        plan.views = _agreeing(found, feats, plan, cfg)
        if plan.views:
            break
    return plan


def _masked_rho(rho: np.ndarray, n: np.ndarray, min_overlap: float) -> np.ndarray:
    if n.max() <= 0:
        return np.full_like(rho, np.nan)
    rho = rho.copy()
    rho[..., n < min_overlap * n.max()] = np.nan
    return rho


def _agreeing(candidates: list[View], feats: list[tuple[Features, Features]], plan: PairPlan, cfg: EstimateConfig) -> list[View]:
    """Peak of each candidate view over the selection episodes; keep the strong ones that agree in lag."""
    if not candidates:
        return []
    pooled = None
    for ft, fr in feats:
        sums = _view_sums(ft, fr, plan, candidates, cfg)
        pooled = sums if pooled is None else pooled + sums
    rho = _masked_rho(pooled.rho(), pooled.n, cfg.min_overlap)  # [V, K]
    bartlett = _bartlett(feats, plan, candidates, cfg)  # [V]
    kept = []
    for v, curve, b in zip(candidates, rho, bartlett):
        peak = find_peak(curve, pooled.lags)
        # a flat curve (a ramp or a counter matches any shift of itself) has no timing in it
        if peak is None or peak.at_edge or peak.value < cfg.min_rho or peak.prominence < cfg.min_prominence:
            continue
        n = float(pooled.n[int(np.argmin(np.abs(pooled.lags - peak.lag)))])
        if fisher_z(peak.value, n / b) < cfg.min_z:
            continue  # no stronger than the best of many chance correlations
        v.lag_ms = 1000.0 * peak.lag / plan.grid_hz
        v.rho = float(min(peak.value, 0.999))
        v.bartlett = float(b)
        kept.append(v)
    if not kept:
        return []
    kept.sort(key=lambda v: -v.rho)
    anchor = kept[0]
    views = [v for v in kept if v.rho >= cfg.relative_rho * anchor.rho and abs(v.lag_ms - anchor.lag_ms) <= cfg.view_agreement_ms]
    for v in views:
        v.weight = v.rho**2 / (1.0 - v.rho**2)  # the view's signal-to-noise ratio
    return views


def fisher_z(rho: float, n_eff: float) -> float:
    """Significance of a correlation ρ over n_eff independent samples: atanh(ρ)·sqrt(n_eff - 3).

    Under no relation it is about standard normal; the max over the hundreds of lags and mixes
    searched reaches 3–3.5, so `min_z` = 4 leaves chance peaks out.
    """
    if n_eff <= 3 or not np.isfinite(rho):
        return 0.0
    return float(np.arctanh(np.clip(rho, -0.9999, 0.9999)) * np.sqrt(n_eff - 3.0))


def _bartlett(feats: list[tuple[Features, Features]], plan: PairPlan, views: list[View], cfg: EstimateConfig) -> np.ndarray:
    """Per view, Σ_k r_y(k)·r_z(k) over the main lobe (Bartlett): autocorrelated samples are not
    independent, and N / Σ r_y r_z of them count as independent when judging a correlation. [V]"""
    idx = np.arange(len(views))
    ay = az = None
    for ft, fr in feats:
        y, z = _view_signals(ft, fr, views)
        sums = CORRELATORS.get(cfg.method).sums
        sy = sums(y, y, plan.max_lag, y_mask=ft.valid, x_mask=ft.valid).pairs(idx, idx)
        sz = sums(z, z, plan.max_lag, y_mask=fr.valid, x_mask=fr.valid).pairs(idx, idx)
        ay, az = (sy, sz) if ay is None else (ay + sy, az + sz)
    prod = np.nan_to_num(ay.rho() * az.rho())  # [V, K], 1 at lag 0
    center = int(np.flatnonzero(ay.lags == 0)[0])
    out = np.ones(len(views))
    for v in range(len(views)):
        right = prod[v, center:]
        left = prod[v, center::-1]
        stop_r = int(np.argmax(right <= 0)) if (right <= 0).any() else len(right)
        stop_l = int(np.argmax(left <= 0)) if (left <= 0).any() else len(left)
        out[v] = max(1.0, right[:stop_r].sum() + left[1:stop_l].sum())
    return out


def view_sums(target: StreamSeries, ref: StreamSeries, plan: PairPlan, cfg: EstimateConfig) -> PairSums:
    """Correlation sums of each of the plan's views (target feature vs its reference mix) on one episode."""
    ft, fr = pair_features(target, ref, plan)
    return _view_sums(ft, fr, plan, plan.views, cfg)


def _view_signals(ft: Features, fr: Features, views: list[View]) -> tuple[np.ndarray, np.ndarray]:
    y = ft.values[[v.ti for v in views]]  # [V, M]
    z = np.stack([v.coef @ fr.values[v.ri] for v in views])  # [V, M]: each view's reference mix
    return y, z


def _view_sums(ft: Features, fr: Features, plan: PairPlan, views: list[View], cfg: EstimateConfig) -> PairSums:
    y, z = _view_signals(ft, fr, views)
    idx = np.arange(len(views))
    return CORRELATORS.get(cfg.method).sums(y, z, plan.max_lag, y_mask=ft.valid, x_mask=fr.valid).pairs(idx, idx)


def combine(rho_views: np.ndarray, views: list[View]) -> np.ndarray:
    """Weighted mean over views of ρ(lag); views missing at a lag drop out there. [V, K] -> [K]"""
    w = np.array([v.weight for v in views])[:, None]  # [V, 1]
    ok = np.isfinite(rho_views)
    num = np.where(ok, w * rho_views, 0.0).sum(axis=0)
    den = np.where(ok, w, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _curve(sums: PairSums, plan: PairPlan, cfg: EstimateConfig) -> np.ndarray:
    curve = combine(sums.rho(), plan.views)
    if sums.n.max() > 0:
        curve[sums.n < cfg.min_overlap * sums.n.max()] = np.nan
    return curve


def estimate_session(targets: list[StreamSeries], refs: list[StreamSeries], cfg: EstimateConfig) -> tuple[PairPlan, list[EpisodeEstimate]]:
    """Plan the views, pool every episode's evidence for the session's peak, then each episode's own peak."""
    plan = plan_pair(targets, refs, cfg)
    if not plan.views:
        return plan, [EpisodeEstimate(None) for _ in targets]
    per_episode = [view_sums(t, r, plan, cfg) for t, r in zip(targets, refs)]
    pooled = per_episode[0]
    for s in per_episode[1:]:
        pooled = pooled + s
    peak = find_peak(_curve(pooled, plan, cfg), pooled.lags)
    weights = np.array([v.weight for v in plan.views])
    plan.bartlett = float(np.sum(weights * [v.bartlett for v in plan.views]) / np.sum(weights))
    if peak is not None:
        n = float(pooled.n[np.argmin(np.abs(pooled.lags - peak.lag))])
        plan.session_lag_ms = 1000.0 * peak.lag / plan.grid_hz
        plan.session_rho = float(peak.value)
        plan.session_confidence = float(np.clip(peak.prominence, 0.0, 1.0))
        plan.session_z = fisher_z(peak.value, n / plan.bartlett)
        plan.session_sigma_ms = _sigma_ms(peak.value, peak.curvature, plan, n / plan.grid_hz)
    return plan, [_episode_peak(s, plan, cfg) for s in per_episode]


def _episode_peak(sums: PairSums, plan: PairPlan, cfg: EstimateConfig) -> EpisodeEstimate:
    """An episode's own peak, searched within ±refine_ms of its session's peak."""
    if sums.n.max() <= 0:
        return EpisodeEstimate(None)
    curve = _curve(sums, plan, cfg)
    lo = hi = None
    if plan.session_lag_ms is not None:
        lo = (plan.session_lag_ms - cfg.refine_ms) / 1000.0 * plan.grid_hz
        hi = (plan.session_lag_ms + cfg.refine_ms) / 1000.0 * plan.grid_hz
    # A peak on the window's edge means the episode's evidence points away from its session (or is
    # flat): it is kept, flagged, and the session model gives it no weight.
    peak = find_peak(curve, sums.lags, lo=lo, hi=hi)
    if peak is None or peak.value <= 0:
        return EpisodeEstimate(None)
    n = float(sums.n[np.argmin(np.abs(sums.lags - peak.lag))])
    z = fisher_z(peak.value, n / plan.bartlett)
    confidence = float(np.clip(peak.prominence, 0.0, 1.0))
    return EpisodeEstimate(
        lag_ms=1000.0 * peak.lag / plan.grid_hz,
        rho=float(peak.value),
        confidence=confidence,
        sigma_ms=_sigma_ms(peak.value, peak.curvature, plan, n / plan.grid_hz),
        at_edge=peak.at_edge,
        overlap_s=n / plan.grid_hz,
        z=z,
        usable=not peak.at_edge and z >= cfg.min_z and confidence >= cfg.min_confidence,
    )


def _sigma_ms(rho: float, curvature: float, plan: PairPlan, overlap_s: float) -> float:
    """Standard error of a peak's lag: var ≈ (1-ρ²) / (ρ² · N_eff · β²).

    β² = -ρ''/ρ is the mean-square bandwidth read off the peak's curvature (rad²/s²), N_eff = 2·B·T the
    independent samples in band B over the overlap T (the time-delay estimation bound).
    """
    rho = float(np.clip(rho, 1e-3, 0.999))
    beta2 = -curvature * plan.grid_hz**2 / rho
    n_eff = max(2.0 * plan.cutoff_hz * overlap_s, 1.0)
    if beta2 <= 0:
        return float("inf")
    var = (1.0 - rho**2) / (rho**2 * n_eff * beta2)
    floor = 0.05 / plan.grid_hz  # interpolation leaves about this much on a clean peak
    return 1000.0 * float(np.sqrt(var + floor**2))
