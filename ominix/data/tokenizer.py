"""Tokenizers for data preparation: load a Hugging Face one, or train a byte-level BPE on the source.

Either way the result is saved as a Hugging Face tokenizer directory (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) inside the prepared data, with its EOS (and
BOS) token named in the config, so training, export and ``AutoTokenizer.from_pretrained`` all use
exactly that tokenizer.

This module also owns the framing of a document (:data:`~ominix.data.store.WITH_BOS` or
:data:`~ominix.data.store.PLAIN`): training frames documents as the tokenizer frames text at
inference, and inference frames a prompt as the model's training data was framed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ominix import hubref
from ominix.data.store import PLAIN, WITH_BOS
from ominix.errors import OminixError

BOS, EOS = "<s>", "</s>"
EOS_GUESSES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<eos>")
PROBE = "framing probe"  # any text: what a tokenizer puts around it is what it puts around a prompt
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json")


@dataclass
class LoadedTokenizer:
    """A ``tokenizers.Tokenizer`` with the ids packing needs and where it came from."""

    tokenizer: Any
    eos: str
    bos: str | None
    origin: str  # "trained", the path it was loaded from, or ORG/NAME@COMMIT of a Hub id
    source_dir: Path | None = None

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(self.eos)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos is None else self.tokenizer.token_to_id(self.bos)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def train_bpe(texts: Iterable[str], vocab_size: int) -> LoadedTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization, no unknown tokens) with ``vocab_size`` ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return LoadedTokenizer(tok, EOS, BOS, "trained")


def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _special(directory: Path, name: str) -> str | None:
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / file
        if path.is_file():
            value = _token(json.loads(path.read_text()).get(name))
            if value:
                return value
    return None


def load(path: str | Path) -> LoadedTokenizer:
    """Load a tokenizer directory (with tokenizer.json, or a slow one transformers converts), a
    tokenizer.json, or the tokenizer of a Hugging Face Hub id (``gpt2``, ``ORG/NAME[@REVISION]``)."""
    from tokenizers import Tokenizer

    name, path = path, hubref.tokenizer_path(path).expanduser()
    directory = path if path.is_dir() else path.parent
    not_one = OminixError(
        f"{path} is not a tokenizer",
        "give a Hugging Face tokenizer directory or its tokenizer.json, or use --train-tokenizer",
    )
    if not path.exists():
        raise OminixError(f"tokenizer path {path} does not exist", "check --tokenizer")
    json_file = path if path.is_file() else path / "tokenizer.json"
    try:
        if json_file.is_file():
            tok = Tokenizer.from_file(str(json_file))
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), use_fast=True).backend_tokenizer
    except Exception as exc:  # tokenizers/transformers raise many types for a non-tokenizer file
        raise not_one from exc
    vocab = tok.get_vocab(with_added_tokens=True)
    eos = _special(directory, "eos_token") or next((t for t in EOS_GUESSES if t in vocab), None)
    if eos is None or eos not in vocab:
        raise OminixError(
            f"tokenizer {path} defines no end-of-text token",
            "set eos_token in its tokenizer_config.json",
        )
    bos = _special(directory, "bos_token")
    return LoadedTokenizer(tok, eos, bos if bos in vocab else None, hubref.origin(name, path),
                           directory if path.is_dir() else None)


def save(tok: LoadedTokenizer, out: Path, model_max_length: int) -> Path:
    """Write ``tok`` as a Hugging Face tokenizer directory ``out``; returns its tokenizer.json."""
    out.mkdir(parents=True, exist_ok=True)
    if tok.source_dir is not None:
        for name in CONFIG_FILES:
            if (tok.source_dir / name).is_file():
                shutil.copy2(tok.source_dir / name, out / name)
    tok.tokenizer.save(str(out / "tokenizer.json"))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("model_max_length", model_max_length)
    config.setdefault("clean_up_tokenization_spaces", False)
    config["eos_token"] = config.get("eos_token") or tok.eos
    if tok.bos:
        config["bos_token"] = config.get("bos_token") or tok.bos
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    specials_path = out / "special_tokens_map.json"
    specials = json.loads(specials_path.read_text()) if specials_path.is_file() else {}
    specials.setdefault("eos_token", tok.eos)
    if tok.bos:
        specials.setdefault("bos_token", tok.bos)
    specials_path.write_text(json.dumps(specials, indent=2) + "\n")
    return out / "tokenizer.json"


def framing_of(hf_tokenizer: Any) -> str:
    """How a transformers tokenizer frames text when called as ``tokenizer(text)``: WITH_BOS when it
    prepends its BOS id (LLaMA-2 and LLaMA-3 style), else PLAIN."""
    bos = hf_tokenizer.bos_token_id
    framed = hf_tokenizer(PROBE).input_ids
    bare = hf_tokenizer(PROBE, add_special_tokens=False).input_ids
    return WITH_BOS if bos is not None and framed[:1] == [bos] and bare[:1] != [bos] else PLAIN


def framing_of_dir(directory: Path) -> str:
    """:func:`framing_of` the tokenizer directory ``directory`` (as :func:`save` writes it)."""
    from transformers import AutoTokenizer

    return framing_of(AutoTokenizer.from_pretrained(str(directory)))


def set_framing(hf_tokenizer: Any, framing: str) -> None:
    """Make a transformers tokenizer frame text as ``framing`` says, so a prompt starts as the
    model's training documents did (a model trained on ``doc EOS`` never saw a leading BOS)."""
    from tokenizers import processors

    if framing_of(hf_tokenizer) == framing:
        return
    bos = hf_tokenizer.bos_token
    if framing == WITH_BOS and bos is None:
        raise OminixError("the model was trained on documents that start with BOS, but its tokenizer "
                          "defines no bos_token", "set bos_token in the tokenizer's tokenizer_config.json")
    head = f"{bos} " if framing == WITH_BOS else ""
    specials = [(bos, hf_tokenizer.bos_token_id)] if framing == WITH_BOS else []
    hf_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{head}$A", pair=f"{head}$A {head}$B:1", special_tokens=specials)
    if hasattr(hf_tokenizer, "add_bos_token"):  # LlamaTokenizerFast rebuilds its post-processor from it
        hf_tokenizer.add_bos_token = framing == WITH_BOS
