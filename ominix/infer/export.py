"""Export a checkpoint to the Hugging Face format that transformers loads with no custom code.

The directory holds ``config.json`` (LlamaConfig), ``generation_config.json``, ``model.safetensors``
(or shards with ``model.safetensors.index.json``), the tokenizer files, ``README.md`` (a model card
with Hub front matter) and ``ominix_export.json`` (source checkpoint, step, dtype, OminiX model
config, sha256 of every weight file). It is written under a temporary name and renamed once
complete and verified.

The tokenizer takes ``input_ids`` and ``attention_mask`` only (so ``model.generate(**tok(...))``
works), pads on the left (as batched generation with a decoder-only model needs) and has a pad
token: the tokenizer's own, else its end-of-text token (recorded as ``pad_token.from: eos``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ominix.atomic import check_replaceable, staged
from ominix.checkpoint import model_checksum, read_weights
from ominix.checkpoint.weights import INDEX, SINGLE
from ominix.dtypes import dtype_name
from ominix.errors import OminixError
from ominix.hashing import sha256_file
from ominix.infer.load import (
    EXPORT_META, ModelSource, build_from_state, check_state, load_tokenizer, resolve, torch_dtype,
)
from ominix.infer.model_card import model_card

DEFAULT_SHARD = 2 * 1024**3


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``100KB`` or a byte count."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3}
    raw = text.strip().upper()
    for unit, scale in units.items():
        if raw.endswith(unit) and raw[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(raw[: -len(unit)]) * scale)
    if raw.isdigit():
        return int(raw)
    raise OminixError(f"--max-shard-size {text!r} is not a size", "e.g. 2GB, 500MB, 100KB")


def default_out(source: ModelSource) -> Path:
    if source.run_dir is None:
        raise OminixError(f"{source.path} is not part of a run directory", "pass --out DIR")
    return source.run_dir / "export"


def export(path: str | Path, out: Path | None = None, dtype: str | None = None, verify: bool = True,
           force: bool = False, max_shard_size: int = DEFAULT_SHARD, device: str = "cpu",
           command: str | None = None) -> dict[str, Any]:
    """Write the export of ``path`` (run, checkpoint or export) to ``out``; returns its metadata.

    ``dtype`` None keeps the run's training precision. Every input problem is raised before
    anything is written; a failed verification leaves no output behind.
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
    pad = prepare_tokenizer(tokenizer)
    state = read_weights(source.weights)
    check_state(state, source.model, source.weights)
    if source.model.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it from the embedding
    state = {k: v.to(target).contiguous() for k, v in state.items()}

    with staged(out, kind="export") as tmp:
        files = _write_weights(state, tmp, max_shard_size)
        _write_configs(source, tokenizer, tmp, dtype)
        save_tokenizer(tokenizer, tmp)
        meta = {
            "format": "huggingface-llama",
            "source": str(source.path.resolve()),
            "source_kind": source.kind,
            "state": source.state,
            "dtype": dtype,
            "model": source.model.model_dump(mode="json"),
            "pad_token": pad,
            "files": files,
            "model_sha256": model_checksum(tmp, files),
            "command": command,
        }
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(source, meta, _name(source, out)))
        if verify:
            meta["verify"] = verify_export(tmp, source.model, state, device)
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    meta["out"] = str(out)
    return meta


def prepare_tokenizer(tokenizer) -> dict[str, Any]:
    """Make ``tokenizer`` fit the standard transformers calls; returns what the pad token is."""
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
    config |= {"model_input_names": list(tokenizer.model_input_names), "padding_side": "left"}
    if tokenizer.pad_token is not None:
        config["pad_token"] = tokenizer.pad_token
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _name(source: ModelSource, out: Path) -> str:
    release = source.run_config.release.name if source.run_config else None
    return release or (source.run_dir.name if source.run_dir else out.name)


def _write_weights(state: dict[str, Any], out: Path, max_shard_size: int) -> dict[str, str]:
    """Shard in parameter order, at most ``max_shard_size`` bytes each (a bigger tensor goes alone)."""
    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        names = [SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for name, shard in zip(names, shards):
        save_file(shard, out / name, metadata={"format": "pt"})
    return {name: sha256_file(out / name) for name in names}


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


def verify_export(out: Path, model_cfg, state: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Load ``out`` with transformers (no custom code) and compare its logits with OminiX's model
    holding the same (exported-precision) weights, both computed in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    theirs = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).to(device).eval()
    ours = build_from_state(model_cfg, {k: v.float() for k, v in state.items()}, device, "fp32")
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("OminiX exports a model that transformers can load.", return_tensors="pt").input_ids
    ids = ids[:, : model_cfg.max_position_embeddings].to(device)
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    del theirs, ours
    if not diff <= 1e-4 * max(1.0, scale):
        raise OminixError(f"verification failed: logits of the export differ from OminiX's by {diff:.3g} "
                          f"(max |logit| {scale:.3g})", "report this as a bug; --no-verify skips the check",
                          exit_code=1)
    return {"tokens": ids.shape[1], "max_abs_logit_diff": diff}


