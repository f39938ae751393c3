"""Attention backends: SDPA and flash agree with the explicit math reference; flash is never a silent fallback."""

from __future__ import annotations

import pytest
import torch

from stages.errors import BadInput
from stages.model import build_model
from stages.model.attention import attention, flash_installed, resolve_backend

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def qkv(b=3, h=4, lq=7, lk=11, d=16, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(**kw) for n in (lq, lk, lk)]


def padding_mask(b=3, lk=11):
    lengths = torch.tensor([lk, 5, 1])[:b]  # full, partial, a single real key
    return torch.arange(lk)[None, :] < lengths[:, None]  # [B, Lk], True = real key


# fp32 on CPU: SDPA's fused kernel and the explicit product sum in a different order; the difference
# is a few ulp of values of size ~1 (observed ≤ 1e-6), so 1e-5 absolute leaves margin without hiding bugs.
ATOL_FP32 = 1e-5


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_matches_math_with_padding(with_mask):
    q, k, v = qkv()
    mask = padding_mask() if with_mask else None
    ref = attention(q, k, v, key_mask=mask, backend="math")
    out = attention(q, k, v, key_mask=mask, backend="sdpa")
    assert torch.allclose(out, ref, atol=ATOL_FP32, rtol=0)


def test_math_reference_known_answer_and_padding_is_ignored():
    q, k, v = qkv(b=1, lq=2, lk=3)
    mask = torch.tensor([[True, True, False]])
    out = attention(q, k, v, key_mask=mask, backend="math")
    w = torch.softmax(q[0] @ k[0, :, :2].transpose(-1, -2) / 4.0, dim=-1)  # d = 16 -> √d = 4
    assert torch.allclose(out[0], w @ v[0, :, :2], atol=1e-6)
    # changing a padded key/value never changes the output
    k2, v2 = k.clone(), v.clone()
    k2[..., 2, :] = 1e3
    v2[..., 2, :] = -1e3
    assert torch.equal(attention(q, k2, v2, key_mask=mask, backend="math"), out)
    # one real key: the output is exactly its value
    single = attention(q, k, v, key_mask=torch.tensor([[False, True, False]]), backend="sdpa")
    assert torch.allclose(single[0], v[0, :, 1:2].expand(-1, 2, -1), atol=1e-6)


def test_sdpa_matches_math_causal():
    q, k, v = qkv(lq=9, lk=9)
    ref = attention(q, k, v, causal=True, backend="math")
    assert torch.allclose(attention(q, k, v, causal=True, backend="sdpa"), ref, atol=ATOL_FP32, rtol=0)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    ref = attention(q, k, v, key_mask=mask, causal=True, backend="math")
    assert torch.allclose(attention(q, k, v, key_mask=mask, causal=True, backend="sdpa"), ref, atol=ATOL_FP32, rtol=0)


def test_flash_is_refused_clearly_where_it_cannot_run_and_auto_falls_back():
    q, _, _ = qkv()
    with pytest.raises(BadInput) as exc:
        resolve_backend("flash", q)  # CPU fp32: never flash
    assert "flash" in exc.value.message and exc.value.caused_by
    assert resolve_backend("auto", q) == "sdpa"
    with pytest.raises(BadInput, match="unknown attention backend"):
        resolve_backend("fast", q)


def test_whole_model_agrees_across_backends():
    torch.manual_seed(0)
    model = build_model("tiny", attention="math").eval()
    frames = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    texts = ["push the puck", "把抽屉关上"]  # different lengths: exercises the padding mask
    with torch.no_grad():
        ref = model.fuse(model.encode_vision(frames), model.encode_language(texts))
        model.set_attention_backend("sdpa")
        out = model.fuse(model.encode_vision(frames), model.encode_language(texts))
    assert model.config.attention == "sdpa"
    # eight attention layers deep, fp32 reorderings add up (observed 7e-7 on outputs of size ~2.5)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_matches_math_on_cuda_half(dtype):
    q, k, v = qkv(lq=64, lk=96, d=64, device="cuda", dtype=dtype)
    mask = torch.ones(3, 96, dtype=torch.bool, device="cuda")
    mask[1, 40:] = False
    ref = attention(q.float(), k.float(), v.float(), key_mask=mask, backend="math")
    out = attention(q, k, v, key_mask=mask, backend="sdpa").float()
    # half precision: 8 (fp16: 11) mantissa bits; the error of a softmax-weighted mean of O(1) values
    # stays under a few units of 2^-8
    assert torch.allclose(out, ref, atol=2e-2 if dtype == torch.bfloat16 else 5e-3, rtol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not flash_installed(), reason="flash-attn is not installed")
@pytest.mark.parametrize("with_mask", [False, True])
def test_flash_matches_math_on_cuda(with_mask):
    q, k, v = qkv(lq=64, lk=96, d=64, device="cuda", dtype=torch.bfloat16)
    mask = None
    if with_mask:
        mask = torch.ones(3, 96, dtype=torch.bool, device="cuda")
        mask[1, 40:] = False
        mask[2, 1:] = False
    assert resolve_backend("auto", q, mask) == "flash"
    ref = attention(q.float(), k.float(), v.float(), key_mask=mask, backend="math")
    out = attention(q, k, v, key_mask=mask, backend="flash").float()
    assert torch.allclose(out, ref, atol=2e-2, rtol=0)  # bf16 rounding, as above


@pytest.mark.gpu
@needs_cuda
def test_tiny_model_runs_on_cuda_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("tiny").cuda()
    frames = torch.randint(0, 256, (4, 2, 3, 64, 64), dtype=torch.uint8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = model.encode_vision(frames)
        fused = model.fuse(v, model.encode_language(["a", "bb", "ccc", "不超速"]))
        mean, log_std = model.policy(fused, torch.zeros(4, 8, device="cuda"))
    (mean.float().mean() + log_std.float().mean() + model.mvm(frames).pred.float().mean()).backward()
    assert torch.isfinite(mean).all() and mean.shape == (4, 16, 4)
