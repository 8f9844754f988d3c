"""The tokenizer of a GGUF export, in the form llama.cpp reads (``tokenizer.ggml.*``).

llama.cpp's own converter recognises a BPE's pre-tokenizer only by the hash of a known model's
tokenization, so it refuses any freshly trained one. This module names the pre-tokenizer from what
the tokenizer is instead:

- A byte-level BPE (OminiX's :func:`ominix.data.tokenizer.train_bpe`: ``ByteLevel`` with
  ``add_prefix_space=False`` and its default GPT-2 regex, no normalizer) is ``tokenizer.ggml.model
  = "gpt2"`` with ``tokenizer.ggml.pre = "gpt-2"``: llama.cpp splits that pre-type with the same
  GPT-2 regex (``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``)
  and then maps bytes as ByteLevel does, so both sides see the same words before the merges.
- A SentencePiece-style BPE (LLaMA-2's ``tokenizer.json``: ``byte_fallback`` with ``<0xNN>`` byte
  pieces and ``▁`` for spaces) is ``"llama"``, with scores: llama.cpp's SentencePiece tokenizer
  merges the adjacent pair whose joined piece scores highest, so a piece scores minus the rank of
  the merge that makes it, and the merge order is the tokenizer's.

Any other pre-tokenizer is refused: a GGUF that llama.cpp would split differently would load and
produce wrong text silently.
"""

from __future__ import annotations

import json
from typing import Any

from ominix.data.tokenizer import WITH_BOS, framing_of
from ominix.errors import OminixError

GPT2_PRE = "gpt-2"  # llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2
UNMERGED_SCORE = 0.0  # pieces no merge makes (characters, bytes, specials) never win a merge
PAD_SCORE = -1000.0  # what llama.cpp's converter gives the rows past the tokenizer's vocabulary


def tokenizer_json(tokenizer) -> dict[str, Any]:
    """The ``tokenizers`` definition behind a transformers fast tokenizer."""
    return json.loads(tokenizer.backend_tokenizer.to_str())


def tokenizer_model(spec: dict[str, Any]) -> str:
    """``"gpt2"`` (byte-level BPE) or ``"llama"`` (SentencePiece-style BPE); OminixError otherwise."""
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise OminixError(f"the tokenizer is a {model.get('type')} model; the GGUF export writes BPE "
                          "tokenizers only", "export with --format hf and convert with llama.cpp")
    if model.get("byte_fallback"):
        return "llama"
    pre = spec.get("pre_tokenizer") or {}
    if (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space")
            and pre.get("use_regex", True) and spec.get("normalizer") is None):
        return "gpt2"
    raise OminixError(f"the tokenizer's pre-tokenizer {json.dumps(pre)} is not the byte-level GPT-2 "
                      "split that llama.cpp's gpt-2 pre-type reproduces",
                      "export with --format hf; llama.cpp's converter must know this pre-tokenizer")


def _merges(spec: dict[str, Any]) -> list[str]:
    """The merges as ``"a b"`` strings (tokenizers writes ``[a, b]`` pairs or such strings)."""
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the SentencePiece-style tokenizer puts ``▁`` before the text (LLaMA-2 does)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text


def vocab_fields(tokenizer, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` fields of ``tokenizer`` for a model of ``vocab_size`` rows: tokens
    by id (rows the tokenizer leaves empty are ``[PADn]``, unused), their types, merges or scores,
    the special ids and whether a prompt starts with BOS (as the model's training documents did)."""
    import gguf

    spec = tokenizer_json(tokenizer)
    kind = tokenizer_model(spec)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    unk = spec["model"].get("unk_token")
    merges = _merges(spec)
    rank = {m.replace(" ", ""): -float(r + 1) for r, m in reversed(list(enumerate(merges)))}
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(PAD_SCORE)
            continue
        tokens.append(token)
        scores.append(rank.get(token, UNMERGED_SCORE) if token not in added else UNMERGED_SCORE)
        if kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types.append(gguf.TokenType.BYTE)  # what SentencePiece falls back to, added or not
        elif token == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    fields: dict[str, Any] = {"model": kind, "tokens": tokens, "token_type": [int(t) for t in types]}
    if kind == "gpt2":
        fields |= {"pre": GPT2_PRE, "merges": merges}
    else:
        fields |= {"pre": "default", "scores": scores, "add_space_prefix": _adds_space_prefix(spec)}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "padding_token_id": tokenizer.pad_token_id, "unknown_token_id": tokenizer.unk_token_id}
    fields |= {k: v for k, v in ids.items() if v is not None}
    fields |= {"add_bos_token": framing_of(tokenizer) == WITH_BOS, "add_eos_token": False}
    return fields


def write_vocab(writer, fields: dict[str, Any]) -> None:
    """Add :func:`vocab_fields` to a ``gguf.GGUFWriter`` under llama.cpp's key names."""
    writer.add_tokenizer_model(fields["model"])
    writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["token_type"])
    if "merges" in fields:
        writer.add_token_merges(fields["merges"])
    if "scores" in fields:
        writer.add_token_scores(fields["scores"])
        writer.add_add_space_prefix(fields["add_space_prefix"])
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        if key in fields:
            writer.add_uint32(f"tokenizer.ggml.{key}", fields[key])
    writer.add_add_bos_token(fields["add_bos_token"])
    writer.add_add_eos_token(fields["add_eos_token"])
