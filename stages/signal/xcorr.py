"""Cross-correlation of multichannel series with masks, by FFT, and its sub-sample peak.

Convention (used everywhere in `vla`): a lag `d` means "y is x delayed by d", y(t) = x(t - d), and
the correlation at `d` compares y(t) with x(t - d). A stream whose clock runs ahead of the
reference by `o` therefore shows its events `o` later in its own time stamps: lag = offset.

The correlation is Pearson's coefficient *per lag* over the samples both series cover at that lag
(masked normalised cross-correlation), so series that start at different times, have holes, or carry
a trend in their mean compare fairly. The centred sums behind it add up across episodes, which is
how a session pools its evidence before a peak is taken (`XcorrSums.__add__`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from stages.registry import Registry


@dataclass
class XcorrSums:
    """Centred second moments per lag; ρ = cov / sqrt(var_y var_x). Add two to pool their evidence."""

    lags: np.ndarray  # int64 [K]: lag in samples, -L..L
    cov: np.ndarray  # [Cy, Cx, K]: Σ (y - ȳ)(x - x̄) over the overlap at each lag
    var_y: np.ndarray  # [Cy, K]
    var_x: np.ndarray  # [Cx, K]
    n: np.ndarray  # [K]: samples in the overlap

    def __add__(self, other: XcorrSums) -> XcorrSums:
        if not np.array_equal(self.lags, other.lags):
            raise ValueError("cannot pool correlations over different lag ranges")
        return XcorrSums(self.lags, self.cov + other.cov, self.var_y + other.var_y, self.var_x + other.var_x, self.n + other.n)

    def pairs(self, y_index: np.ndarray, x_index: np.ndarray) -> PairSums:
        """Only the channel pairs (y_index[p], x_index[p]): a compact form to keep per episode."""
        return PairSums(self.lags, self.cov[y_index, x_index], self.var_y[y_index], self.var_x[x_index], self.n)

    def pair_rho(self, y_index: np.ndarray, x_index: np.ndarray, *, min_overlap: int = 2) -> np.ndarray:
        """Pearson coefficient per lag of the channel pairs (y_index[p], x_index[p]) only. [P, K]"""
        cov = self.cov[y_index, x_index]  # [P, K]
        denom = np.sqrt(np.clip(self.var_y[y_index], 0, None) * np.clip(self.var_x[x_index], 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), np.nan)
        r[..., self.n < min_overlap] = np.nan
        return r

    def rho(self, *, min_overlap: int = 2) -> np.ndarray:
        """Pearson coefficient per lag [Cy, Cx, K]; NaN where the overlap is too small or constant."""
        denom = np.sqrt(np.clip(self.var_y[:, None, :], 0, None) * np.clip(self.var_x[None, :, :], 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 0, self.cov / np.where(denom > 0, denom, 1.0), np.nan)
        r[..., self.n < min_overlap] = np.nan
        return r


@dataclass
class PairSums:
    """`XcorrSums` restricted to P chosen channel pairs; adds up the same way."""

    lags: np.ndarray  # int64 [K]
    cov: np.ndarray  # [P, K]
    var_y: np.ndarray  # [P, K]
    var_x: np.ndarray  # [P, K]
    n: np.ndarray  # [K]

    def __add__(self, other: PairSums) -> PairSums:
        if not np.array_equal(self.lags, other.lags):
            raise ValueError("cannot pool correlations over different lag ranges")
        return PairSums(self.lags, self.cov + other.cov, self.var_y + other.var_y, self.var_x + other.var_x, self.n + other.n)

    def rho(self, *, min_overlap: int = 2) -> np.ndarray:
        """Pearson coefficient per lag of each pair [P, K]; NaN where undefined."""
        denom = np.sqrt(np.clip(self.var_y, 0, None) * np.clip(self.var_x, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 0, self.cov / np.where(denom > 0, denom, 1.0), np.nan)
        r[..., self.n < min_overlap] = np.nan
        return r


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def _prepare(a: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Channels-first values with invalid samples zeroed, and the 0/1 mask. ([C, M], [M])"""
    a = _as_2d(a)
    m = np.isfinite(a).all(axis=0) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(a).all(axis=0))
    a = np.where(m[None, :], a, 0.0)
    # Centre globally first: the per-lag centring below then subtracts small numbers (no cancellation).
    count = max(int(m.sum()), 1)
    a = np.where(m[None, :], a - a.sum(axis=1, keepdims=True) / count, 0.0)
    return a, m.astype(np.float64)


