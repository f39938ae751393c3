"""Attention with a selectable backend, and the pre-LN transformer blocks built on it (ARCHITECTURE §6).

Backends (config field `attention`):

- `flash`: the flash-attn kernels; only when the package is installed and q/k/v are CUDA fp16/bf16
  (anything else is a clear `BadInput`, never a silent fallback);
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` (PyTorch picks its fused kernel);
- `math`: the explicit softmax(QKᵀ/√d)·V, the reference the others are tested against;
- `auto`: flash when it applies to the call, else sdpa.

Masks follow one convention everywhere in `stages.model`: a boolean `key_mask [B, Lk]` is True for a
real key and False for padding. Every query must see at least one real key (the encoders guarantee
it: a BOS token for text, the proprio token for actions).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.errors import BadInput

BACKENDS = ("auto", "flash", "sdpa", "math")


@functools.cache
def flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_problem(q: Tensor, key_mask: Tensor | None, causal: bool) -> str | None:
    """Why flash-attn cannot run this call, or None when it can."""
    if not flash_installed():
        return "flash-attn is not installed"
    if not q.is_cuda:
        return f"tensors are on {q.device.type}, flash-attn needs CUDA"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"tensors are {q.dtype}, flash-attn needs float16 or bfloat16 (use bf16 autocast)"
    if causal and key_mask is not None:
        return "causal attention with a key padding mask is not supported by the flash path"
    return None


def resolve_backend(backend: str, q: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> str:
    """The backend that will actually run: `flash`, `sdpa` or `math`."""
    if backend in ("sdpa", "math"):
        return backend
    problem = _flash_problem(q, key_mask, causal)
    if backend == "flash":
        if problem:
            raise BadInput("attention backend `flash` cannot run", caused_by=problem,
                           hint="set attention to `auto` or `sdpa`, or install the `gpu` extra on a CUDA host")
        return "flash"
    if backend == "auto":
        return "sdpa" if problem else "flash"
    raise BadInput(f"unknown attention backend `{backend}`", caused_by=f"known: {', '.join(BACKENDS)}")


def attention(q: Tensor, k: Tensor, v: Tensor, *, key_mask: Tensor | None = None, causal: bool = False,
              backend: str = "auto") -> Tensor:
    """Scaled dot-product attention. q [B, h, Lq, d], k/v [B, h, Lk, d], key_mask [B, Lk] -> [B, h, Lq, d]."""
    chosen = resolve_backend(backend, q, key_mask, causal)
    if chosen == "math":
        return _math(q, k, v, key_mask, causal)
    if chosen == "flash":
        return _flash(q, k, v, key_mask, causal)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, Lk], True = attend
    if causal and mask is not None:
        mask = mask & _causal_mask(q.shape[-2], k.shape[-2], q.device)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def _causal_mask(lq: int, lk: int, device: torch.device) -> Tensor:
    # [Lq, Lk]; query i sees keys j <= i (top-left aligned, as SDPA's is_causal)
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril()


def _math(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # [B, h, Lq, Lk]
    allowed = None
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]
    if causal:
        tri = _causal_mask(q.shape[-2], k.shape[-2], q.device)
        allowed = tri if allowed is None else allowed & tri
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    # softmax in float32 so that fp16/bf16 inputs keep the reference accurate
    weights = scores.float().softmax(dim=-1).to(v.dtype)
    return weights @ v


def _flash(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool) -> Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func  # type: ignore[import-not-found]

    b, h, lq, d = q.shape
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # flash layout [B, L, h, d]
    if key_mask is None:
        return flash_attn_func(qt.contiguous(), kt.contiguous(), vt.contiguous(), causal=causal).transpose(1, 2)
    # Padded keys: pack the real keys of each sample (varlen API); every query is kept.
    lk = k.shape[-2]
    lengths = key_mask.sum(dim=1, dtype=torch.int32)  # [B]
    cu_k = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    keep = key_mask.reshape(-1)
    k_packed = kt.reshape(b * lk, h, d)[keep]
    v_packed = vt.reshape(b * lk, h, d)[keep]
    out = flash_attn_varlen_func(qt.reshape(b * lq, h, d).contiguous(), k_packed, v_packed, cu_q, cu_k,
                                 lq, int(lengths.max()), causal=False)
    return out.reshape(b, lq, h, d).transpose(1, 2)


# ----------------------------------------------------------------------------- modules


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, dim = x.shape
    return x.view(b, n, heads, dim // heads).transpose(1, 2)  # [B, h, N, d]


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)  # [B, N, D]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, backend: str = "auto"):
        super().__init__()
        self.heads = heads
        self.backend = backend
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(_merge_heads(attention(q, k, v, key_mask=key_mask, backend=self.backend)))


class CrossAttention(nn.Module):
    """Queries from `x`, keys/values from `context` (ch05 §5.5: Attn(Q=Z_L, K=Z_V, V=Z_V))."""

    def __init__(self, width: int, heads: int, backend: str = "auto"):
        super().__init__()
        self.heads = heads
        self.backend = backend
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.out(_merge_heads(attention(q, k, v, key_mask=context_mask, backend=self.backend)))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, out or width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN x), then x + MLP(LN x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, backend)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-LN cross-attention block: queries attend to a context, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, backend: str = "auto"):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = CrossAttention(width, heads, backend)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context), context_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, backend) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """ViT/CLIP-style init: truncated normal (std 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of x [B, N, D] counting only mask [B, N] == True -> [B, D]."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
