"""``ominix infer``: load a model once, then generate for one prompt (streamed) or a prompts file.

A prompts file is JSON Lines with a ``prompt`` field per line (other fields, such as ``id``, are
carried over). The output file has one record per prompt: the prompt, the completion, the sampling
settings and the model checksum, so it can be published as the MOF "sample model outputs".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ominix import atomic
from ominix.checkpoint import model_checksum
from ominix.config import InferConfig, format_validation
from ominix.device import pick_device, pick_dtype
from ominix.errors import OminixError
from ominix.infer import kernels as triton_kernels
from ominix.infer.generate import Generation, Sampling, StaticDecoder, generate
from ominix.infer.load import ModelSource, load_model, load_tokenizer, resolve, torch_dtype


CACHE_MIN = 64  # the shortest KV cache a decoder is built with


def cache_length(needed: int, limit: int) -> int:
    """The KV cache length of a decoder that must hold ``needed`` positions: the next power of two
    (at least ``CACHE_MIN``), never past the model's context ``limit``."""
    return min(max(CACHE_MIN, 1 << (needed - 1).bit_length()), limit)


@dataclass
class Session:
    source: ModelSource
    tokenizer: Any
    model: Any
    device: str
    dtype: str
    checksum: str
    compile: bool
    kernels: bool
    _decoder: tuple[tuple, StaticDecoder] | None = field(default=None, repr=False)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, verbose=False).input_ids  # the length is checked here, not warned about
        limit = self.source.model.max_position_embeddings
        if len(ids) >= limit:
            raise OminixError(f"the prompt is {len(ids)} tokens, the model's context is {limit}",
                              "shorten the prompt (it must leave room for at least one new token)")
        if not ids:
            raise OminixError("the prompt is empty and the tokenizer adds no BOS token", "give a prompt")
        return ids

    def decoder(self, longest: int, sampling: Sampling, inductor: dict | None = None,
                prefill_graphs: bool = False) -> StaticDecoder:
        """A decoder with room for ``longest`` prompt tokens; ``inductor``: compiler options
        (default ``generate.INDUCTOR``); ``prefill_graphs``: prompts run as CUDA graphs (on a GPU),
        the one that takes ``longest`` tokens captured now.

        The cache length is rounded up to a power of two (``cache_length``) and the last decoder is
        kept: a call whose prompt fits it reuses its compiled step and CUDA graphs, and a process
        compiles the step at most once per power of two, under the compiler's limit of 8 versions
        of one function (past it, a ``fullgraph`` compile fails)."""
        max_len = cache_length(longest + sampling.max_new_tokens, self.source.model.max_position_embeddings)
        key = (max_len, prefill_graphs, json.dumps(inductor, sort_keys=True))
        if self._decoder is None or self._decoder[0] != key:
            self._decoder = None  # the previous cache and graphs go before the next are allocated
            on_gpu = self.device.startswith("cuda")
            self._decoder = (key, StaticDecoder(self.model, max_len, compile=self.compile and on_gpu,
                                                cuda_graph=on_gpu, inductor=inductor, kernels=self.kernels,
                                                prefill_graphs=prefill_graphs))
        decoder = self._decoder[1]
        if decoder.prefill_graphs:
            decoder.prefill_graph(longest)
        return decoder

    def record(self, prompt: dict[str, Any], ids: list[int], result: Generation,
               sampling: Sampling) -> dict[str, Any]:
        return {
            **prompt,
            "completion": self.tokenizer.decode(result.tokens, skip_special_tokens=True),
            "completion_ids": result.tokens,
            "prompt_tokens": len(ids),
            "completion_tokens": len(result.tokens),
            "finish_reason": result.finish_reason,
            "settings": {**sampling.as_dict(), "device": self.device, "dtype": self.dtype, "kernels": self.kernels},
            "model": {"path": str(self.source.path), "kind": self.source.kind,
                      "step": self.source.state.get("step"), "sha256": self.checksum},
        }


