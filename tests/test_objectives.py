"""Known answers for the contrastive, video and regulariser losses (ch07 §7.2, §7.9; ch05 §5.2, §5.6)."""

from __future__ import annotations

import math

import pytest
import torch

from stages.objectives import (
    LOSSES,
    decollapse,
    distillation_kl,
    info_nce,
    mutual_info_bound,
    mvm,
    near_frame_targets,
    temporal_consistency,
    tube_mask,
    weighted_mean,
)
from stages.registry import Registry


def close(value, expected, *, rtol=1e-6, atol=1e-6):
    """Default tolerance: float32 arithmetic on O(1) values; 1e-6 is far above rounding (~1e-7)
    and far below any formula error. Looser tolerances carry their own reason at the call."""
    value = value.detach() if isinstance(value, torch.Tensor) else value
    assert float(value) == pytest.approx(expected, rel=rtol, abs=atol)


def test_registry_lists_every_loss():
    assert isinstance(LOSSES, Registry)
    assert LOSSES.names() == sorted([
        "info_nce", "mvm", "temporal_consistency", "bc_nll", "bc_huber", "bc_quantile", "spectral_prior",
        "dynamics_hinge", "cycle", "spectral_coherence", "distillation_kl", "decollapse",
    ])
    assert LOSSES.get("info_nce") is info_nce


# ----------------------------------------------------------------------------- InfoNCE


def test_info_nce_identity_known_answer():
    # Each row's logits are [1, 0] (scale 1, unit rows): CE = log(1 + e^-1) in both directions.
    eye = torch.eye(2)
    close(info_nce(eye, eye, 1.0), math.log(1 + math.exp(-1)))


def test_info_nce_normalises_rows_and_is_bidirectional():
    # a = I, b = [[1, 0], [1, 1]] (b row 2 normalises to [1, 1]/√2), logit scale 2:
    #   a→b logits 2·[[1, 1/√2], [0, 1/√2]]  → CE rows log(1+e^(√2−2)), log(1+e^(−√2))
    #   b→a logits 2·[[1, 0], [1/√2, 1/√2]]  → CE rows log(1+e^(−2)),  log 2
    a = torch.eye(2)
    b = torch.tensor([[3.0, 0.0], [5.0, 5.0]])  # scales must not matter
    r2 = math.sqrt(2)
    expected = (math.log(1 + math.exp(r2 - 2)) + math.log(1 + math.exp(-r2)) + math.log(1 + math.exp(-2)) + math.log(2)) / 4
    close(info_nce(a, b, torch.tensor(2.0)), expected)


def test_info_nce_soft_targets_known_answer():
    # targets [[1, .5], [.5, 1]] → distribution [2/3, 1/3]; logits [1, 0]:
    # CE = −(2/3)(1 − log(1+e)) + (1/3) log(1+e) = log(1+e) − 2/3, the same in both directions.
    eye = torch.eye(2)
    soft = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    close(info_nce(eye, eye, 1.0, soft_targets=soft), math.log(1 + math.e) - 2 / 3)


def test_info_nce_half_negatives_known_answer():
    # candidate weight 0.5 on the negative: CE = −1 + log(e + 0.5) = log(1 + 0.5/e).
    eye = torch.eye(2)
    w = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    close(info_nce(eye, eye, 1.0, negative_weights=w), math.log(1 + 0.5 / math.e))
    # weight 0 removes the negative entirely: a single candidate, CE = 0.
    close(info_nce(eye, eye, 1.0, negative_weights=torch.eye(2)), 0.0)


def test_info_nce_local_rows_against_gathered_match_the_full_batch():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ep = torch.tensor([0, 0, 0, 1, 1, 1])
    fr = torch.tensor([0, 1, 2, 0, 1, 5])
    soft = near_frame_targets(ep, fr, radius=1)
    full = info_nce(a, b, 3.0, soft_targets=soft)
    # two "ranks" of 3 rows each; every rank sees all gathered rows, scores only its own.
    parts = [
        info_nce(a[o : o + 3], b[o : o + 3], 3.0, a_all=a, b_all=b, offset=o, soft_targets=soft[o : o + 3])
        for o in (0, 3)
    ]
    close(sum(parts) / 2, float(full), rtol=1e-5)  # float32 sums in another order


def test_info_nce_weight_masks_samples():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    masked = info_nce(a, b, 2.0, weight=torch.tensor([1.0, 0.0, 1.0]))
    # the mean over rows 0 and 2 of the per-row loss, computed with one-hot weights
    rows = [info_nce(a, b, 2.0, weight=torch.eye(3)[i]) for i in (0, 2)]
    close(masked, (float(rows[0]) + float(rows[1])) / 2)
    close(info_nce(a, b, 2.0, weight=torch.zeros(3)), 0.0)


def test_info_nce_gradients_are_correct():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 2.5, soft_targets=soft), (a, b))


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="soft_targets"):
        info_nce(torch.eye(2), torch.eye(2), 1.0, soft_targets=torch.ones(3, 3))
    with pytest.raises(ValueError, match="both"):
        info_nce(torch.eye(2), torch.eye(2), 1.0, a_all=torch.eye(2))


