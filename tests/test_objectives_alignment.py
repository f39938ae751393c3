"""Cycle consistency (ch07 §7.7) and V–A spectral coherence against scipy (ch05 §5.4)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from stages.objectives import band_coherence, coherence, cycle, spectral_coherence


def test_cycle_known_answers():
    via = torch.tensor([[1.0, 2.0]])
    direct = torch.tensor([[0.0, 4.0]])
    assert float(cycle(via, direct)) == pytest.approx(3.0)  # |1| + |−2|
    assert float(cycle(via, direct, scale_free=True)) == pytest.approx(6 / 7)  # 3 / ((3 + 4)/2)
    # scale-free: invariant to a common scale, bounded by 2 (opposite vectors)
    assert float(cycle(10 * via, 10 * direct, scale_free=True)) == pytest.approx(6 / 7)
    assert float(cycle(via, -via, scale_free=True)) == pytest.approx(2.0)
    # per-sample weights
    both = cycle(torch.cat([via, via]), torch.cat([direct, via]), weight=torch.tensor([1.0, 3.0]))
    assert float(both) == pytest.approx(3.0 / 4)


def _signals(seed: int, shape: tuple[int, ...], fs: float):
    """x: noise + a 2 Hz tone; y: a delayed, filtered copy of x plus independent noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(shape[-1]) / fs
    x = rng.normal(size=shape) + np.sin(2 * np.pi * 2.0 * t)
    y = np.roll(scipy.signal.lfilter([0.5, 0.3], [1.0], x, axis=-1), 2, axis=-1) + 0.7 * rng.normal(size=shape)
    return x, y


@pytest.mark.parametrize(("nperseg", "noverlap"), [(32, None), (64, 48), (16, 0)])
def test_coherence_matches_scipy(nperseg, noverlap):
    fs = 20.0
    x, y = _signals(0, (3, 2, 256), fs)  # [B, C, T]
    freqs, gamma = coherence(torch.tensor(x), torch.tensor(y), fs=fs, nperseg=nperseg, noverlap=noverlap)
    ref_f, ref = scipy.signal.coherence(x, y, fs=fs, window="hann", nperseg=nperseg, noverlap=noverlap, detrend="constant")
    np.testing.assert_allclose(freqs.numpy(), ref_f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gamma.numpy(), ref, rtol=1e-9, atol=1e-12)  # float64 both sides


def test_band_coherence_and_loss():
    fs = 20.0
    x, y = _signals(1, (4, 200), fs)
    ref_f, ref = scipy.signal.coherence(x, y, fs=fs, nperseg=40)
    band = (1.0, 3.0)
    in_band = (ref_f >= band[0]) & (ref_f <= band[1])
    expected = ref[:, in_band].mean(axis=1)  # [B]
    got = band_coherence(torch.tensor(x), torch.tensor(y), fs=fs, band=band, nperseg=40)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    loss = spectral_coherence(torch.tensor(x), torch.tensor(y), fs=fs, band=band, nperseg=40)
    assert float(loss) == pytest.approx(1.0 - expected.mean(), rel=1e-9)
    # identical signals are fully coherent: loss 0
    same = spectral_coherence(torch.tensor(x), torch.tensor(x), fs=fs, band=band, nperseg=40)
    assert float(same) == pytest.approx(0.0, abs=1e-9)


def test_spectral_coherence_is_differentiable():
    fs = 20.0
    x, y = _signals(2, (2, 128), fs)
    v = torch.tensor(x, requires_grad=True)
    loss = spectral_coherence(v, torch.tensor(y), fs=fs, band=(0.5, 4.0), nperseg=32)
    loss.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_coherence_rejects_meaningless_settings():
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="2 Welch segments"):
        coherence(x, x, fs=20.0, nperseg=32)
    with pytest.raises(ValueError, match="no frequency bin"):
        band_coherence(torch.randn(2, 64), torch.randn(2, 64), fs=20.0, band=(0.1, 0.2), nperseg=16)
