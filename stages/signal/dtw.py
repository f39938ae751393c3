"""Dynamic time warping in a Sakoe–Chiba band, for clock offsets that drift non-linearly (ch05 §5.10 gotcha 2).

A cross-correlation gives one offset per window; DTW gives one per sample, at the price of noise.
`dtw_lag_track` turns the warping path into a lag per sample of y (same convention as `xcorr`:
y(t) = x(t - lag)), which callers smooth or fit (e.g. a line for constant drift).

Each row of the cost matrix is solved with one min-plus prefix scan, so the work is vectorised over
the band: O(N·W) arithmetic with N Python iterations, never N·W.
"""

from __future__ import annotations

import numpy as np


def _standardise(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a  # [N, D]
    sd = a.std(axis=0, keepdims=True)
    return (a - a.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def dtw_path(y: np.ndarray, x: np.ndarray, band: int, *, shift: int = 0) -> np.ndarray:
    """Optimal warping path between y [N, D] and x [N', D] with |i - j - shift| <= band.

    Returns int64 [P, 2] pairs (i, j), monotone, from (0, ·) to (N-1, ·). Raises ValueError when the
    band admits no path. `shift` centres the band on a known coarse lag (in samples).
    """
    ys, xs = _standardise(y), _standardise(x)
    n, m = len(ys), len(xs)
    inf = np.inf
    width = 2 * band + 1
    acc = np.full((n, width), inf)  # acc[i, k] = cost of the best path ending at (i, j = i - shift - band + k)
    step = np.zeros((n, width), dtype=np.int8)  # 0 diagonal, 1 vertical, 2 horizontal
    prev = None
    for i in range(n):
        j = i - shift - band + np.arange(width)
        ok = (j >= 0) & (j < m)
        c = np.where(ok, ((ys[i][None, :] - xs[np.clip(j, 0, m - 1)]) ** 2).sum(axis=1), inf)  # [W]
        if prev is None:
            # first row: the path may start anywhere inside the band (open begin)
            e = np.where(ok, 0.0, inf)
            diag = vert = np.full(width, inf)
        else:
            # (i-1, j-1) sits at the same band index k in the previous row; (i-1, j) at k + 1.
            diag = prev
            vert = np.concatenate([prev[1:], [inf]])
            e = np.minimum(diag, vert)
        e = np.where(ok, e, inf)
        # D[k] = c[k] + min(e[k], D[k-1])  ==  S[k] + min_{q<=k}(e[q] - S[q-1]) with S = cumsum(c)
        cs = np.cumsum(np.where(ok, c, 0.0))
        before = np.concatenate([[0.0], cs[:-1]])
        best = np.minimum.accumulate(e - before)
        row = np.where(ok, cs + best, inf)
        # how each cell was reached (for backtracking): horizontal when the left cell beat the entry
        came_h = np.concatenate([[False], row[:-1] < e[1:]])
        came_v = np.zeros(width, dtype=bool) if i == 0 else (vert < diag)
        step[i] = np.where(came_h, 2, np.where(came_v, 1, 0))
        acc[i] = row
        prev = row
    if not np.isfinite(acc[-1]).any():
        raise ValueError("no warping path inside the band")
    k = int(np.argmin(acc[-1]))  # open end
    path = []
    i = n - 1
    while i >= 0:
        path.append((i, i - shift - band + k))
        s = step[i, k]
        if s == 2:
            k -= 1
        elif s == 1:
            i, k = i - 1, k + 1
        else:
            if i == 0:
                break
            i -= 1
        if k < 0 or k >= width:
            break
    return np.array(path[::-1], dtype=np.int64)


def dtw_lag_track(y: np.ndarray, x: np.ndarray, band: int, *, shift: int = 0) -> np.ndarray:
    """Lag (samples) of each sample of y against x along the DTW path: mean of i - j over its matches. [N]"""
    path = dtw_path(y, x, band, shift=shift)
    n = len(y)
    lag = np.zeros(n)
    count = np.zeros(n)
    np.add.at(lag, path[:, 0], (path[:, 0] - path[:, 1]).astype(np.float64))
    np.add.at(count, path[:, 0], 1.0)
    return lag / np.maximum(count, 1.0)
