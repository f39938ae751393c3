"""Known-answer tests for the time-series maths in `stages.signal`."""

from __future__ import annotations

import numpy as np
import pytest

from stages.signal import (
    band_coherence,
    band_limit,
    derivative,
    dtw_lag_track,
    dtw_path,
    find_peak,
    high_frequency_ratio,
    interp_linear,
    jerk_integral,
    lowpass,
    median_rate,
    midpoints,
    nearest_index,
    parabolic_peak,
    uniform_grid,
    winsorize,
    xcorr_sums,
    xcorr_sums_direct,
)


def fourier_shift(x: np.ndarray, lag: float) -> np.ndarray:
    """x delayed by a fractional number of samples (exact for a periodic band-limited signal)."""
    f = np.fft.rfftfreq(len(x))
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * lag), len(x))


def band_limited_noise(n: int, cutoff: float, seed: int) -> np.ndarray:
    """White noise low-passed to `cutoff` cycles/sample: a broadband-enough test signal."""
    return lowpass(np.random.default_rng(seed).normal(size=n), 1.0, cutoff)


# ----------------------------------------------------------------------------- resampling


def test_linear_signals_resample_exactly():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 3, 200))  # irregular, jittered instants
    values = np.stack([2.5 * t - 1.0, -0.3 * t + 7.0], axis=1)  # two linear channels [N, 2]
    t_new = uniform_grid(t[0], t[-1], 97.0)
    out, inside = interp_linear(t, values, t_new)
    assert inside.all()
    # linear interpolation reproduces a linear function up to float64 rounding
    np.testing.assert_allclose(out, np.stack([2.5 * t_new - 1.0, -0.3 * t_new + 7.0], axis=1), atol=1e-12)


def test_interp_marks_points_outside_the_samples():
    t = np.array([1.0, 2.0, 3.0])
    out, inside = interp_linear(t, np.array([10.0, 20.0, 30.0]), np.array([0.5, 1.5, 3.5]))
    np.testing.assert_array_equal(inside, [False, True, False])
    np.testing.assert_allclose(out, [10.0, 15.0, 30.0])  # held at the ends, but flagged


def test_uniform_grid_includes_stop():
    g = uniform_grid(0.0, 1.0, 20.0)
    assert len(g) == 21 and g[-1] == pytest.approx(1.0)
    assert len(uniform_grid(1.0, 0.0, 20.0)) == 0


def test_nearest_index_and_error():
    t = np.array([0.0, 0.05, 0.1, 0.2])
    idx, err = nearest_index(t, np.array([-1.0, 0.024, 0.026, 0.15, 0.16, 9.0]))
    np.testing.assert_array_equal(idx, [0, 0, 1, 2, 3, 3])  # 0.15 is a tie: the earlier frame
    np.testing.assert_allclose(err, [1.0, 0.024, 0.024, 0.05, 0.04, 8.8])


def test_midpoints_and_median_rate():
    t = np.array([0.0, 0.1, 0.3])
    np.testing.assert_allclose(midpoints(t), [0.05, 0.2])
    jittered = np.arange(100) / 80.0 + np.random.default_rng(1).uniform(-1e-3, 1e-3, 100)
    assert median_rate(jittered) == pytest.approx(80.0, rel=0.02)  # jitter ±1 ms moves the median spacing little


# ----------------------------------------------------------------------------- filters


def test_zero_phase_filters_do_not_shift_a_pulse():
    t = np.arange(1000) / 100.0
    pulse = np.exp(-0.5 * ((t - 5.0) / 0.3) ** 2)
    smooth = lowpass(pulse, 100.0, 2.0)
    assert abs(t[np.argmax(smooth)] - 5.0) < 1e-9  # symmetric pulse stays centred on its sample


def test_central_derivative_of_quadratic_is_exact_inside():
    rate = 50.0
    t = np.arange(100) / rate
    d = derivative(3 * t**2 + t, rate)
    np.testing.assert_allclose(d[1:-1], 6 * t[1:-1] + 1, atol=1e-9)  # central differences are exact on quadratics
    dd = derivative(t**3, rate, order=2)
    np.testing.assert_allclose(dd[2:-2], 6 * t[2:-2], atol=1e-6)


