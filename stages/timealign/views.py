"""Views: which observable of the reference explains each feature of the target.

A view pairs one target feature with a fixed mix of reference features ("family"); its timing is
then the peak of one cross-correlation. Families, and why they are what they are:

- every reference feature alone;
- *signed* features of one derivative order (e.g. an IMU's axes against the world-frame second
  derivatives of a position, whatever the rotation between them), fitted by least squares. Members
  that are derivatives of each other (a logger writing both `x` and `vx`) are left out of all
  mixes: a·v(t) + b·v'(t) ≈ a·v(t + b/a) — such a mix would fit a *shift*, not a sensor;
- *magnitudes* |d^k x_i/dt^k| and their norm, for k ≥ 1 (what a camera's motion energy sees of a
  velocity), fitted with non-negative coefficients: motion energy is a sum of moving parts'
  contributions, and no positive mix of magnitudes can imitate a time shift.

For each target feature the family whose fit explains the most variance at its best lag (R²,
adjusted for the family's size) is its candidate view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from stages.signal import Correlator, XcorrSums
from stages.timealign.observables import Features

DERIVATIVE_TWIN = 0.9  # |ρ| at lag 0 above which two features of different orders are the same quantity
MAX_FAMILY = 16
MIX_GAIN = 0.5  # share of a single feature's unexplained variance a mix must remove to be preferred


@dataclass
class View:
    """One observable both streams share: a target feature ~ a fixed mix of reference features."""

    target: str  # target feature name
    reference: str  # reference family (its member names when it has several)
    ti: int  # target feature index
    ri: np.ndarray  # reference feature indices, int [F]
    coef: np.ndarray  # mixing coefficients on the raw reference features [F]
    rho: float  # correlation of the view at the session's peak (adjusted for the mix's size)
    lag_ms: float  # where this view alone peaks over the selection episodes
    weight: float = 0.0
    bartlett: float = 1.0  # samples per independent sample: Σ_k r_y(k) r_z(k) over the main lobe


@dataclass
class Family:
    members: np.ndarray  # int [F] reference feature indices
    nonneg: bool  # fit with non-negative coefficients


def families(fr: Features, corr0: np.ndarray, live: np.ndarray, *, magnitudes_only: bool = False) -> list[Family]:
    """The mixes: signed same-order groups without derivative twins, non-negative magnitude groups.

    corr0 [Cx, Cx]: correlation of the reference features at lag 0; live [Cx]: not constant.
    `magnitudes_only`: the target is itself a magnitude (a camera's motion energy): a signed mix
    (say positions plus a speed) has no physical meaning for it and could only fit a shift.
    """
    out = []
    twins = set()
    for a, (order_a, kind_a) in enumerate(fr.groups):
        for b, (order_b, kind_b) in enumerate(fr.groups):
            if kind_a == kind_b and order_a != order_b and abs(corr0[a, b]) > DERIVATIVE_TWIN:
                twins |= {a, b}
    groups: dict[tuple[int, str], list[int]] = {}
    for i, g in enumerate(fr.groups):
        if live[i] and i not in twins:
            groups.setdefault(g, []).append(i)
    for (order, kind), members in groups.items():
        if len(members) > 1 and (kind == "magnitude" or not magnitudes_only):
            out.append(Family(np.array(members[:MAX_FAMILY]), nonneg=kind == "magnitude"))
    return out


def _least_squares(cov: np.ndarray, gram: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """β [K, F] minimising Σ(y - βx)² at every lag, from cov [F, K] and gram [F, F, K]."""
    a = np.moveaxis(gram, -1, 0)  # [K, F, F]
    scale = np.maximum(np.einsum("kff->kf", a), 1e-300)  # [K, F]
    a = a + ridge * np.eye(a.shape[-1])[None] * scale[:, :, None]  # keeps collinear mixes solvable
    b = cov.T[..., None]  # [K, F, 1]
    live = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))
    beta = np.zeros(b.shape[:2])
    if live.any():
        beta[live] = np.linalg.solve(a[live], b[live])[..., 0]
    return beta


def _nonneg_least_squares(cov: np.ndarray, gram: np.ndarray, lags: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """β ≥ 0 [K, F] at the lags in `lags` (NaN elsewhere): min βᵀGβ - 2cᵀβ via G = LLᵀ, ‖Lᵀβ - L⁻¹c‖²."""
    beta = np.full((cov.shape[1], cov.shape[0]), np.nan)
    for k in lags:
        g = gram[:, :, k] + ridge * np.diag(np.maximum(np.diag(gram[:, :, k]), 1e-300))
        try:
            low = np.linalg.cholesky(g)
        except np.linalg.LinAlgError:
            continue
        beta[k] = nnls(low.T, np.linalg.solve(low, cov[:, k]))[0]
    return beta


def fit_family(cov: np.ndarray, gram: np.ndarray, var_y: np.ndarray, fam: Family, lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R² [K], β [K, F]) of y by a mix of the family's features at each lag in `lags` (NaN elsewhere).

    R² = (2βᵀc - βᵀGβ) / var_y: the share of y's variance the mix removes (≤ 1; LS gives βᵀc).
    """
    beta = _nonneg_least_squares(cov, gram, lags) if fam.nonneg else _least_squares(cov, gram)
    explained = 2 * np.einsum("kf,fk->k", beta, cov) - np.einsum("kf,fgk,kg->k", beta, gram, beta)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(var_y > 0, explained / np.where(var_y > 0, var_y, 1.0), np.nan)
    mask = np.full(len(r2), np.nan)
    mask[lags] = 1.0
    return r2 * mask, beta


def candidates(feats: list[tuple[Features, Features]], *, max_lag: int, cutoff_hz: float, grid_hz: float,
               min_overlap: float, min_rho: float, correlator: Correlator, magnitudes_only: bool = False) -> list[View]:
    """For each target feature, the family whose best mix explains it most (adjusted R²), pooled over `feats`."""
    fr = feats[0][1]
    # mixes only ever combine features of one group: the lagged Gram matrix is needed within groups only
    group_of = {g: [i for i, h in enumerate(fr.groups) if h == g] for g in set(fr.groups)}
    pairs = np.array([(a, b) for m in group_of.values() for a in m for b in m if a <= b]).T
    pooled: XcorrSums | None = None
    gram = gram0 = None
    for ft, fr in feats:
        sums = correlator.sums(ft.values, fr.values, max_lag, y_mask=ft.valid, x_mask=fr.valid)
        g = correlator.gram(fr.values, max_lag, y_mask=ft.valid, x_mask=fr.valid, pairs=(pairs[0], pairs[1]))  # [Cx, Cx, K]
        xc = fr.values[:, fr.valid] - fr.values[:, fr.valid].mean(axis=1, keepdims=True)  # [Cx, m]
        pooled = sums if pooled is None else pooled + sums
        gram = g if gram is None else gram + g
        gram0 = xc @ xc.T if gram0 is None else gram0 + xc @ xc.T  # all pairs at lag 0 (for derivative twins)
    ft, fr = feats[0]
    lags = np.flatnonzero(pooled.n >= min_overlap * pooled.n.max())  # searched lag indices
    n_eff = max(2.0 * cutoff_hz * float(pooled.n.max()) / grid_hz, 3.0)
    diag = np.einsum("ffk->fk", gram)  # [Cx, K]
    live = (diag[:, lags] > 1e-12 * max(float(np.nanmax(diag)), 1e-300)).all(axis=1)  # constant features explain nothing
    sd = np.sqrt(np.clip(np.diag(gram0), 1e-300, None))
    corr0 = gram0 / np.outer(sd, sd)
    fams = families(fr, corr0, live, magnitudes_only=magnitudes_only)
    coarse = lags[:: max(1, len(lags) // 100)]  # non-negative fits are solved on at most ~100 lags
    mixes = [fam for fam in fams if len(fam.members) > 1 and len(fam.members) < n_eff - 2]
    # singles in one go: R² of one feature is ρ², its least-squares coefficient cov / var_x
    searched = np.full(pooled.n.shape, False)
    searched[lags] = True
    rho = np.where(searched, pooled.rho(), np.nan)  # [Cy, Cx, K]
    adj1 = 1.0 - (1.0 - rho**2) * (n_eff - 1.0) / (n_eff - 2.0)
    adj1[:, ~live] = np.nan
    out = []
    for j in range(pooled.cov.shape[0]):
        best: dict[bool, tuple] = {}  # is a mix -> (adjusted R², members, coefficients)
        if np.isfinite(adj1[j]).any():
            i, k = np.unravel_index(int(np.nanargmax(adj1[j])), adj1[j].shape)
            best[False] = (adj1[j, i, k], np.array([i]), np.array([pooled.cov[j, i, k] / pooled.var_x[i, k]]))
        for fam in mixes:
            f = fam.members
            r2, beta = fit_family(pooled.cov[j][f], gram[np.ix_(f, f)], pooled.var_y[j], fam, coarse if fam.nonneg else lags)
            adj = 1.0 - (1.0 - r2) * (n_eff - 1.0) / (n_eff - len(f) - 1.0)
            if not np.isfinite(adj).any():
                continue
            k = int(np.nanargmax(adj))
            if True not in best or adj[k] > best[True][0]:
                best[True] = (adj[k], f, beta[k])
        chosen = _prefer_single(best)
        if chosen is None or chosen[0] < min_rho**2:
            continue
        adj, f, beta = chosen
        label = fr.names[f[0]] if len(f) == 1 else "mix(" + ", ".join(fr.names[i] for i in f) + ")"
        out.append(View(ft.names[j], label, j, f, beta, float(min(np.sqrt(adj), 0.999)), 0.0))
    return out


def _prefer_single(best: dict[bool, tuple]) -> tuple | None:
    """The best single feature, unless a mix removes at least MIX_GAIN of what it leaves unexplained.

    A mix always fits a little better; a better fit is not a better clock. Only a mix that explains
    clearly more (e.g. a camera watching motion along several axes) earns its place.
    """
    single, mix = best.get(False), best.get(True)
    if mix is None or (single is not None and mix[0] - single[0] < MIX_GAIN * (1.0 - single[0])):
        return single
    return mix
