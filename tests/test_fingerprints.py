"""Fingerprints: known-answer hashes and sketches, and the LSH search against brute force."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stages.cleaning.synthetic import SyntheticConfig, make_episode
from stages.data.fingerprints import (
    EpisodeFingerprint,
    MatchConfig,
    brute_force_pairs,
    cross_matches,
    episode_fingerprint,
    frame_hashes,
    grey_thumbnails,
    hamming,
    near_duplicates,
    normalise_text,
    text_minhash,
    text_similarity,
    timing_pattern,
    trajectory_sketch,
)


def test_dhash_known_answers():
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))[None]  # brighter to the right
    assert frame_hashes(ramp).tolist() == [0xFFFFFFFFFFFFFFFF]
    assert frame_hashes(ramp[:, :, ::-1]).tolist() == [0]
    assert hamming(np.array([0b1011], np.uint64), np.array([0b0001], np.uint64)).tolist() == [2]


def test_thumbnails_are_block_means_for_any_size():
    frames = np.zeros((1, 10, 7, 3), np.uint8)
    frames[:, :5] = 200  # top half bright
    th = grey_thumbnails(frames, 2, width=1)
    np.testing.assert_allclose(th[0, :, 0], [200, 0])


def test_text_normalisation_and_minhash():
    assert normalise_text("  Reach, the  RED target! ") == "reach the red target"
    a, b = text_minhash("reach the red target"), text_minhash("Reach the red target.")
    assert text_similarity(a, b) == 1.0
    assert text_similarity(a, text_minhash("把方块推到目标位置")) < 0.1


def test_trajectory_sketch_resamples_linear_signals_exactly():
    t = np.sort(np.random.default_rng(0).uniform(0, 2, 50))
    values = np.stack([3 * t + 1, -t], axis=1)
    sketch = trajectory_sketch(t, values, 5)
    grid = np.linspace(t[0], t[-1], 5)
    np.testing.assert_allclose(sketch, np.stack([3 * grid + 1, -grid], axis=1), rtol=1e-6)


def _episodes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [make_episode(f"ep_{i:04d}", ("reach", "push")[i % 2], rng, SyntheticConfig()) for i in range(n)]


def test_digest_ignores_ids_and_clocks_but_not_values():
    ep = _episodes(1)[0]
    copy = dataclasses.replace(ep, episode_id="other", streams={k: df.copy() for k, df in ep.streams.items()})
    for df in copy.streams.values():
        df["t"] += 12.5  # another session's clock
    assert episode_fingerprint(copy).digest == episode_fingerprint(ep).digest
    copy.streams["state"].loc[3, "x"] += 1e-9
    assert episode_fingerprint(copy).digest != episode_fingerprint(ep).digest


def _noisy(fp: EpisodeFingerprint, rng, rel: float, new_id: str) -> EpisodeFingerprint:
    """A copy with noise of `rel` × each sketch column's spread (as a re-recorded copy would carry)."""
    noise = rng.normal(0, 1, fp.trajectory.shape) * rel * fp.trajectory.std(axis=0)
    return dataclasses.replace(fp, episode_id=new_id, digest=new_id, trajectory=(fp.trajectory + noise).astype(np.float32))


def test_lsh_search_finds_what_brute_force_finds():
    rng = np.random.default_rng(3)
    base = [episode_fingerprint(ep) for ep in _episodes(12)]
    fps = list(base)
    for i, fp in enumerate(base[:4]):  # planted near copies: noise well below the match threshold
        fps.append(_noisy(fp, rng, 0.01, f"copy_{i}"))
    fps.append(dataclasses.replace(base[5], episode_id="exact_5"))
    config = MatchConfig()
    lsh = {(m.a, m.b) for m in near_duplicates(fps, config)}
    brute = {(m.a, m.b) for m in brute_force_pairs(fps, config)}
    assert lsh == brute
    assert {("ep_0000", "copy_0"), ("ep_0001", "copy_1"), ("ep_0002", "copy_2"), ("ep_0003", "copy_3"), ("ep_0005", "exact_5")} <= lsh
    exact = [m for m in near_duplicates(fps, config) if m.b == "exact_5"]
    assert exact[0].exact and exact[0].trajectory == 0.0


def test_lsh_recall_on_many_random_sketches():
    """E2LSH with the default tables finds every planted pair among 2000 random sketches."""
    rng = np.random.default_rng(7)
    n = 2000
    proto = EpisodeFingerprint("x", "d", np.zeros((4, 8, 8), np.float32), np.zeros(4, np.uint64),
                               np.zeros((16, 4), np.float32), ("a", "b", "c", "d"), "", np.zeros(64, np.uint64))
    traj = rng.normal(size=(n, 16, 4)).astype(np.float32)
    fps = [dataclasses.replace(proto, episode_id=f"e{i}", digest=f"e{i}", trajectory=traj[i]) for i in range(n)]
    for i in range(50):  # copies at ~half the threshold in z units
        fps.append(dataclasses.replace(proto, episode_id=f"c{i}", digest=f"c{i}",
                                       trajectory=traj[i] + rng.normal(0, 0.025, (16, 4)).astype(np.float32)))
    found = {(m.a, m.b) for m in near_duplicates(fps, MatchConfig())}
    assert {(f"e{i}", f"c{i}") for i in range(50)} <= found
    assert len(found) == 50  # random sketches are far apart: no false pairs


def test_cross_matches_put_the_reference_first():
    eps = _episodes(6, seed=1)
    train = [episode_fingerprint(ep) for ep in eps[:4]]
    evals = [episode_fingerprint(ep) for ep in eps[4:]]
    leaked = dataclasses.replace(evals[1], episode_id="ep_leak")
    found = cross_matches(train + [leaked], evals)
    assert [(m.a, m.b, m.exact) for m in found] == [(evals[1].episode_id, "ep_leak", True)]


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(n):
    assert near_duplicates([episode_fingerprint(ep) for ep in _episodes(n)]) == []


def test_near_duplicates_must_share_the_recording_timing():
    """Two recordings with (almost) the same content but their own clock jitter are not copies of each
    other unless `same_timing` is switched off; a copy keeps the original's sample intervals."""
    base = episode_fingerprint(_episodes(1, seed=4)[0])
    rng = np.random.default_rng(0)
    copy = _noisy(base, rng, 0.01, "copy")
    other = dataclasses.replace(copy, episode_id="other", digest="other",
                                timing=base.timing + rng.normal(0, 1e-3, base.timing.shape))  # 1 ms jitter
    fps = [base, copy, other]
    assert {m.b for m in near_duplicates(fps)} == {"copy"}
    assert {m.b for m in near_duplicates(fps, MatchConfig(same_timing=False))} == {"copy", "other"}
    shifted = dataclasses.replace(copy, episode_id="shifted")  # the timing pattern ignores a clock offset
    assert timing_pattern({"s": np.arange(10) * 0.1 + 7.0}, 4) == pytest.approx(timing_pattern({"s": np.arange(10) * 0.1}, 4))
    assert [m.b for m in near_duplicates([base, shifted])] == ["shifted"]