def test_causal_band_limit_lags_and_zero_phase_does_not():
    rate, f = 100.0, 1.0
    t = np.arange(2000) / rate
    x = np.sin(2 * np.pi * f * t)
    causal = band_limit(x, rate, 5.0, causal=True)
    zero = band_limit(x, rate, 5.0)
    s_causal = xcorr_sums(causal[500:], x[500:], 20)
    s_zero = xcorr_sums(zero[500:], x[500:], 20)
    lag_causal = find_peak(s_causal.rho()[0, 0], s_causal.lags).lag
    lag_zero = find_peak(s_zero.rho()[0, 0], s_zero.lags).lag
    # 2nd-order Butterworth at 5 Hz: group delay at 1 Hz ≈ 0.045 s = 4.5 samples; zero-phase: none
    assert 3.5 < lag_causal < 5.5
    assert abs(lag_zero) < 0.05
    assert band_limit(np.ones(50), rate, 5.0, causal=True) == pytest.approx(np.ones(50))  # steady start


def test_winsorize_clips_a_spike_only():
    x = np.random.default_rng(2).normal(size=500)
    x[100] = 1e6
    w = winsorize(x)
    assert w[100] < 10 and np.array_equal(np.delete(w, 100), np.delete(x, 100))


# ----------------------------------------------------------------------------- cross-correlation


@pytest.mark.parametrize("lag", [3.37, -7.81, 0.5, 12.02])
def test_fractional_lag_is_recovered_to_sub_sample_accuracy(lag):
    base = band_limited_noise(4000, 0.05, seed=3)
    y, x = fourier_shift(base, lag)[1000:3000], base[1000:3000]
    sums = xcorr_sums(y, x, 50)
    peak = find_peak(sums.rho()[0, 0], sums.lags)
    # parabolic interpolation on a peak ~20 samples wide: bias well below 0.01 sample
    assert peak.lag == pytest.approx(lag, abs=0.01)
    assert peak.value > 0.999 and not peak.at_edge


def test_fft_sums_equal_direct_sums_with_masks():
    rng = np.random.default_rng(4)
    y, x = rng.normal(size=(2, 300)), rng.normal(size=(3, 300)) + 5.0  # non-zero mean on purpose
    my, mx = rng.random(300) > 0.2, rng.random(300) > 0.1
    fast = xcorr_sums(y, x, 40, y_mask=my, x_mask=mx)
    slow = xcorr_sums_direct(y, x, 40, y_mask=my, x_mask=mx)
    np.testing.assert_array_equal(fast.n, slow.n)
    np.testing.assert_allclose(fast.cov, slow.cov, atol=1e-9)  # float64 FFT round-off on sums of ~300 terms
    np.testing.assert_allclose(fast.rho(), slow.rho(), atol=1e-12)


def test_pearson_per_lag_ignores_trend_and_partial_overlap():
    base = band_limited_noise(3000, 0.05, seed=5)
    x = base[500:2500].copy()
    y = fourier_shift(base, 9.0)[500:2500] + 100.0  # offset mean must not matter
    x_mask = np.ones(2000, bool)
    x_mask[:700] = False  # x starts late: overlap changes with the lag
    sums = xcorr_sums(y, x, 60, x_mask=x_mask)
    assert find_peak(sums.rho()[0, 0], sums.lags).lag == pytest.approx(9.0, abs=0.02)


def test_pooled_sums_match_one_long_recording():
    base = band_limited_noise(6000, 0.05, seed=6)
    y = fourier_shift(base, 4.25)
    parts = [xcorr_sums(y[a:a + 1500], base[a:a + 1500], 30) for a in (500, 2000, 3500)]
    pooled = parts[0] + parts[1] + parts[2]
    peak = find_peak(pooled.rho()[0, 0], pooled.lags)
    assert peak.lag == pytest.approx(4.25, abs=0.01)
    np.testing.assert_array_equal(pooled.n, sum(p.n for p in parts))