def xcorr_sums(y: np.ndarray, x: np.ndarray, max_lag: int, *, y_mask: np.ndarray | None = None,
               x_mask: np.ndarray | None = None) -> XcorrSums:
    """Masked cross-correlation sums of y [Cy, M] against x [Cx, M] for lags -max_lag..max_lag, by FFT.

    Both series share one uniform grid of M samples; masks (bool [M]) mark valid samples, and
    non-finite values count as invalid. Cost O((Cy + Cx + Cy·Cx) · M log M).
    """
    y, my = _prepare(y, y_mask)
    x, mx = _prepare(x, x_mask)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"y and x must share one grid, got {y.shape[1]} and {x.shape[1]} samples")
    m = y.shape[1]
    lag = int(max_lag)  # lags beyond the series get an empty overlap (n = 0), so every episode shares one lag axis
    nfft = sfft.next_fast_len(m + lag, real=True)
    lags = np.arange(-lag, lag + 1)

    def spec(a: np.ndarray) -> np.ndarray:
        return sfft.rfft(a, n=nfft, axis=-1)

    def corr(a_spec: np.ndarray, b_spec: np.ndarray) -> np.ndarray:
        # Σ_t a(t) b(t - d) = IFFT(A · conj(B))[d]; negative lags wrap to the end of the buffer.
        full = sfft.irfft(a_spec * np.conj(b_spec), n=nfft, axis=-1)
        return np.concatenate([full[..., nfft - lag:], full[..., : lag + 1]], axis=-1)

    Y, Y2, MY = spec(y), spec(y * y), spec(my)
    X, X2, MX = spec(x), spec(x * x), spec(mx)
    n = np.rint(corr(MY, MX))  # [K]
    sy, syy = corr(Y, MX[None]), corr(Y2, MX[None])  # [Cy, K]
    sx, sxx = corr(MY[None], X), corr(MY[None], X2)  # [Cx, K]
    sxy = corr(Y[:, None, :], X[None, :, :])  # [Cy, Cx, K]
    safe_n = np.where(n > 0, n, 1.0)
    cov = sxy - sy[:, None, :] * sx[None, :, :] / safe_n
    var_y = syy - sy * sy / safe_n
    var_x = sxx - sx * sx / safe_n
    return XcorrSums(lags, cov, var_y, var_x, n)