def settings(path: str | Path, flags: dict[str, Any]) -> tuple[ModelSource, Sampling, InferConfig]:
    """The model at ``path`` and its generation settings: the run's ``infer`` section (defaults for
    an export) overridden by the ``flags`` that are not None."""
    source = resolve(path)
    base = source.run_config.infer if source.run_config is not None else InferConfig()
    if flags.get("dtype") not in (None, "auto"):
        torch_dtype(flags["dtype"])  # one line for an unknown dtype
    try:
        cfg = InferConfig.model_validate({**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise format_validation(exc, name=lambda loc: "--" + loc.replace("_", "-"), where="") from exc
    sampling = Sampling(**{f.name: getattr(cfg, f.name) for f in fields(Sampling)})
    return source, sampling, cfg


def open_session(source: ModelSource, device: str = "auto", dtype: str = "auto", compile: bool = True,
                 kernels: bool | None = None) -> Session:
    """Check and load the model and tokenizer of ``source``. ``kernels``: decode with OminiX's
    Triton kernels (``ominix.infer.kernels``); None: on a CUDA device when Triton is installed and
    the model's head size is one the kernels take."""
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    if kernels is None:
        kernels = (device.startswith("cuda") and triton_kernels.available(device)
                   and triton_kernels.supports(source.model.head_dim))
    elif kernels and not triton_kernels.available(device):
        raise OminixError(f"--kernels needs Triton and a CUDA device (the device is {device})",
                          "leave --kernels out: the compiled decode step is used instead")
    tokenizer = load_tokenizer(source)
    model = load_model(source, device, dtype)
    return Session(source, tokenizer, model, device, dtype, model_checksum(source.weights), compile, kernels)


class TextStream:
    """Turns tokens into printable text as they come (holds back an incomplete UTF-8 character)."""

    def __init__(self, tokenizer: Any, write: Callable[[str], None]) -> None:
        self.tokenizer, self.write = tokenizer, write
        self.tokens: list[int] = []
        self.shown = 0

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.write(text[self.shown :])
            self.shown = len(text)


def complete(session: Session, prompt: str, sampling: Sampling, write: Callable[[str], None]) -> dict[str, Any]:
    """Generate for one prompt, streaming the prompt and then the completion to ``write``;
    returns the output record."""
    ids = session.encode(prompt)
    write(prompt)
    result = generate(session.decoder(len(ids), sampling), ids, sampling,
                      session.tokenizer.eos_token_id, TextStream(session.tokenizer, write))
    return session.record({"prompt": prompt}, ids, result, sampling)


def read_prompts(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise OminixError(f"prompts file {path} {what}", "pass a JSON Lines file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise OminixError(f"prompts file {path} is not a text file", "pass a JSON Lines file") from exc
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OminixError(f"{path}:{number} is not valid JSON", "one JSON object per line") from exc
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise OminixError(f"{path}:{number} has no string field 'prompt'",
                              'each line looks like {"prompt": "Once upon a time"}')
        records.append(record)
    if not records:
        raise OminixError(f"{path} holds no prompts", 'add lines like {"prompt": "Once upon a time"}')
    return records


def samples_out(source: ModelSource, out: Path | None, force: bool = False,
                prompts_file: Path | None = None) -> Path:
    """Where ``complete_file`` writes: ``out``, else RUN_DIR/samples.jsonl; checked before any model
    loads: an earlier ``ominix infer`` output is replaced, another regular file only with ``force``,
    never the model or the prompts file (``ominix.atomic.check_replaceable``)."""
    if out is None:
        if source.run_dir is None:
            raise OminixError(f"{source.path} is not part of a run directory", "pass --out FILE.jsonl")
        out = source.run_dir / "samples.jsonl"
    atomic.check_replaceable(out, "samples", force, inputs=[p for p in (source.path, prompts_file) if p])
    return out


def complete_file(session: Session, prompts: list[dict[str, Any]], sampling: Sampling, out: Path,
                  progress: Callable[[int, dict[str, Any]], None] | None = None) -> int:
    """Generate for every prompt (all checked before the first) into ``out``, written atomically."""
    encoded = [session.encode(p["prompt"]) for p in prompts]
    # prompts run as CUDA graphs, one per padded length (3.2 ms instead of ~19 for a short prompt at
    # 1.1B on an H200); one prompt alone would pay the capture (two forwards and a graph) for nothing
    decoder = session.decoder(max(len(ids) for ids in encoded), sampling, prefill_graphs=len(encoded) > 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f:
            for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
                result = generate(decoder, ids, sampling, session.tokenizer.eos_token_id)
                record = session.record(prompt, ids, result, sampling)
                f.write(json.dumps({**atomic.file_mark("samples"), **record}, ensure_ascii=False) + "\n")
                if progress is not None:
                    progress(i, record)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(prompts)