def test_near_frame_targets_known_matrix():
    ep = torch.tensor([0, 0, 0, 1])
    fr = torch.tensor([10, 11, 13, 11])
    t = near_frame_targets(ep, fr, radius=1, weight=0.5)
    expected = torch.tensor([
        [1.0, 0.5, 0.0, 0.0],  # frame 11 of episode 0 is near; episode 1 never is
        [0.5, 1.0, 0.0, 0.0],  # frame 13 is 2 away
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    assert torch.equal(t, expected)
    # local rows of a gathered batch: rows 2..3 only, positives at the offset columns
    assert torch.equal(near_frame_targets(ep, fr, radius=1, offset=2, rows=2), expected[2:])


def test_mutual_info_bound():
    close(mutual_info_bound(1.0, 8), math.log(8) - 1.0)


# ----------------------------------------------------------------------------- MVM, temporal consistency


def test_tube_mask_ratio_and_tubes():
    g = torch.Generator().manual_seed(0)
    m = tube_mask(4, 3, 16, 0.75, generator=g)
    assert m.shape == (4, 3, 16) and m.dtype == torch.bool
    assert m.sum(dim=2).eq(12).all()  # exactly round(0.75·16) per frame
    assert (m == m[:, :1]).all()  # the same spatial mask in every frame: tubes
    again = tube_mask(4, 3, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    assert not torch.equal(m[0], m[1])  # different samples get different masks (seed 0)


def test_mvm_scores_masked_patches_only():
    pred = torch.tensor([[[1.0, 3.0], [100.0, -100.0]]])  # [B=1, N=2, P=2]
    target = torch.zeros(1, 2, 2)
    mask = torch.tensor([[True, False]])
    close(mvm(pred, target, mask), 2.0)  # mean(|1|, |3|) on patch 0; patch 1 ignored
    close(mvm(pred, target, mask, kind="mse"), 5.0)  # mean(1, 9)
    # per-patch target normalisation: target [1, 3] → [-1, 1]; pred [0, 0] → L1 1
    close(mvm(torch.zeros(1, 1, 2), torch.tensor([[[1.0, 3.0]]]), torch.tensor([[True]]), norm_target=True), 1.0, rtol=1e-5)


def test_mvm_weights_and_empty_masks():
    pred = torch.tensor([[[1.0]], [[5.0]], [[7.0]]])  # [3, 1, 1]
    target = torch.zeros(3, 1, 1)
    mask = torch.tensor([[True], [True], [False]])  # sample 2 has nothing masked: drops out
    close(mvm(pred, target, mask), 3.0)
    close(mvm(pred, target, mask, weight=torch.tensor([1.0, 0.0, 1.0])), 1.0)


def test_temporal_consistency_known_answer():
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    close(temporal_consistency(p, t), (4.0 + 25.0) / 2)
    # normalised: 2 − 2cos; rows [1,2]·[1,0] → cos 1/√5; second row has a zero vector → cos 0
    close(temporal_consistency(p, t, normalize=True), ((2 - 2 / math.sqrt(5)) + 1.0) / 2, rtol=1e-5)


# ----------------------------------------------------------------------------- distillation, decollapse


def test_distillation_kl_known_answers_both_directions():
    shape = (1, 1, 1)
    s_mean, s_log = torch.zeros(shape), torch.zeros(shape)
    t_mean, t_log = torch.ones(shape), torch.full(shape, math.log(2.0))
    # KL(N(0,1) ‖ N(1,4)) = log 2 + (1 + 1)/8 − 1/2
    close(distillation_kl(s_mean, s_log, t_mean, t_log, direction="student_teacher"), math.log(2) + 0.25 - 0.5)
    # KL(N(1,4) ‖ N(0,1)) = −log 2 + (4 + 1)/2 − 1/2
    close(distillation_kl(s_mean, s_log, t_mean, t_log, direction="teacher_student"), -math.log(2) + 2.0)
    # a float teacher spread broadcasts; the KL of two independent dims adds
    two = distillation_kl(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, 2), math.log(2.0), direction="student_teacher")
    close(two, 2 * (math.log(2) - 0.25))


def test_distillation_kl_valid_mask_and_detached_teacher():
    s_mean = torch.zeros(1, 2, 1, requires_grad=True)
    t_mean = torch.tensor([[[0.0], [10.0]]], requires_grad=True)
    valid = torch.tensor([[True, False]])  # the second step (a large gap) is past the episode end
    loss = distillation_kl(s_mean, torch.zeros(1, 2, 1), t_mean, 0.0, valid=valid)
    close(loss, 0.0)
    loss = distillation_kl(s_mean, torch.zeros(1, 2, 1), t_mean, 0.0)
    loss.backward()
    assert t_mean.grad is None and s_mean.grad is not None


def test_decollapse_known_answers():
    # col 0 = [1, −1, 0]: unbiased var 1 → std √(1+1e-4) > 1, no penalty; col 1 = 0: std √1e-4 = 0.01
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    close(decollapse(z), (1 - 0.01) / 2, rtol=1e-5)
    # perfectly correlated: var 2 each (no variance penalty), cov 2 → Σ_off C² / D = 2·4/2
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    close(decollapse(z), 4.0, rtol=1e-5)
    # a masked third row changes nothing
    z3 = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [9.0, -3.0]])
    close(decollapse(z3, weight=torch.tensor([1.0, 1.0, 0.0])), 4.0, rtol=1e-5)
    # one effective sample: nothing to measure
    close(decollapse(z3, weight=torch.tensor([0.0, 1.0, 0.0])), 0.0)


def test_weighted_mean():
    close(weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])), 1.5)
    close(weighted_mean(torch.tensor([1.0, 3.0])), 2.0)
