"""Cross-modal consistency: cycle consistency (ch07 §7.7) and V–A spectral coherence (ch05 §5.4)."""

from __future__ import annotations

import torch

from stages.objectives.weighting import check_weight, weighted_mean


def cycle(
    via_language: torch.Tensor,
    direct: torch.Tensor,
    *,
    scale_free: bool = False,
    weight: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cycle consistency ‖g_LA(g_VL(v)) − g_VA(v)‖₁ (ch07 §7.7 L_cycle; ch05 §5.4 language as bridge).

    via_language: [B, Z] = g_LA(g_VL(v)); direct: [B, Z] = g_VA(v). Per sample the L1 norm over Z.
    scale_free: divide by ½(‖via‖₁ + ‖direct‖₁) so the value lies in [0, 2] whatever the scale of
    the embeddings (the form the transferability probe gates on, ch07 §7.10 item 4).
    Known answer: via = [1, 2], direct = [0, 4] → 1 + 2 = 3; scale-free 3 / ((3 + 4)/2) = 6/7.
    """
    if via_language.shape != direct.shape or via_language.dim() != 2:
        raise ValueError(f"cycle expects two [B, Z] tensors, got {list(via_language.shape)}, {list(direct.shape)}")
    check_weight(weight, via_language.shape[0])
    per_sample = (via_language - direct).abs().sum(dim=-1)  # [B]
    if scale_free:
        scale = 0.5 * (via_language.abs().sum(dim=-1) + direct.abs().sum(dim=-1))
        per_sample = per_sample / (scale + eps)
    return weighted_mean(per_sample, weight)


def _segments(x: torch.Tensor, nperseg: int, step: int, detrend: str | None) -> torch.Tensor:
    seg = x.unfold(-1, nperseg, step)  # [..., S, nperseg]
    if detrend == "constant":
        seg = seg - seg.mean(dim=-1, keepdim=True)
    elif detrend is not None:
        raise ValueError(f"detrend must be 'constant' or None, got {detrend!r}")
    return seg


def coherence(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fs: float,
    nperseg: int,
    noverlap: int | None = None,
    detrend: str | None = "constant",
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude-squared coherence γ_xy(f) = |S_xy|² / (S_xx S_yy) by Welch's method (ch05 §5.4).

    Differentiable twin of `scipy.signal.coherence(x, y, fs, window="hann", nperseg, noverlap,
    detrend="constant")`: periodic Hann window, segments of `nperseg` samples every
    nperseg − noverlap (default overlap nperseg // 2), only whole segments, cross-spectra averaged
    over segments. Scaling constants cancel in the ratio.
    x, y: [..., T] (time last). Returns (freqs [F], γ [..., F]) with F = nperseg // 2 + 1.
    With one segment γ ≡ 1, so at least two segments are required.
    """
    if x.shape != y.shape:
        raise ValueError(f"coherence expects x and y of one shape, got {list(x.shape)} and {list(y.shape)}")
    noverlap = nperseg // 2 if noverlap is None else noverlap
    if not 0 <= noverlap < nperseg <= x.shape[-1]:
        raise ValueError(f"need 0 <= noverlap < nperseg <= T, got noverlap={noverlap}, nperseg={nperseg}, T={x.shape[-1]}")
    step = nperseg - noverlap
    if (x.shape[-1] - nperseg) // step + 1 < 2:
        raise ValueError(f"coherence needs at least 2 Welch segments; T={x.shape[-1]}, nperseg={nperseg}, step={step}")
    window = torch.hann_window(nperseg, periodic=True, dtype=x.dtype, device=x.device)
    fx = torch.fft.rfft(_segments(x, nperseg, step, detrend) * window, dim=-1)  # [..., S, F]
    fy = torch.fft.rfft(_segments(y, nperseg, step, detrend) * window, dim=-1)
    sxy = (fx * fy.conj()).mean(dim=-2)  # [..., F] cross-spectral density (unscaled)
    sxx = fx.abs().pow(2).mean(dim=-2)
    syy = fy.abs().pow(2).mean(dim=-2)
    gamma = sxy.abs().pow(2) / (sxx * syy + eps)
    freqs = torch.fft.rfftfreq(nperseg, d=1.0 / fs, dtype=x.dtype, device=x.device)
    return freqs, gamma


def band_coherence(
    v: torch.Tensor, a: torch.Tensor, *, fs: float, band: tuple[float, float], nperseg: int, noverlap: int | None = None
) -> torch.Tensor:
    """Mean γ_VA over the bins with lo ≤ f ≤ hi, per sample: [B, (C,) T] → [B] (ch05 §5.8 health metric)."""
    freqs, gamma = coherence(v, a, fs=fs, nperseg=nperseg, noverlap=noverlap)
    lo, hi = band
    in_band = (freqs >= lo) & (freqs <= hi)  # ω(f): flat band-pass weight
    if not bool(in_band.any()):
        raise ValueError(f"band {band} Hz holds no frequency bin (resolution {fs / nperseg:g} Hz up to {fs / 2:g} Hz)")
    per = gamma[..., in_band].mean(dim=-1)  # [B, (C,)]
    return per.reshape(per.shape[0], -1).mean(dim=-1)


def spectral_coherence(
    v: torch.Tensor,
    a: torch.Tensor,
    *,
    fs: float,
    band: tuple[float, float] = (0.1, 1.0),
    nperseg: int,
    noverlap: int | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_spec = ∫ (1 − γ_VA(f)) ω(f) df with ω a flat band-pass weight over `band` (ch05 §5.4).

    v: [B, T] or [B, C, T] visual feature sequences; a: the action sequences of the same shape
    (project both to matching channels first). fs: their common sample rate in Hz. Per sample the
    mean over channels and in-band bins of 1 − γ; then the weighted batch mean. In [0, 1].
    """
    check_weight(weight, v.shape[0])
    per_sample = 1.0 - band_coherence(v, a, fs=fs, band=band, nperseg=nperseg, noverlap=noverlap)
    return weighted_mean(per_sample, weight)
