"""Export a checkpoint to the Hugging Face format that transformers loads with no custom code.

The directory holds ``config.json`` (LlamaConfig), ``generation_config.json``, ``model.safetensors``
(or, past ``--max-shard-size``, default 5 GB as in transformers, shards with
``model.safetensors.index.json``), the tokenizer files, ``README.md`` (a model card with Hub front
matter) and ``ominix_export.json`` (source checkpoint, step, dtype, OminiX model config, sha256 of
every weight file). It is written under a temporary name and renamed once complete and verified.

Tensors stream: each is read from the checkpoint, cast and written before the next is read, and
the verification runs the two models one layer at a time (:mod:`ominix.infer.verify`), so the
export of a 70B model needs host memory for one tensor and two copies of one layer, not the model.

The tokenizer is the one the model was trained with (the checkpoint's own copy) and frames text as
the training documents were framed (``BOS doc`` or ``doc``, recorded as ``framing``). It takes
``input_ids`` and ``attention_mask`` only (so ``model.generate(**tok(...))`` works), pads on the
left (as batched generation with a decoder-only model needs) and has a pad token: the tokenizer's
own, else its end-of-text token (recorded as ``pad_token.from: eos``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ominix.atomic import check_replaceable, staged
from ominix.checkpoint import model_checksum
from ominix.checkpoint.weights import TensorSpec, read_tensor, weight_infos, write_sharded
from ominix.dtypes import dtype_name
from ominix.errors import OminixError
from ominix.infer.load import EXPORT_META, ModelSource, check_state, load_tokenizer, resolve, torch_dtype
from ominix.infer.model_card import model_card

DEFAULT_SHARD = 5 * 10**9  # transformers' default "5GB"
# progress(stage, done, total): stage "write" counts bytes, "verify" the model's pieces
Progress = Callable[[str, int, int], None]


def parse_size(text: str) -> int:
    """A size the way transformers reads ``max_shard_size``: ``5GB``, ``500MB``, ``100KB``
    (powers of 1000), ``2GiB``, ``500MiB``, ``100KiB`` (powers of 1024), or a byte count."""
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    raw = text.strip().upper()
    for unit, scale in units.items():
        if raw.endswith(unit) and raw[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(raw[: -len(unit)]) * scale)
    if raw.isdigit():
        return int(raw)
    raise OminixError(f"--max-shard-size {text!r} is not a size", "e.g. 5GB, 500MB, 2GiB, 100KB")


def default_out(source: ModelSource) -> Path:
    if source.run_dir is None:
        raise OminixError(f"{source.path} is not part of a run directory", "pass --out DIR")
    return source.run_dir / "export"



def source_record(fmt: str, source, dtype: str, command: str | None) -> dict:
    """What every export's ``ominix_export.json`` says of its source: format, checkpoint or export,
    its state, dtype, model shape, framing and the command that wrote it."""
    return {"format": fmt, "source": str(source.path.resolve()), "source_kind": source.kind,
            "state": source.state, "dtype": dtype, "model": source.model.model_dump(mode="json"),
            "framing": source.framing, "command": command}


def export(path: str | Path, out: Path | None = None, dtype: str | None = None, verify: bool = True,
           force: bool = False, max_shard_size: int = DEFAULT_SHARD, device: str = "cpu",
           command: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Write the export of ``path`` (run, checkpoint or export) to ``out``; returns its metadata.

    ``dtype`` None keeps the run's training precision. Every input problem is raised before
    anything is written; a failed verification leaves no output behind. ``progress`` hears of
    each tensor written and each piece verified.
    """
    source = resolve(path)
    out = Path(out) if out is not None else default_out(source)
    if dtype is None:
        dtype = source.run_config.parallel.precision if source.run_config else "fp32"
    target = torch_dtype(dtype)
    check_replaceable(out, "export", force, inputs=[p for p in (source.run_dir, source.path) if p is not None])
    tokenizer = load_tokenizer(source)
    if len(tokenizer) > source.model.vocab_size:
        raise OminixError(f"the tokenizer has {len(tokenizer)} tokens but model.vocab_size is "
                          f"{source.model.vocab_size}", "the tokenizer does not belong to this model")
    pad = prepare_tokenizer(tokenizer, source.model.max_position_embeddings)
    infos = weight_infos(source.weights)
    check_state(infos, source.model, source.weights)
    specs = [TensorSpec(name, target, infos[name].shape) for name in export_names(source.model)]

    def tensor(name: str) -> Any:
        return read_tensor(infos[name], name).to(target).contiguous()

    def written(_name: str, done: int, total: int) -> None:
        if progress is not None:
            progress("write", done, total)

    with staged(out, kind="export") as tmp:
        files = write_sharded(specs, tensor, tmp, max_shard_size, written)  # name -> sha256
        _write_configs(source, tokenizer, tmp, dtype)
        save_tokenizer(tokenizer, tmp)
        meta = {**source_record("huggingface-llama", source, dtype, command), "pad_token": pad,
                "files": files, "model_sha256": model_checksum(tmp, files)}
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(source, meta, release_name(source, out)))
        if verify:
            from ominix.infer.verify import verify_export

            meta["verify"] = verify_export(tmp, source.model, infos, target, device,
                                           None if progress is None else lambda d, t: progress("verify", d, t))
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    meta["out"] = str(out)
    return meta


def prepare_tokenizer(tokenizer, context: int) -> dict[str, Any]:
    """Make ``tokenizer`` fit the standard transformers calls and the model's ``context`` length
    (the prepared data's tokenizer says its block length, which clients would warn past); returns
    what the pad token is."""
    tokenizer.model_max_length = context
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.padding_side = "left"
    origin = "tokenizer"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token, origin = tokenizer.eos_token, "eos"
    if tokenizer.pad_token is None:
        return {"token": None, "id": None, "from": None}
    return {"token": tokenizer.pad_token, "id": tokenizer.pad_token_id, "from": origin}


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save ``tokenizer`` with the settings of :func:`prepare_tokenizer` in tokenizer_config.json."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config |= {"model_input_names": list(tokenizer.model_input_names), "padding_side": "left",
               "model_max_length": tokenizer.model_max_length}
    if tokenizer.pad_token is not None:
        config["pad_token"] = tokenizer.pad_token
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def release_name(source: ModelSource, out: Path) -> str:
    """The model's name: the release's, else the run directory's, else the output's."""
    release = source.run_config.release.name if source.run_config else None
    return release or (source.run_dir.name if source.run_dir else out.name)


def export_names(model_cfg) -> list[str]:
    """The tensors an export holds, in the model's order (a layer's tensors share a shard); the
    state dict leaves a tied lm_head out: transformers ties it to the embedding again."""
    import torch

    from ominix.model import LlamaForCausalLM

    with torch.device("meta"):
        return list(LlamaForCausalLM(model_cfg, attn="sdpa").state_dict())


def _write_configs(source: ModelSource, tokenizer, out: Path, dtype: str) -> None:
    from transformers import GenerationConfig

    from ominix.model import hf_config

    ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    ids = {k: v for k, v in ids.items() if v is not None}
    config = hf_config(source.model, torch_dtype=dtype_name(dtype), **ids)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    infer = source.run_config.infer if source.run_config else None
    sampling = {}
    if infer is not None and infer.temperature > 0:
        sampling = {"do_sample": True, "temperature": infer.temperature, "top_p": infer.top_p}
        if infer.top_k:
            sampling["top_k"] = infer.top_k
    GenerationConfig(**ids, **sampling).save_pretrained(out)