def test_pair_rho_selects_pairs():
    rng = np.random.default_rng(7)
    y, x = rng.normal(size=(2, 200)), rng.normal(size=(3, 200))
    sums = xcorr_sums(y, x, 10)
    np.testing.assert_allclose(sums.pair_rho(np.array([1, 0]), np.array([2, 2])), sums.rho()[[1, 0], [2, 2]])


def test_parabolic_peak_known_vertex():
    lags = np.arange(-5, 6, dtype=float)
    c = 1.0 - 0.1 * (lags - 0.3) ** 2  # a parabola with vertex at 0.3 is fitted exactly
    delta, value, curv = parabolic_peak(c, 5)
    assert delta == pytest.approx(0.3) and value == pytest.approx(1.0) and curv == pytest.approx(-0.2)


def test_peak_prominence_and_edge():
    lags = np.arange(-10, 11)
    c = np.exp(-0.5 * (lags / 1.5) ** 2) + 0.4 * np.exp(-0.5 * ((lags - 7) / 1.0) ** 2)
    peak = find_peak(c, lags)
    assert peak.lag == pytest.approx(0.0, abs=0.05)
    assert peak.side == pytest.approx(0.4, abs=0.02)  # the rival lobe at lag 7
    assert peak.prominence == pytest.approx(0.6, abs=0.03)
    assert find_peak(c, lags, lo=3, hi=5).at_edge  # the search window ends on a rising slope


# ----------------------------------------------------------------------------- spectra, jerk, dtw


def test_coherence_of_a_signal_with_itself_plus_noise():
    rate = 100.0
    x = band_limited_noise(8000, 0.1, seed=8)
    y = 2.0 * x + 1e-6 * np.random.default_rng(9).normal(size=8000)
    assert band_coherence(x, y, rate, (0.5, 5.0)) > 0.999  # linear relation, negligible noise
    z = np.random.default_rng(10).normal(size=8000)
    assert band_coherence(x, z, rate, (0.5, 5.0)) < 0.2  # independent: γ² near its bias floor


def test_high_frequency_ratio_of_two_tones():
    rate = 200.0
    t = np.arange(4000) / rate
    x = np.sin(2 * np.pi * 2 * t) + np.sqrt(1 / 3) * np.sin(2 * np.pi * 40 * t)  # powers 1/2 and 1/6
    assert high_frequency_ratio(x, rate, 10.0) == pytest.approx(0.25, abs=0.01)


def test_jerk_integral_known_answer():
    rate = 1000.0
    t = np.arange(int(2 * rate) + 1) / rate
    x = t**3  # jerk ≡ 6, so ∫|jerk| over 2 s = 12
    assert jerk_integral(x, rate) == pytest.approx(12.0, rel=1e-3)  # ends use one-sided differences
    xy = np.stack([t**3, np.zeros_like(t)], axis=1)
    assert jerk_integral(xy, rate) == pytest.approx(12.0, rel=1e-3)
    assert jerk_integral(3 * t + 1, rate) == pytest.approx(0.0, abs=1e-6)


def test_dtw_recovers_a_constant_and_a_drifting_lag():
    base = band_limited_noise(900, 0.04, seed=11)
    y = fourier_shift(base, 6.0)[100:800]
    track = dtw_lag_track(y, base[100:800], 15)
    assert np.median(track[50:-50]) == pytest.approx(6.0, abs=0.5)  # DTW works at whole-sample resolution
    # lag drifting linearly from 2 to 10 samples along the series
    n = 700
    t_warp = np.arange(n) - np.linspace(2, 10, n)
    y2 = np.interp(t_warp, np.arange(900) - 100, base)
    track2 = dtw_lag_track(y2, base[100:800], 15)
    slope = np.polyfit(np.arange(100, 600), track2[100:600], 1)[0]
    assert slope * (n - 1) == pytest.approx(8.0, abs=1.5)


def test_dtw_path_is_monotone_and_banded():
    rng = np.random.default_rng(12)
    path = dtw_path(rng.normal(size=60), rng.normal(size=60), 5, shift=2)
    assert (np.diff(path, axis=0) >= 0).all()
    assert (np.abs(path[:, 0] - path[:, 1] - 2) <= 5).all()
