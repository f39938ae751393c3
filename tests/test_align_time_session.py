"""Known-answer tests of session pooling (random-effects model) and the keep/downweight/drop rule."""

from __future__ import annotations

import numpy as np
import pytest

from stages.timealign.report import EpisodeResult, StreamResult, decide
from stages.timealign.session import SessionConfig, fit_session

CFG = SessionConfig()


def test_shared_offset_is_pooled_and_tighter_than_each_episode():
    rng = np.random.default_rng(0)
    true, sigma = 120.0, 4.0
    own = list(true + rng.normal(0, sigma, 12))
    fit = fit_session(own, [sigma] * 12, [True] * 12, [10.0 * i for i in range(12)], CFG)
    finals = np.array([e.offset_ms for e in fit.episodes])
    # 12 episodes of σ = 4 ms: the pooled estimate has σ ≈ 4/sqrt(11) ≈ 1.2 ms; allow 3σ
    assert np.abs(finals - true).max() < 3.6
    assert all(e.source == "pooled" and e.sigma_ms < sigma for e in fit.episodes)
    assert fit.between_ms < 2.0 and fit.used == 12


def test_drift_over_a_long_session_is_fitted():
    times = np.arange(10) * 20.0  # 10 episodes over 180 s
    true = 50.0 + 0.2 * times  # 0.2 ms/s = 200 ppm
    fit = fit_session(list(true), [0.5] * 10, [True] * 10, list(times), CFG)
    assert fit.drift_ppm == pytest.approx(200.0, rel=0.01)
    np.testing.assert_allclose([e.offset_ms for e in fit.episodes], true, atol=1e-6)  # noise-free: exact


def test_unusable_episode_takes_the_session_prediction():
    own = [100.0, 101.0, 99.0, None, 700.0]
    usable = [True, True, True, False, False]
    fit = fit_session(own, [2.0] * 5, usable, [0.0] * 5, CFG)
    for i in (3, 4):
        assert fit.episodes[i].source == "session"
        assert fit.episodes[i].offset_ms == pytest.approx(100.0, abs=0.01)
        assert np.isfinite(fit.episodes[i].residual_ms)


def test_outlier_keeps_its_own_estimate_with_the_disagreement_as_residual():
    own = [100.0, 101.0, 99.0, 100.5, 160.0]
    fit = fit_session(own, [1.0] * 5, [True] * 5, [0.0] * 5, CFG)
    odd = fit.episodes[4]
    assert odd.outlier and odd.source == "episode" and odd.offset_ms == 160.0
    assert odd.residual_ms == pytest.approx(60.0, abs=1.0)  # |160 - the others' ≈ 100|
    assert all(not e.outlier for e in fit.episodes[:4])


def test_session_of_one_and_of_none():
    one = fit_session([42.0], [3.0], [True], [0.0], CFG)
    assert one.episodes[0].offset_ms == 42.0 and one.episodes[0].residual_ms == pytest.approx(6.0)  # 2σ
    none = fit_session([None, 5.0], [np.inf, 3.0], [False, False], [0.0, 1.0], CFG)
    assert all(e.offset_ms is None and e.residual_ms == np.inf for e in none.episodes)
    pooled = fit_session([None, 5.0], [np.inf, 3.0], [False, False], [0.0, 1.0], CFG, pooled_ms=7.0, pooled_sigma_ms=2.0)
    assert all(e.offset_ms == 7.0 and e.residual_ms == pytest.approx(4.0) and e.source == "session" for e in pooled.episodes)


@pytest.mark.parametrize("residual, status, weight", [
    (10.0, "kept", 1.0),
    (150.0, "kept", 1.0),
    (200.0, "downweighted", 0.75),  # 150 / 200
    (300.0, "downweighted", 0.5),  # at twice the limit: still kept, at half weight
    (301.0, "dropped", 0.0),
    (np.inf, "dropped", 0.0),
])
def test_decide(residual, status, weight):
    res = EpisodeResult("ep", "s", {"state": StreamResult(0.0, 1.0, 0.0, source="reference"),
                                    "camera": StreamResult(10.0, 0.5, residual, source="pooled")})
    decide(res, 150.0, 2.0)
    assert res.status == status and res.weight == pytest.approx(weight)
    if status != "kept":
        assert "`camera`" in res.reason


def test_two_confident_episodes_that_disagree_fall_back_to_the_pooled_peak():
    """A demo session (S016: camera 407.5 ms behind state) whose only two usable episodes peaked at
    325.6 and 414.3 ms: each is a robust outlier of their median, so no session model can be fitted.
    The four episodes without a usable peak take the session's pooled peak (399.9 ms); the two keep
    their own, bounded by their distance from it. Before, every other episode was left unaligned."""
    own = [395.4, 325.6, None, 429.1, 414.3, 392.8]
    sigma = [np.inf, 7.3, np.inf, np.inf, 6.3, np.inf]
    usable = [False, True, False, False, True, False]
    fit = fit_session(own, sigma, usable, [0.0] * 6, CFG, pooled_ms=399.9, pooled_sigma_ms=3.0)
    for i in (0, 2, 3, 5):
        e = fit.episodes[i]
        assert e.source == "session" and e.offset_ms == 399.9 and e.residual_ms == pytest.approx(CFG.coverage * 3.0)
    wrong, right = fit.episodes[1], fit.episodes[4]
    assert wrong.offset_ms == 325.6 and wrong.outlier and wrong.residual_ms == pytest.approx(399.9 - 325.6)
    assert right.offset_ms == 414.3 and right.outlier and right.residual_ms == pytest.approx(414.3 - 399.9)
    assert fit.offset_ms == 399.9 and fit.used == 0
    # without a pooled peak above chance there is nothing to give the others
    bare = fit_session(own, sigma, usable, [0.0] * 6, CFG)
    assert [e.source for e in bare.episodes] == ["none", "episode", "none", "none", "episode", "none"]
    assert bare.offset_ms is None
