"""The OminiX decoder is transformers' LlamaForCausalLM: same names, same logits, same cache semantics."""

from __future__ import annotations

import pytest
import torch

from ominix.config import ModelConfig
from ominix.model import KVCache, LlamaForCausalLM, build_model, hf_config

SHAPES = {
    "gqa": ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attn="sdpa"),
    "mha-tied": ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=True,
                            rope_theta=500000.0, attn="sdpa"),
}


def _pair(cfg: ModelConfig):
    from transformers import LlamaForCausalLM as HFLlama

    ours = build_model(cfg, seed=0).eval()
    theirs = HFLlama(hf_config(cfg, attn_implementation="eager")).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected
    assert all("rotary" in k for k in missing)
    return ours, theirs


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parameter_names_match_transformers(shape: str) -> None:
    from transformers import LlamaForCausalLM as HFLlama

    cfg = SHAPES[shape]
    ours = set(build_model(cfg).state_dict())
    theirs = set(HFLlama(hf_config(cfg)).state_dict())
    assert ours == theirs


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_transformers(shape: str) -> None:
    cfg = SHAPES[shape]
    ours, theirs = _pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(ids).logits
        b = theirs(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_loss_is_shifted_cross_entropy_like_transformers() -> None:
    cfg = SHAPES["gqa"]
    ours, theirs = _pair(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours_loss = ours(ids[:, :-1], labels=ids[:, 1:]).loss
        hf_loss = theirs(ids, labels=ids).loss  # transformers shifts inside
    torch.testing.assert_close(ours_loss, hf_loss, rtol=1e-5, atol=1e-6)


def test_kv_cache_decoding_equals_full_forward() -> None:
    cfg = SHAPES["gqa"]
    model = build_model(cfg, seed=3).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(cfg, batch=1, max_len=16, device="cpu", dtype=torch.float32)
        prefill = model(ids[:, :6], cache=cache).logits
        chunk = model(ids[:, 6:8], cache=cache).logits  # several new tokens over a filled cache
        steps = [model(ids[:, i : i + 1], cache=cache).logits for i in (8, 9)]
    torch.testing.assert_close(torch.cat([prefill, chunk, *steps], dim=1), full, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = SHAPES["gqa"]
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    grads = []
    for ckpt in (False, True):
        model = build_model(cfg.model_copy(update={"gradient_checkpointing": ckpt}), seed=6).train()
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_meta_build_initialises_every_parameter() -> None:
    model = build_model(SHAPES["gqa"], seed=7)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.device.type == "cpu"
    assert isinstance(model, LlamaForCausalLM)
    assert torch.all(model.model.norm.weight == 1)


@pytest.mark.parametrize("chunk", [5, 7, 64])
def test_chunked_loss_equals_plain_cross_entropy(chunk: int) -> None:
    cfg = SHAPES["gqa"]
    ids = torch.randint(0, cfg.vocab_size, (2, 13), generator=torch.Generator().manual_seed(8))
    labels = ids[:, 1:].clone()
    labels[0, :3] = -100  # ignored positions (e.g. padding) count in neither
    results = []
    for loss_chunk in (0, chunk):
        model = build_model(cfg.model_copy(update={"loss_chunk": loss_chunk}), seed=9).train()
        loss = model(ids[:, :-1], labels=labels).loss
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone(), model.model.embed_tokens.weight.grad.clone()))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
