"""`ominix checkpoint export --format gguf`: real checkpoints, real tokenizers, read back with gguf."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.test_export import make_run
from tests.test_framing import llama_style_tokenizer


# the split llama.cpp runs for the gpt-2 pre-type (unicode.cpp's unicode_regex_split_custom_gpt2),
# written out here on purpose: the test checks the export's choice against llama.cpp, not itself
LLAMA_CPP_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "  two  spaces, it's 42 times\nnew line!",
         "a\tb \t\n\n  end  "]


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows back to HF's half-split ones."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key: str):
    return reader.fields[key].contents()


def _export(run: Path, out: Path, *flags: str) -> dict:
    result = run_cli("checkpoint", "export", str(run), "--out", str(out), "--format", "gguf", "--json", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _hf_names(cfg: dict) -> dict[str, str]:
    """GGUF name -> HF name, spelled as llama.cpp's converter documents them."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    parts = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for n in range(cfg["num_hidden_layers"]):
        names |= {f"blk.{n}.{g}.weight": f"model.layers.{n}.{h}.weight" for g, h in parts.items()}
    return names


def test_gguf_holds_the_hf_exports_tensors_metadata_and_trained_bpe(tmp_path: Path) -> None:
    """The GGUF of a run with OminiX's own byte-level BPE: every tensor equals the HF export's (Q/K
    un-permuted), the llama.* shape equals config.json, and the tokenizer is the gpt2 model with the
    gpt-2 pre-type, whose split (llama.cpp's regex) and merges give the trained tokenizer's ids."""
    from safetensors.numpy import load_file
    from tokenizers import models
    from transformers import AutoTokenizer

    import regex

    run = make_run(tmp_path)
    hf = tmp_path / "hf"
    assert run_cli("checkpoint", "export", str(run), "--out", str(hf), "--dtype", "fp32",
                   "--no-verify").returncode == 0
    meta = _export(run, tmp_path / "gguf", "--dtype", "fp32")
    path = tmp_path / "gguf" / "model.gguf"
    assert meta["files"]["model.gguf"] and meta["tokenizer"] == {"model": "gpt2", "pre": "gpt-2", "add_bos_token": False}
    reader = gguf.GGUFReader(path)
    cfg = json.loads((hf / "config.json").read_text())

    expect = {"general.architecture": "llama", "llama.block_count": cfg["num_hidden_layers"],
              "llama.context_length": cfg["max_position_embeddings"], "llama.embedding_length": cfg["hidden_size"],
              "llama.feed_forward_length": cfg["intermediate_size"],
              "llama.attention.head_count": cfg["num_attention_heads"],
              "llama.attention.head_count_kv": cfg["num_key_value_heads"],
              "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
              "llama.vocab_size": cfg["vocab_size"], "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
              "general.file_type": int(gguf.LlamaFileType.ALL_F32)}
    assert {k: _field(reader, k) for k in expect} == expect
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])

    hf_tensors = load_file(hf / "model.safetensors")
    names = _hf_names(cfg)
    assert {t.name for t in reader.tensors} == set(names) and set(names.values()) == set(hf_tensors)
    for t in reader.tensors:
        data = np.asarray(t.data).reshape(tuple(reversed([int(d) for d in t.shape])))
        if t.name.endswith("attn_q.weight"):
            data = _unpermute(data, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            data = _unpermute(data, cfg["num_key_value_heads"])
        np.testing.assert_array_equal(data, hf_tensors[names[t.name]], err_msg=t.name)

    tok = AutoTokenizer.from_pretrained(hf)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    assert tokens[:len(tok)] == [by_id[i] for i in range(len(tok))]
    assert tokens[len(tok):] == [f"[PAD{i}]" for i in range(len(tok), cfg["vocab_size"])]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    merges = json.loads((hf / "tokenizer.json").read_text())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False

    # what llama.cpp does with these fields: split by the gpt-2 regex, map bytes, apply the merges
    byte_map = gguf.vocab.bytes_to_unicode()  # the byte -> character table of GPT-2 and llama.cpp
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")])
    for text in TEXTS:
        ids = [tok_.id for word in regex.findall(LLAMA_CPP_GPT2_SPLIT, text)
               for tok_ in bpe.tokenize("".join(byte_map[b] for b in word.encode()))]
        assert ids == tok(text).input_ids, text


@pytest.mark.parametrize("dtype,ggml", [("fp16", "F16"), ("bf16", "BF16")])
def test_half_precision_gguf_casts_matrices_and_keeps_norms_f32(dtype: str, ggml: str, tmp_path: Path) -> None:
    """A 16-bit GGUF: matrices in that type with the checkpoint's values cast, 1-D norms in F32
    (as llama.cpp's converter keeps them), and a LLaMA-style tokenizer that prepends <s>."""
    from ominix.checkpoint import read_weights

    from ominix.data.tokenizer import WITH_BOS

    llama_style_tokenizer(tmp_path / "data" / "tokenizer")
    run = make_run(tmp_path)
    state = run / "checkpoints" / "step_00000010" / "state.json"  # trained on `<s> doc` documents
    state.write_text(json.dumps({**json.loads(state.read_text()), "framing": WITH_BOS}))
    meta = _export(run, tmp_path / "gguf", "--dtype", dtype)
    assert meta["tokenizer"]["add_bos_token"] is True
    reader = gguf.GGUFReader(tmp_path / "gguf" / "model.gguf")
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 0  # <s>, the tokenizer's first special
    source = read_weights(run / "checkpoints" / "step_00000010")
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["output_norm.weight"].tensor_type.name == "F32"
    embd = tensors["token_embd.weight"]
    assert embd.tensor_type.name == ggml
    # gguf reads BF16 back as raw bytes (numpy has no bfloat16)
    raw = np.array(embd.data).reshape(-1).view(np.int16 if dtype == "bf16" else np.float16)
    raw = raw.reshape(tuple(reversed([int(d) for d in embd.shape])))
    back = torch.from_numpy(raw).view(torch.bfloat16) if dtype == "bf16" else torch.from_numpy(raw)
    assert torch.equal(back, source["model.embed_tokens.weight"].to(back.dtype))


def _whitespace_bpe(out: Path) -> Path:
    """A BPE split on whitespace and punctuation: no llama.cpp pre-type splits text this way."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.test_export import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(out)
    return out


def test_gguf_refusals_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    """An unknown format, a missing gguf package, a tokenizer llama.cpp would split otherwise."""
    _whitespace_bpe(tmp_path / "other" / "data" / "tokenizer")
    other = make_run(tmp_path / "other")
    out = tmp_path / "out"
    split = run_cli("checkpoint", "export", str(other), "--out", str(out), "--format", "gguf")
    assert split.returncode == 2 and "is not the byte-level GPT-2 split" in split.stderr, split.stderr
    assert "Traceback" not in split.stderr and not out.exists()
    run = make_run(tmp_path)
    bad = run_cli("checkpoint", "export", str(run), "--out", str(out), "--format", "onnx")
    assert bad.returncode == 2 and "--format 'onnx' is not a format" in bad.stderr, bad.stderr
    shadow = tmp_path / "shadow" / "gguf"  # an environment without the gguf package
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named gguf')\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    missing = run_cli("checkpoint", "export", str(run), "--out", str(out), "--format", "gguf", env=env)
    assert missing.returncode == 2 and "needs the gguf package" in missing.stderr, missing.stderr
    assert "pip install" in missing.stderr and "gguf" in missing.stderr.splitlines()[-1]
    assert "Traceback" not in missing.stderr and not out.exists()


def _sentencepiece_style_tokenizer(out: Path) -> Path:
    """A BPE built as LLaMA-2's tokenizer.json is: ``▁`` for spaces and a leading one, no
    pre-tokenizer, ``<0xNN>`` byte pieces to fall back to, ``<unk> <s> </s>`` first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.test_export import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tok.train_from_iterator(CORPUS.split(". "), trainers.BpeTrainer(vocab_size=360, special_tokens=pieces))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def _llama_cpp_spm(text: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm): merge the adjacent pair whose
    joined piece scores highest (leftmost on ties) until none is a piece; unknown pieces as bytes."""
    syms = list("▁" + text.replace(" ", "▁"))
    while True:
        pairs = [(scores[vocab[a + b]], -i) for i, (a, b) in enumerate(zip(syms, syms[1:])) if a + b in vocab]
        if not pairs:
            break
        i = -max(pairs)[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    return [i for s in syms for i in ([vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()])]


def test_sentencepiece_style_bpe_is_the_llama_model_with_scores_llama_cpp_merges_by(tmp_path: Path) -> None:
    """A LLaMA-2-style tokenizer.json becomes tokenizer.ggml.model "llama": its pieces by id,
    <0xNN> typed BYTE, <unk> UNKNOWN, a leading space added, and scores under which llama.cpp's
    SentencePiece merging gives the tokenizer's own ids."""
    from transformers import AutoTokenizer

    _sentencepiece_style_tokenizer(tmp_path / "data" / "tokenizer")
    run = make_run(tmp_path)
    meta = _export(run, tmp_path / "gguf", "--dtype", "fp16")
    assert meta["tokenizer"]["model"] == "llama"
    reader = gguf.GGUFReader(tmp_path / "gguf" / "model.gguf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = tok.get_vocab()
    assert tokens[:len(tok)] == sorted(vocab, key=vocab.get)
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[vocab["<0x41>"]] == gguf.TokenType.BYTE and types[vocab["<unk>"]] == gguf.TokenType.UNKNOWN
    assert types[vocab["<s>"]] == gguf.TokenType.CONTROL and _field(reader, "tokenizer.ggml.add_space_prefix")
    assert "tokenizer.ggml.merges" not in reader.fields
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == vocab["<unk>"]
    scores = _field(reader, "tokenizer.ggml.scores")
    for text in TEXTS[:1] + ["Once upon a time the fox read again."]:
        assert _llama_cpp_spm(text, vocab, scores) == tok(text, add_special_tokens=False).input_ids, text
