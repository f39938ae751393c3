"""Known-answer tests for the probe's health metrics (stages/probes/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.probes import metrics as m


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_known_ranks():
    # query 0: relevant candidate 2 is ranked 1st; query 1: relevant 0 ranked 3rd; query 2: relevant 1 ranked 2nd
    sim = np.array([[0.1, 0.2, 0.9, 0.0],
                    [0.5, 0.6, 0.7, 0.1],
                    [0.9, 0.8, 0.1, 0.0]])
    rel = np.zeros_like(sim, dtype=bool)
    rel[0, 2] = rel[1, 0] = rel[2, 1] = True
    r = m.retrieval_metrics(sim, rel, ks=(1, 2, 3))
    assert r["R@1"] == pytest.approx(1 / 3)
    assert r["R@2"] == pytest.approx(2 / 3)
    assert r["R@3"] == pytest.approx(1.0)
    assert r["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert r["queries"] == 3


def test_retrieval_default_keys_and_multiple_relevant():
    sim = np.array([[0.3, 0.9, 0.8] + [0.0] * 9])
    rel = np.zeros_like(sim, dtype=bool)
    rel[0, [0, 2]] = True  # best relevant is candidate 2 (0.8), behind one non-relevant -> rank 2
    r = m.retrieval_metrics(sim, rel)
    assert set(r) == {"R@1", "R@5", "R@10", "MRR", "queries"}
    assert (r["R@1"], r["R@5"], r["MRR"]) == (0.0, 1.0, 0.5)


def test_retrieval_ties_are_pessimistic_and_collapsed_model_is_worst():
    sim = np.ones((4, 4))  # a collapsed model: every score equal
    rel = np.eye(4, dtype=bool)
    r = m.retrieval_metrics(sim, rel, ks=(1, 4))
    assert r["R@1"] == 0.0  # three non-relevant ties rank ahead
    assert r["R@4"] == 1.0
    assert r["MRR"] == pytest.approx(0.25)


def test_retrieval_excludes_and_skips_queries_without_relevant():
    sim = np.array([[1.0, 0.5, 0.2], [0.1, 0.2, 0.3]])
    rel = np.array([[True, False, True], [False, False, False]])
    r = m.retrieval_metrics(sim, rel, ks=(1,), exclude=np.array([[True, False, False], [False, False, False]]))
    assert r["queries"] == 1  # the second query has no relevant candidate
    assert r["R@1"] == 0.0 and r["MRR"] == 0.5  # itself excluded: 0.5 (non-relevant) beats 0.2


def test_task_relevance_and_chance():
    rel = m.task_relevance(["a", "b", "a"], ["a", "a", "b", "c"])
    assert rel.tolist() == [[True, True, False, False], [False, False, True, False], [True, True, False, False]]
    assert m.chance_recall(rel) == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    # k = 2 of 4 candidates: query 0 has 2 relevant -> 1 − C(2,2)/C(4,2) = 5/6; query 1 has 1 -> 1 − C(3,2)/C(4,2) = 1/2
    assert m.chance_recall(rel, k=2) == pytest.approx((5 / 6 + 1 / 2 + 5 / 6) / 3)


def test_alignment_matrix_perfect_and_shuffled():
    rng = np.random.default_rng(0)
    tasks = np.repeat(np.arange(4), 5)
    centres = rng.normal(size=(4, 16)) * 10
    v = centres[tasks] + rng.normal(size=(20, 16)) * 0.01
    amat = m.alignment_matrix({"V": v, "L": v.copy(), "A": rng.normal(size=(20, 16))}, tasks, k=1)
    mat = np.array(amat["matrix"])
    assert amat["modalities"] == ["V", "L", "A"] and amat["k"] == 1
    assert mat[0, 1] == 1.0 and mat[1, 0] == 1.0 and mat[0, 0] == 1.0  # clustered by task: top-1 is a task mate
    assert mat[2, 2] < 0.6  # random action rows: chance is 4/19


# ----------------------------------------------------------------------------- MI bound


def test_info_nce_bound_known_answer():
    # a = b = I2, logit scale 1: each row's logits are [1, 0] -> L = log(1 + e^-1)
    out = m.info_nce_bound(np.eye(2), np.eye(2), 1.0)
    assert out["loss"] == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # float32 maths
    assert out["mi_bound"] == pytest.approx(math.log(2) - math.log(1 + math.exp(-1)), abs=1e-6)
    assert out["n"] == 2


# ----------------------------------------------------------------------------- open set


def test_energy_score_known_answer():
    e = m.energy_score(np.array([[2.0, 1.0, 0.0]]), 1.0)
    assert e[0] == pytest.approx(-2.4076059644, abs=1e-10)


def test_energy_score_temperature():
    # T = 2: −2 · log(e^1 + e^0.5 + e^0)
    e = m.energy_score(np.array([[2.0, 1.0, 0.0]]), 2.0)
    assert e[0] == pytest.approx(-2 * math.log(math.e + math.exp(0.5) + 1), abs=1e-12)


def test_auroc_known_answers():
    assert m.auroc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert m.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # positives {0.8, 0.4}, negatives {0.6, 0.2}: pairs won 3 of 4
    assert m.auroc([0.8, 0.4, 0.6, 0.2], [1, 1, 0, 0]) == 0.75
    # a tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert m.auroc([0.5, 0.9, 0.5], [1, 1, 0]) == 0.75
    assert math.isnan(m.auroc([0.1, 0.2], [1, 1]))


# ----------------------------------------------------------------------------- calibration


def test_ece_known_answer_with_edge_values():
    # 15 bins with (lo, hi] edges: 0.6 = 9/15 belongs to (8/15, 9/15], 0.2 = 3/15 to (2/15, 3/15]
    conf = np.array([0.9, 0.9, 0.6, 0.2])
    correct = np.array([1, 0, 1, 0], dtype=bool)
    table = m.calibration_bins(conf, correct)
    assert table["counts"][8] == 1 and table["counts"][2] == 1 and table["counts"][13] == 2
    # |0.5 − 0.9|·2/4 + |1 − 0.6|·1/4 + |0 − 0.2|·1/4
    assert m.expected_calibration_error(conf, correct) == pytest.approx(0.35, abs=1e-12)


def test_ece_edge_goes_to_lower_bin():
    table = m.calibration_bins(np.array([1 / 15, 1 / 15 + 1e-9, 0.0, 1.0]), np.ones(4, bool))
    assert table["counts"][0] == 2  # 0 and exactly 1/15 -> first bin (0 joins it)
    assert table["counts"][1] == 1
    assert table["counts"][14] == 1


def test_ece_perfectly_calibrated_is_zero():
    conf = np.full(10, 0.7)
    correct = np.array([1] * 7 + [0] * 3, bool)
    assert m.expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_fit_temperature_known_answer():
    # every sample has logits [2, 0] and 3/4 of labels are class 0: σ(2/T) = 3/4 -> T = 2 / ln 3
    logits = np.tile([2.0, 0.0], (400, 1))
    labels = np.array([0] * 300 + [1] * 100)
    t = m.fit_temperature(logits, labels)
    assert t == pytest.approx(2 / math.log(3), rel=1e-6)  # bounded Brent search, xatol 1e-10 in log T
    conf, _ = m.softmax_confidence(logits, labels, t)
    assert conf[0] == pytest.approx(0.75, rel=1e-6)


def test_temperature_scaling_lowers_ece_of_overconfident_logits():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(3000, 5)) * 1.5
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    over = true_logits * 3.0  # overconfident by a factor 3
    t = m.fit_temperature(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)  # 3000 samples: the NLL optimum lies within ~5% of 3
    before = m.expected_calibration_error(*m.softmax_confidence(over, labels))
    after = m.expected_calibration_error(*m.softmax_confidence(over, labels, t))
    assert after < before / 2


# ----------------------------------------------------------------------------- KL


def test_gaussian_kl_known_answer():
    kl = m.gaussian_kl(0.0, 0.0, 1.0, math.log(2.0))
    assert float(kl) == pytest.approx(math.log(2) + 2 / 8 - 0.5, abs=1e-12)
    assert float(m.gaussian_kl(0.3, -1.0, 0.3, -1.0)) == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------- time series


def _smooth_noise(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 40, d))
    kernel = np.hanning(15)
    return np.stack([np.convolve(x[:, i], kernel, mode="same") for i in range(d)], axis=1)[20:-20]


def test_phase_lag_recovers_integer_delay_pooled():
    rate = 20.0
    pairs = []
    for seed in range(3):
        x = _smooth_noise(200, 3, seed)
        y = np.roll(x, 2, axis=0)  # y(t) = x(t − 2 samples)
        pairs.append((y[5:], x[5:]))
    out = m.phase_lag(pairs, rate, max_lag_s=0.5)
    assert out["lag_s"] == pytest.approx(2 / rate, abs=0.1 / rate)  # parabolic refinement: within 0.1 sample
    assert out["rho"] > 0.95 and not out["at_edge"]
    neg = m.phase_lag([(x, y) for y, x in pairs], rate, max_lag_s=0.5)
    assert neg["lag_s"] == pytest.approx(-2 / rate, abs=0.1 / rate)


def test_phase_lag_constant_output_is_nan():
    x = _smooth_noise(100, 2, 0)
    assert math.isnan(m.phase_lag([(np.zeros_like(x), x)], 20.0, 0.3)["lag_s"])


def test_jerk_integral_known_answer():
    # velocity v(t) = t² -> jerk = v'' = 2 everywhere; ∫₀¹ |2| dt = 2 (central differences are exact on quadratics)
    rate = 100.0
    t = np.arange(101) / rate
    out = m.smoothness(t ** 2, rate, cutoff_hz=10.0, of="velocity")
    assert out["jerk_integral"] == pytest.approx(2.0, abs=1e-9)


def test_hf_ratio_of_two_tones():
    rate, n = 100.0, 1000
    t = np.arange(n) / rate
    x = np.sin(2 * np.pi * 2 * t) + 0.5 * np.sin(2 * np.pi * 20 * t)
    out = m.smoothness(x, rate, cutoff_hz=10.0)
    # power ratio of the 20 Hz tone: 0.25 / 1.25 = 0.2; Welch leakage with a Hann window stays < 1e-3
    assert out["hf_ratio"] == pytest.approx(0.2, abs=2e-3)


def test_band_limit_error_known_answer():
    rate, n, fc = 200.0, 4000, 4.0
    t = np.arange(n) / rate
    f1, f2, b = 1.0, 16.0, 0.5
    x = np.sin(2 * np.pi * f1 * t) + b * np.sin(2 * np.pi * f2 * t)
    # zero-phase Butterworth, order 2 applied forward and back: gain 1 / (1 + (f / fc)^4)
    g1, g2 = 1 / (1 + (f1 / fc) ** 4), 1 / (1 + (f2 / fc) ** 4)
    expected = math.sqrt((1 - g1) ** 2 + b ** 2 * (1 - g2) ** 2) / math.sqrt(1 + b ** 2)
    assert m.band_limit_error(x, rate, fc) == pytest.approx(expected, rel=1e-2)  # edge padding of a finite series
    assert m.band_limit_error(np.sin(2 * np.pi * 0.2 * t), rate, fc) < 1e-2
    assert math.isnan(m.band_limit_error(np.ones(100), rate, fc))


def test_pooled_band_coherence_identical_and_independent():
    rate = 20.0
    same = [(x, 2 * x + 1) for x in (_smooth_noise(120, 2, s) for s in range(4))]
    out = m.pooled_band_coherence(same, rate, band=(0.1, 3.0), nperseg=40)
    assert out["coherence"] == pytest.approx(1.0, abs=1e-9)
    assert out["episodes"] == 4 and out["bins_hz"][0] == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    indep = [(rng.normal(size=(400, 2)), rng.normal(size=(400, 2))) for _ in range(8)]
    low = m.pooled_band_coherence(indep, rate, band=(0.1, 3.0), nperseg=40)
    # ~150 pooled segments: γ² of independent noise is ≈ 1/segments, far below 0.2
    assert low["coherence"] < 0.2
    assert math.isnan(m.pooled_band_coherence(same, rate, band=(0.1, 0.2), nperseg=40)["coherence"])
