"""Time-series maths shared by the stages: resampling, filters, cross-correlation, spectra, jerk, DTW.

Conventions: time runs along axis 0 of `[T, D]` arrays (channels-first `[C, M]` inside `xcorr`);
rates are in Hz, lags in samples unless a name says `_s` or `_ms`; a positive lag means the first
series is the second one delayed (y(t) = x(t - lag)).
"""

from stages.signal.dtw import dtw_lag_track, dtw_path
from stages.signal.filters import band_limit, derivative, highpass, lowpass, winsorize
from stages.signal.jerk import jerk, jerk_integral
from stages.signal.resample import interp_linear, median_rate, midpoints, nearest_index, uniform_grid
from stages.signal.spectra import band_coherence, coherence, high_frequency_ratio, psd
from stages.signal.xcorr import CORRELATORS, Correlator, PairSums, Peak, XcorrSums, find_peak, lagged_gram, lagged_gram_direct, parabolic_peak, xcorr_sums, xcorr_sums_direct

__all__ = [
    "CORRELATORS", "Correlator", "PairSums", "Peak", "XcorrSums", "band_coherence", "band_limit", "coherence", "derivative", "dtw_lag_track", "dtw_path",
    "find_peak", "high_frequency_ratio", "highpass", "interp_linear", "jerk", "jerk_integral", "lagged_gram", "lagged_gram_direct", "lowpass",
    "median_rate", "midpoints", "nearest_index", "parabolic_peak", "psd", "uniform_grid", "winsorize",
    "xcorr_sums", "xcorr_sums_direct",
]