def lagged_gram(x: np.ndarray, max_lag: int, *, y_mask: np.ndarray | None = None, x_mask: np.ndarray | None = None,
                pairs: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Centred Gram matrix of x's channels over the samples that overlap y's mask at each lag. [Cx, Cx, K]

    G[f, g, d] = Σ x_f(t-d) x_g(t-d) over t valid in both, minus the overlap-mean product: with
    `xcorr_sums` it gives the exact least-squares fit of y by a mix of x's channels at every lag.
    `pairs` (f, g with f <= g) limits the work to those entries; the others are NaN.
    """
    xv, mx = _prepare(x, x_mask)
    m = xv.shape[1]
    my = np.ones(m) if y_mask is None else np.asarray(y_mask, dtype=np.float64)
    lag = int(max_lag)  # lags beyond the series get an empty overlap (n = 0), so every episode shares one lag axis
    nfft = sfft.next_fast_len(m + lag, real=True)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        full = sfft.irfft(sfft.rfft(a, n=nfft, axis=-1) * np.conj(sfft.rfft(b, n=nfft, axis=-1)), n=nfft, axis=-1)
        return np.concatenate([full[..., nfft - lag:], full[..., : lag + 1]], axis=-1)

    n = np.rint(corr(my, mx))  # [K]
    f, g = np.triu_indices(len(xv)) if pairs is None else (np.asarray(pairs[0]), np.asarray(pairs[1]))
    prod = corr(my[None], xv[f] * xv[g])  # [P, K]
    s = corr(my[None], xv)  # [Cx, K]
    safe_n = np.where(n > 0, n, 1.0)
    out = np.full((len(xv), len(xv), len(n)), np.nan)
    out[f, g] = prod - s[f] * s[g] / safe_n
    out[g, f] = out[f, g]
    return out


def lagged_gram_direct(x: np.ndarray, max_lag: int, *, y_mask: np.ndarray | None = None, x_mask: np.ndarray | None = None,
                       pairs: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`lagged_gram` by direct summation, one lag at a time: O(Cx²·M·L). Baseline and test oracle.

    (`pairs` is accepted for the same signature; the direct sum computes every entry anyway.)
    """
    xv, mx = _prepare(x, x_mask)
    m = xv.shape[1]
    my = np.ones(m) if y_mask is None else np.asarray(y_mask, dtype=np.float64)
    lag = int(max_lag)  # lags beyond the series get an empty overlap (n = 0), so every episode shares one lag axis
    out = np.zeros((len(xv), len(xv), 2 * lag + 1))
    for k, d in enumerate(range(-lag, lag + 1)):
        if abs(d) >= m:
            continue  # no overlap at this lag
        ys, xs = slice(max(d, 0), m + min(d, 0)), slice(max(-d, 0), m - max(d, 0))
        w = my[ys] * mx[xs]
        cnt = w.sum()
        xw = xv[:, xs] * w
        s = xw.sum(axis=1)
        out[:, :, k] = xw @ xv[:, xs].T - np.outer(s, s) / (cnt if cnt > 0 else 1.0)
    return out


def xcorr_sums_direct(y: np.ndarray, x: np.ndarray, max_lag: int, *, y_mask: np.ndarray | None = None,
                      x_mask: np.ndarray | None = None) -> XcorrSums:
    """The same sums by direct summation, one lag at a time: O(Cy·Cx·M·L). Baseline and test oracle."""
    y, my = _prepare(y, y_mask)
    x, mx = _prepare(x, x_mask)
    m = y.shape[1]
    lag = int(max_lag)  # lags beyond the series get an empty overlap (n = 0), so every episode shares one lag axis
    lags = np.arange(-lag, lag + 1)
    cov = np.zeros((y.shape[0], x.shape[0], len(lags)))
    var_y = np.zeros((y.shape[0], len(lags)))
    var_x = np.zeros((x.shape[0], len(lags)))
    n = np.zeros(len(lags))
    for k, d in enumerate(lags):
        if abs(d) >= m:
            continue  # no overlap at this lag
        # y(t) pairs with x(t - d): y[t] for t in [max(d,0), m + min(d,0)), x[t - d].
        ys, xs = slice(max(d, 0), m + min(d, 0)), slice(max(-d, 0), m - max(d, 0))
        w = my[ys] * mx[xs]  # [overlap]
        cnt = w.sum()
        yw, xw = y[:, ys] * w, x[:, xs] * w
        sy, sx = yw.sum(axis=1), xw.sum(axis=1)
        safe = cnt if cnt > 0 else 1.0
        cov[:, :, k] = yw @ x[:, xs].T - np.outer(sy, sx) / safe
        var_y[:, k] = (yw * y[:, ys]).sum(axis=1) - sy * sy / safe
        var_x[:, k] = (xw * x[:, xs]).sum(axis=1) - sx * sx / safe
        n[k] = cnt
    return XcorrSums(lags, cov, var_y, var_x, n)


# ----------------------------------------------------------------------------- peaks


@dataclass
class Peak:
    lag: float  # sub-sample lag of the maximum, in samples
    value: float  # interpolated correlation at the maximum
    curvature: float  # second derivative at the maximum, per sample² (negative at a proper peak)
    side: float  # highest competing local maximum outside the main lobe (-inf if none)
    at_edge: bool  # the maximum sits on the edge of the searched range: the true peak may lie beyond

    @property
    def prominence(self) -> float:
        """How far the peak stands above the best competing alignment (0 when a rival is as high)."""
        return float(max(0.0, self.value - max(self.side, 0.0)))


def parabolic_peak(c: np.ndarray, i: int) -> tuple[float, float, float]:
    """Sub-sample vertex of the parabola through c[i-1], c[i], c[i+1]: (offset in [-0.5, 0.5], value, curvature)."""
    if i <= 0 or i >= len(c) - 1 or not np.all(np.isfinite(c[i - 1: i + 2])):
        return 0.0, float(c[i]), 0.0
    a, b, d = c[i - 1], c[i], c[i + 1]
    curv = a - 2 * b + d
    if curv >= 0:
        return 0.0, float(b), float(curv)
    delta = float(np.clip(0.5 * (a - d) / curv, -0.5, 0.5))
    return delta, float(b - 0.25 * (a - d) * delta), float(curv)


def find_peak(c: np.ndarray, lags: np.ndarray, *, lo: float | None = None, hi: float | None = None) -> Peak | None:
    """Highest maximum of correlation `c` [K] at integer `lags` [K], searched in [lo, hi] (samples).

    Rivals (`Peak.side`) are looked for over the whole of `c`, not only inside [lo, hi].
    """
    c = np.asarray(c, dtype=np.float64)
    finite = np.isfinite(c)
    ok = finite.copy()
    if lo is not None:
        ok &= lags >= lo
    if hi is not None:
        ok &= lags <= hi
    if not ok.any():
        return None
    i = int(np.argmax(np.where(ok, c, -np.inf)))
    edge = (i == 0 or not ok[i - 1]) or (i == len(c) - 1 or not ok[i + 1])
    delta, value, curv = parabolic_peak(np.where(finite, c, -np.inf), i)
    return Peak(lag=float(lags[i]) + delta, value=value, curvature=curv, side=_side_peak(np.where(finite, c, -np.inf), i),
                at_edge=bool(edge))


def _side_peak(c: np.ndarray, i: int) -> float:
    """Highest value outside the main lobe around index i (the lobe ends at the first minimum each side)."""
    with np.errstate(invalid="ignore"):
        d = np.diff(c)  # NaN next to masked (-inf) lags: treated as the end of the lobe
    left = i
    while left > 0 and np.isfinite(c[left - 1]) and d[left - 1] > 0:
        left -= 1
    right = i
    while right < len(c) - 1 and np.isfinite(c[right + 1]) and d[right] < 0:
        right += 1
    rest = np.concatenate([c[:left], c[right + 1:]])
    rest = rest[np.isfinite(rest)]
    return float(rest.max()) if len(rest) else float("-inf")


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Correlator:
    """How the sums are computed: the same numbers either way, at different cost."""

    sums: Callable[..., XcorrSums]
    gram: Callable[..., np.ndarray]


CORRELATORS: Registry[Correlator] = Registry("correlation method")
CORRELATORS.add("fft", Correlator(xcorr_sums, lagged_gram))  # O(M log M) per channel pair
CORRELATORS.add("direct", Correlator(xcorr_sums_direct, lagged_gram_direct))  # O(M·L): the baseline
