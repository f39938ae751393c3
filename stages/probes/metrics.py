"""Health metrics of the alignment report (ch05 §5.8) and the measures behind the ten checks (ch07 §7.10).

Pure functions on arrays; every one has a known-answer test in tests/test_metrics.py.

    retrieval_metrics(sim [N, M], relevant [N, M] bool)    -> {"R@1", "R@5", "R@10", "MRR", "queries"}
    task_relevance(query_tasks [N], candidate_tasks [M])   -> relevant [N, M] bool (same task = relevant)
    alignment_matrix({"V": z, "L": z, "A": z}, tasks, k)   -> AMat: top-k cross-modal hit rates
    info_nce_bound(a [N, D], b [N, D], logit_scale)        -> {"loss", "n", "mi_bound"}   I ≥ log N − L
    auroc(scores [N], labels [N] bool)                     -> area under the ROC curve (positives = True)
    expected_calibration_error(confidence, correct, bins=15)  (lo, hi] bin edges
    fit_temperature(logits [N, K], labels [N])             -> T minimising the NLL of softmax(logits / T)
    energy_score(logits [N, K], temperature)               -> E = −T log Σ exp(logit / T)
    gaussian_kl(μp, log σp, μq, log σq)                    -> elementwise KL(N_p ‖ N_q)
    phase_lag(pairs, rate_hz, max_lag_s)                   -> lag (s) of y behind x by cross-correlation
    smoothness(x, rate_hz, cutoff_hz)                      -> {"jerk_integral", "hf_ratio"}
    band_limit_error(x, rate_hz, bandwidth_hz)             -> ‖x − LP(x)‖ / ‖x − x̄‖
    pooled_band_coherence(pairs, rate_hz, band, nperseg)   -> mean γ² over the band, pooled over episodes

The signal maths (jerk, spectra, filters, cross-correlation) comes from `stages.signal`, the losses
(InfoNCE, Gaussian KL) from `stages.objectives` and the energy score from `stages.model.heads`;
this module only turns them into the numbers the report gates on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import optimize
from scipy import signal as sps

from stages import signal as sig
from stages.model.heads import energy_score as _energy_score_torch
from stages.objectives import gaussian_kl as _gaussian_kl_torch
from stages.objectives import info_nce, mutual_info_bound

RETRIEVAL_KS = (1, 5, 10)
ECE_BINS = 15


# ----------------------------------------------------------------------------- retrieval (ch05 §5.8)


def task_relevance(query_tasks: Sequence, candidate_tasks: Sequence) -> np.ndarray:
    """bool [N, M]: candidate j is relevant to query i when both belong to the same task."""
    q = np.asarray(query_tasks)
    c = np.asarray(candidate_tasks)
    return q[:, None] == c[None, :]


def first_relevant_rank(sim: np.ndarray, relevant: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of the best relevant candidate per query [N]; 0 where a query has none.

    Ties count against the query (pessimistic): every non-relevant candidate scoring at least as
    high as the best relevant one ranks before it, so a collapsed model whose scores are all equal
    gets the worst rank, never the best. `exclude` [N, M] removes candidates (e.g. the query itself).
    """
    sim = np.asarray(sim, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if sim.shape != relevant.shape or sim.ndim != 2:
        raise ValueError(f"sim and relevant must both be [N, M], got {sim.shape} and {relevant.shape}")
    keep = np.ones_like(relevant) if exclude is None else ~np.asarray(exclude, dtype=bool)
    rel = relevant & keep
    best = np.where(rel, sim, -np.inf).max(axis=1)  # [N] best relevant score
    ahead = ((sim >= best[:, None]) & ~rel & keep).sum(axis=1)  # non-relevant at least as high
    return np.where(rel.any(axis=1), ahead + 1, 0)


def retrieval_metrics(sim: np.ndarray, relevant: np.ndarray, *, ks: Sequence[int] = RETRIEVAL_KS,
                      exclude: np.ndarray | None = None) -> dict[str, float]:
    """R@K (share of queries with a relevant candidate in the top K) and MRR (mean 1/rank of the first one).

    sim: [N, M] query-by-candidate scores (higher = closer); relevant: [N, M] bool. Queries without
    any relevant candidate are left out (`queries` counts those kept). ch05 §5.8.
    """
    rank = first_relevant_rank(sim, relevant, exclude)
    rank = rank[rank > 0]
    out: dict[str, float] = {f"R@{k}": float((rank <= k).mean()) if len(rank) else float("nan") for k in ks}
    out["MRR"] = float((1.0 / rank).mean()) if len(rank) else float("nan")
    out["queries"] = int(len(rank))
    return out


def chance_recall(relevant: np.ndarray, k: int = 1, exclude: np.ndarray | None = None) -> float:
    """Expected R@k of a model that ranks at random: P(at least one relevant among k candidates drawn
    without replacement) = 1 − C(M − r, k) / C(M, k), averaged over queries with r ≥ 1 relevant."""
    rel = np.asarray(relevant, dtype=bool)
    keep = np.ones_like(rel) if exclude is None else ~np.asarray(exclude, dtype=bool)
    r = (rel & keep).sum(axis=1).astype(np.float64)  # [N]
    m = keep.sum(axis=1).astype(np.float64)
    has = r > 0
    if not has.any():
        return float("nan")
    # C(M − r, k) / C(M, k) = Π_{i<k} (M − r − i) / (M − i), zero once M − r − i ≤ 0
    miss = np.ones_like(r)
    for i in range(k):  # k is small (1, 5, 10): a loop over ranks, not samples
        miss *= np.clip(m - r - i, 0, None) / np.maximum(m - i, 1)
    return float((1.0 - miss)[has].mean())


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] cosine similarities of the rows of a [N, D] and b [M, D]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def alignment_matrix(embeddings: Mapping[str, np.ndarray], tasks: Sequence, *, k: int = 5) -> dict:
    """AMat (ch05 §5.8 对齐混淆矩阵): entry [m][n] = top-k hit rate of modality m's rows querying n's rows.

    embeddings: modality -> [N, Z], row i of every modality describes the same sample; a hit is a
    candidate of the same task among the top k by cosine. On the diagonal the query itself is
    excluded (leave-one-out within the modality).
    """
    names = list(embeddings)
    tasks = np.asarray(tasks)
    relevant = task_relevance(tasks, tasks)
    eye = np.eye(len(tasks), dtype=bool)
    matrix = []
    for m in names:
        row = []
        for n in names:
            sim = cosine_similarity(embeddings[m], embeddings[n])
            r = retrieval_metrics(sim, relevant, ks=(k,), exclude=eye if m == n else None)
            row.append(r[f"R@{k}"])
        matrix.append(row)
    return {"modalities": names, "k": int(k), "matrix": matrix}


