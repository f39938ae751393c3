"""Language: instructions (English or Chinese) -> tokens, pooled vector and z (ch07 §7.4).

Two encoders, chosen by `language.encoder` through the `LANGUAGE_ENCODERS` registry:

- `bytes`: a small transformer over UTF-8 bytes, trained from scratch. Bytes need no vocabulary
  file and cover Chinese as well as English (a CJK character is 3 bytes).
- `minilm`: the frozen all-MiniLM-L6-v2 backbone (loaded offline, sha256-checked) with LoRA on its
  attention and a trained adapter to the model width (`stages.model.pretrained`).

Each backbone exposes `tokenize(texts) -> (ids [B, L], mask [B, L])`, `forward(ids, mask) -> [B, L, D]`
and `describe_tokenizer() -> dict` (stored in the config so a rebuild must find the same tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from stages.errors import BadInput
from stages.model.attention import Transformer, init_weights, masked_mean
from stages.model.config import ModelConfig
from stages.model.outputs import LanguageOut
from stages.registry import Registry

LANGUAGE_ENCODERS: Registry[Callable[[ModelConfig], nn.Module]] = Registry("language encoder")

PAD, BOS, EOS, BYTE_OFFSET = 0, 1, 2, 3
BYTE_VOCAB = 256 + BYTE_OFFSET


class ByteTokenizer:
    """UTF-8 bytes -> ids: 0 = PAD, 1 = BOS, 2 = EOS, byte b -> b + 3. Pads to the longest text."""

    def __init__(self, max_len: int):
        if max_len < 2:
            raise BadInput("`language.max_len` must be at least 2 (BOS and EOS)")
        self.max_len = max_len

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        rows = []
        for text in texts:
            if not isinstance(text, str):
                raise BadInput(f"instruction {text!r} is not a string")
            body = list(text.encode("utf-8")[: self.max_len - 2])
            rows.append([BOS] + [b + BYTE_OFFSET for b in body] + [EOS])
        length = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, row in enumerate(rows):  # one row per instruction: B strings, not a hot loop over frames
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD

    def describe(self) -> dict:
        return {"kind": "utf8-bytes", "vocab_size": BYTE_VOCAB, "pad": PAD, "bos": BOS, "eos": EOS,
                "byte_offset": BYTE_OFFSET, "max_len": self.max_len}


class ByteEncoder(nn.Module):
    """Byte embedding + learned positions + pre-LN transformer, trained from scratch."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        lang = config.language
        self.tokenizer = ByteTokenizer(lang.max_len)
        self.embed = nn.Embedding(BYTE_VOCAB, config.width)
        self.pos = nn.Parameter(torch.zeros(lang.max_len, config.width))
        self.encoder = Transformer(config.width, lang.depth, config.num_heads, config.mlp_ratio, config.attention)
        init_weights(self)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.tokenizer(texts)

    def describe_tokenizer(self) -> dict:
        return self.tokenizer.describe()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # [B, L, D]
        return self.encoder(x, mask)


@LANGUAGE_ENCODERS.register("bytes")
def _bytes(config: ModelConfig) -> nn.Module:
    return ByteEncoder(config)


@LANGUAGE_ENCODERS.register("minilm")
def _minilm(config: ModelConfig) -> nn.Module:
    from stages.model.pretrained import MiniLMEncoder  # needs the `text` extra only when chosen

    return MiniLMEncoder(config)


class LanguageEncoder(nn.Module):
    """The chosen backbone plus the projection to Z; the whole module lives under `language.`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.backbone = LANGUAGE_ENCODERS.get(config.language.encoder, where="model config `language.encoder`")(config)
        self.proj = nn.Linear(config.width, config.z_dim, bias=False)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise BadInput("instructions must be a list of strings, got one string")
        if len(texts) == 0:
            raise BadInput("instructions: empty list")
        ids, mask = self.backbone.tokenize(list(texts))
        device = device or self.proj.weight.device
        return ids.to(device), mask.to(device)

    def forward(self, texts: Sequence[str]) -> LanguageOut:
        ids, mask = self.tokenize(texts)
        tokens = self.backbone(ids, mask)  # [B, L, D]
        pooled = masked_mean(tokens, mask)
        return LanguageOut(tokens=tokens, mask=mask, pooled=pooled, z=self.proj(pooled))
