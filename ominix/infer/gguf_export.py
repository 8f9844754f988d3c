"""Export a checkpoint to GGUF, the single-file format llama.cpp (and Ollama, LM Studio) run.

The output directory holds ``model.gguf`` and ``ominix_export.json`` (source, step, dtype, sha256 of
the file), written under a temporary name and renamed once complete. The GGUF carries what
llama.cpp's ``convert_hf_to_gguf.py`` writes for a LLaMA model: ``general.architecture = llama``,
the ``llama.*`` hyper-parameters, the tokenizer (:mod:`ominix.infer.gguf_vocab`) and the tensors
under llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ..., ``output_norm``, ``output``; a
tied lm_head is left out, as llama.cpp reads ``token_embd`` for it).

NOTE: the Q and K projections are stored permuted (:func:`permute_qk`): the HF checkpoint applies
rotary embedding to the two halves of each head (``rotate_half``), llama.cpp to interleaved
pairs, so the rows of each head are reordered to match; logits are unchanged. Norm weights stay
float32, as the converter keeps every 1-D tensor.

Tensors stream: each is read, cast and written before the next is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ominix.atomic import check_replaceable, staged
from ominix.checkpoint.weights import read_tensor, weight_infos
from ominix.errors import OminixError
from ominix.extras import install_hint
from ominix.hashing import sha256_file
from ominix.infer.export import export_names, prepare_tokenizer, release_name, source_record
from ominix.infer.gguf_vocab import vocab_fields, write_vocab
from ominix.infer.load import EXPORT_META, check_state, load_tokenizer, resolve, torch_dtype

GGUF_FILE = "model.gguf"
GGUF_DTYPES = ("fp32", "fp16", "bf16")  # what llama.cpp runs unquantized


def _gguf():
    try:
        import gguf
    except ImportError as exc:
        raise OminixError("the GGUF export needs the gguf package (llama.cpp's gguf-py)",
                          install_hint("gguf")) from exc
    return gguf


def permute_qk(weight, heads: int):
    """The rows of a Q (``heads`` = attention heads) or K (``heads`` = key/value heads) projection
    in llama.cpp's rotary order: per head, HF's ``[first half, second half]`` interleaved pairwise,
    exactly as llama.cpp's converter reorders a HF LLaMA."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(model_cfg) -> list[tuple[str, str]]:
    """``(HF name, GGUF name)`` of every exported tensor, in the model's order (llama.cpp's own
    name table maps them)."""
    gguf = _gguf()
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model_cfg.num_hidden_layers)
    return [(name, table.get_name(name, try_suffixes=(".weight",))) for name in export_names(model_cfg)]


def gguf_array(hf_name: str, tensor, model_cfg, dtype: str):
    """The numpy array a checkpoint tensor is stored as (:data:`_STORED`): permuted when it is a Q
    or K projection, float32 when it is 1-D, else in ``dtype``."""
    import torch

    if hf_name.endswith("q_proj.weight"):
        tensor = permute_qk(tensor, model_cfg.num_attention_heads)
    elif hf_name.endswith("k_proj.weight"):
        tensor = permute_qk(tensor, model_cfg.kv_heads)
    stored = "fp32" if tensor.dim() == 1 else dtype
    tensor = tensor.to(torch_dtype(stored)).contiguous()
    if stored == "bf16":
        return tensor.view(torch.int16).numpy().view("uint16")
    return tensor.numpy()


# dtype -> (the numpy dtype its array has, its GGML type); numpy has no bfloat16: raw uint16 bits
_STORED = {"fp32": ("float32", "F32"), "fp16": ("float16", "F16"), "bf16": ("uint16", "BF16")}


def _file_type(gguf, dtype: str) -> int:
    kinds = {"fp32": "ALL_F32", "fp16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}
    return int(getattr(gguf.LlamaFileType, kinds[dtype]))


def _write_hyper_parameters(writer, gguf, model_cfg, name: str, dtype: str) -> None:
    writer.add_name(name)
    writer.add_file_type(_file_type(gguf, dtype))
    writer.add_vocab_size(model_cfg.vocab_size)
    writer.add_context_length(model_cfg.max_position_embeddings)
    writer.add_embedding_length(model_cfg.hidden_size)
    writer.add_block_count(model_cfg.num_hidden_layers)
    writer.add_feed_forward_length(model_cfg.intermediate_size)
    writer.add_head_count(model_cfg.num_attention_heads)
    writer.add_head_count_kv(model_cfg.kv_heads)
    writer.add_rope_dimension_count(model_cfg.head_dim)
    writer.add_rope_freq_base(model_cfg.rope_theta)
    writer.add_layer_norm_rms_eps(model_cfg.rms_norm_eps)


def default_gguf_out(source) -> Path:
    if source.run_dir is None:
        raise OminixError(f"{source.path} is not part of a run directory", "pass --out DIR")
    return source.run_dir / "export-gguf"


def export_gguf(path: str | Path, out: Path | None = None, dtype: str | None = None,
                force: bool = False, command: str | None = None) -> dict[str, Any]:
    """Write ``OUT/model.gguf`` from ``path`` (run, checkpoint or HF export); returns its metadata.

    ``dtype`` None keeps the run's training precision. Every input problem (the gguf package, the
    dtype, a tokenizer llama.cpp would split differently) is raised before anything is written.
    """
    gguf = _gguf()
    source = resolve(path)
    out = Path(out) if out is not None else default_gguf_out(source)
    if dtype is None:
        dtype = source.run_config.parallel.precision if source.run_config else "fp32"
    torch_dtype(dtype)  # an unknown name is refused with the list of known ones
    check_replaceable(out, "export", force, inputs=[p for p in (source.run_dir, source.path) if p is not None])
    tokenizer = load_tokenizer(source)
    if len(tokenizer) > source.model.vocab_size:
        raise OminixError(f"the tokenizer has {len(tokenizer)} tokens but model.vocab_size is "
                          f"{source.model.vocab_size}", "the tokenizer does not belong to this model")
    prepare_tokenizer(tokenizer, source.model.max_position_embeddings)
    vocab = vocab_fields(tokenizer, source.model.vocab_size)
    infos = weight_infos(source.weights)
    check_state(infos, source.model, source.weights)
    names = gguf_tensors(source.model)

    with staged(out, kind="export") as tmp:
        writer = gguf.GGUFWriter(tmp / GGUF_FILE, "llama")
        _write_hyper_parameters(writer, gguf, source.model, release_name(source, out), dtype)
        write_vocab(writer, vocab)
        for hf_name, gguf_name in names:  # the header lists every tensor before any data
            shape = tuple(infos[hf_name].shape)
            stored = "fp32" if len(shape) == 1 else dtype
            np_dtype, kind = _STORED[stored]
            nbytes = math.prod(shape) * (4 if stored == "fp32" else 2)
            writer.add_tensor_info(gguf_name, shape, np_dtype, nbytes,
                                   raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for hf_name, _ in names:
            writer.write_tensor_data(gguf_array(hf_name, read_tensor(infos[hf_name], hf_name),
                                                source.model, dtype))
        writer.close()
        meta = {**source_record("gguf", source, dtype, command),
                "tokenizer": {"model": vocab["model"], "pre": vocab["pre"], "add_bos_token": vocab["add_bos_token"]},
                "files": {GGUF_FILE: sha256_file(tmp / GGUF_FILE)}}
        (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    meta["out"] = str(out)
    return meta