# ----------------------------------------------------------------------------- mutual information (ch05 §5.6)


def info_nce_bound(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, logit_scale: float) -> dict[str, float]:
    """Symmetric InfoNCE of paired rows (`stages.objectives.info_nce`) and the bound I ≥ log N − L, in nats."""
    a_t = torch.as_tensor(np.asarray(a, dtype=np.float32)) if not isinstance(a, torch.Tensor) else a.float()
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float32)) if not isinstance(b, torch.Tensor) else b.float()
    with torch.no_grad():
        loss = float(info_nce(a_t, b_t, float(logit_scale)))
    n = int(a_t.shape[0])
    return {"loss": loss, "n": n, "mi_bound": mutual_info_bound(loss, n)}


# ----------------------------------------------------------------------------- open set (ch07 §7.10 item 3)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """E(x) = −T · log Σ_k exp(φ_k(x) / T) per row (`stages.model.heads.energy_score`); [N, K] -> [N].

    Known answer: logits [2, 1, 0], T = 1 -> −2.4076059644. Lower energy = closer to a known class.
    """
    t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    return _energy_score_torch(t, temperature).numpy()


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for `labels` True = positive, higher score = more positive.

    The Mann–Whitney statistic with average ranks for ties: the probability that a random positive
    scores above a random negative, ties counting one half. NaN when a class is empty.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- calibration


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Reliability table over `bins` equal-width bins with (lo, hi] edges (a confidence of exactly 0
    joins the first bin): counts [bins], mean confidence [bins], accuracy [bins] (NaN when empty)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must both be [N], got {conf.shape} and {ok.shape}")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.arange(bins + 1) / bins  # exact k/bins, so a confidence equal to an edge is placed exactly
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi]
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / counts
        accuracy = np.bincount(index, weights=ok, minlength=bins) / counts
    return {"edges": edges, "counts": counts, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| over `bins` bins with (lo, hi] edges (Guo et al. 2017)."""
    table = calibration_bins(confidence, correct, bins)
    n = table["counts"].sum()
    if n == 0:
        return float("nan")
    used = table["counts"] > 0
    gap = np.abs(table["accuracy"][used] - table["confidence"][used])
    return float((table["counts"][used] / n * gap).sum())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def classification_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` [N] under softmax(logits [N, K] / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al. 2017): the T in `bounds` minimising the NLL of softmax(logits / T).

    A bounded 1-D search over log T (the NLL is smooth and unimodal in log T for fixed logits).
    Known answer: every sample with logits [z, 0] and a share p of labels 0 -> σ(z/T) = p, T = z / logit(p).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = optimize.minimize_scalar(lambda u: classification_nll(logits, labels, float(np.exp(u))), bounds=(lo, hi),
                                   method="bounded", options={"xatol": 1e-10})
    return float(np.exp(res.x))


def softmax_confidence(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability [N], argmax == label [N] bool) of logits / T."""
    p = np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))
    return p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)


# ----------------------------------------------------------------------------- teacher consistency


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> np.ndarray:
    """Elementwise KL(N(μp, σp²) ‖ N(μq, σq²)) in nats (`stages.objectives.gaussian_kl`).

    Known answer: μp = 0, σp = 1, μq = 1, σq = 2 -> log 2 + (1 + 1)/8 − ½ = 0.4431471806.
    """
    args = [torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (mean_p, log_std_p, mean_q, log_std_q)]
    args = torch.broadcast_tensors(*args)
    return _gaussian_kl_torch(*args).numpy()


# ----------------------------------------------------------------------------- time series (ch07 §7.10 items 1, 2, 7)


def phase_lag(pairs: Sequence[tuple[np.ndarray, np.ndarray]], rate_hz: float, max_lag_s: float) -> dict[str, float]:
    """Lag of y behind x (s; positive = y is x delayed), pooled over episodes by cross-correlation.

    pairs: (y [T, D], x [T, D]) per episode, channel d of y against channel d of x. The masked
    Pearson sums of `stages.signal.xcorr_sums` add up over channels and episodes, then the peak is
    refined to a sub-sample lag (`stages.signal.find_peak`). Returns {"lag_s", "rho", "at_edge"};
    lag NaN when no pair has variance (a constant output has no phase).
    """
    max_lag = max(1, int(round(max_lag_s * rate_hz)))
    total = None
    for y, x in pairs:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(y) < 3:
            continue
        channels = np.arange(y.shape[1])
        sums = sig.xcorr_sums(y.T, x.T, min(max_lag, len(y) - 1)).pairs(channels, channels)
        if sums.lags.shape[0] != 2 * max_lag + 1:  # a short episode covers fewer lags: pad to the common range
            sums = _pad_lags(sums, max_lag)
        total = sums if total is None else total + sums
    if total is None:
        return {"lag_s": float("nan"), "rho": float("nan"), "at_edge": False}
    cov, var_y, var_x = total.cov.sum(axis=0), total.var_y.sum(axis=0), total.var_x.sum(axis=0)  # pool channels [K]
    denom = np.sqrt(np.clip(var_y, 0, None) * np.clip(var_x, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 1e-12, cov / np.where(denom > 1e-12, denom, 1.0), np.nan)
    peak = sig.find_peak(rho, total.lags)
    if peak is None:
        return {"lag_s": float("nan"), "rho": float("nan"), "at_edge": False}
    return {"lag_s": peak.lag / rate_hz, "rho": peak.value, "at_edge": bool(peak.at_edge)}


def _pad_lags(sums: sig.PairSums, max_lag: int) -> sig.PairSums:
    lags = np.arange(-max_lag, max_lag + 1)
    where = np.searchsorted(lags, sums.lags)

    def grow(a: np.ndarray) -> np.ndarray:
        out = np.zeros(a.shape[:-1] + (len(lags),))
        out[..., where] = a
        return out

    return sig.PairSums(lags, grow(sums.cov), grow(sums.var_y), grow(sums.var_x), grow(sums.n))


def smoothness(x: np.ndarray, rate_hz: float, cutoff_hz: float, *, of: str = "velocity") -> dict[str, float]:
    """∫‖jerk‖ dt (`stages.signal.jerk_integral`) and the share of power above `cutoff_hz`
    (`stages.signal.high_frequency_ratio`, pooled over channels) of one series x [T, D]."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    f, p = sig.psd(x, rate_hz)  # [F], [F, D]
    total = float(p.sum())
    high = float(p[f > cutoff_hz].sum())
    return {"jerk_integral": sig.jerk_integral(x, rate_hz, of=of), "hf_ratio": high / total if total > 0 else 0.0,
            "duration_s": len(x) / rate_hz}


def band_limit_error(x: np.ndarray, rate_hz: float, bandwidth_hz: float, *, order: int = 2) -> float:
    """Relative error of executing x [T, D] through an actuator of bandwidth `bandwidth_hz`:

        ‖x − LP(x)‖₂ / ‖x − x̄‖₂,   LP = zero-phase Butterworth low-pass (`stages.signal.band_limit`)

    0 when the command is already band-limited; NaN for a constant command. For a sinusoid at f the
    zero-phase filter's gain is |H(f)|² = 1 / (1 + (f / f_c)^(2·order)), which gives the known answer.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    centred = x - x.mean(axis=0)
    norm = float(np.sqrt((centred ** 2).sum()))
    if norm <= 1e-12:
        return float("nan")
    residual = x - sig.band_limit(x, rate_hz, bandwidth_hz, order=order)
    return float(np.sqrt((residual ** 2).sum()) / norm)


def pooled_band_coherence(pairs: Sequence[tuple[np.ndarray, np.ndarray]], rate_hz: float, band: tuple[float, float],
                          nperseg: int, *, channel_weights: str = "variance") -> dict:
    """Magnitude-squared coherence γ²(f) = |S_xy|² / (S_xx S_yy) with cross-spectra pooled over episodes.

    pairs: (x [T, C], y [T, C]) per episode; channel c of x against channel c of y. Welch segments
    of `nperseg` samples (Hann, half overlap, linear detrend) never cross an episode boundary;
    episodes shorter than `nperseg` are skipped. The result is the mean of γ² over the bins inside
    `band` (inclusive), averaged over channels weighted by the variance of x (dead channels count
    nothing). Returns {"coherence", "bins_hz", "episodes", "segments"}.
    """
    sxy = sxx = syy = None
    used = segments = 0
    var = None
    for x, y in pairs:
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if len(x) < nperseg:
            continue
        f, pxy = sps.csd(x, y, fs=rate_hz, nperseg=nperseg, detrend="linear", axis=0)  # [F, C]
        _, pxx = sps.welch(x, fs=rate_hz, nperseg=nperseg, detrend="linear", axis=0)
        _, pyy = sps.welch(y, fs=rate_hz, nperseg=nperseg, detrend="linear", axis=0)
        n_seg = 1 + (len(x) - nperseg) // (nperseg - nperseg // 2)
        sxy = pxy * n_seg if sxy is None else sxy + pxy * n_seg  # Welch averages: re-weight by segments
        sxx = pxx * n_seg if sxx is None else sxx + pxx * n_seg
        syy = pyy * n_seg if syy is None else syy + pyy * n_seg
        v = x.var(axis=0) * len(x)
        var = v if var is None else var + v
        used += 1
        segments += n_seg
    if used == 0 or segments < 2:
        return {"coherence": float("nan"), "bins_hz": [], "episodes": used, "segments": segments}
    inside = (f >= band[0]) & (f <= band[1])
    if not inside.any():
        return {"coherence": float("nan"), "bins_hz": [], "episodes": used, "segments": segments}
    with np.errstate(invalid="ignore", divide="ignore"):
        gamma = np.abs(sxy) ** 2 / (sxx * syy)  # [F, C]
    gamma = np.nan_to_num(gamma[inside], nan=0.0).mean(axis=0)  # [C]
    w = var if channel_weights == "variance" else np.ones_like(var)
    value = float((gamma * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
    return {"coherence": value, "bins_hz": [float(v) for v in f[inside]], "episodes": used, "segments": segments}
