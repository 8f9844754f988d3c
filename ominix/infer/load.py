"""Find and load a model: a run directory, one of its checkpoints, or a Hugging Face export.

A run directory means its newest checkpoint (``checkpoints/latest``). A checkpoint takes its model
shape from its ``config.yaml`` and its tokenizer from its own ``tokenizer/`` (one written before
checkpoints carried it: from the run's prepared data, ``data.path/tokenizer``). An export carries
both itself (``config.json`` and the tokenizer files). Either way the tokenizer is set to frame text
as the model's training documents were framed (state.json's ``framing``, ominix_export.json's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ominix.checkpoint import (
    has_weights, is_checkpoint, read_state, resolve_checkpoint, run_dir_of, weights_dir,
)
from ominix.checkpoint.integrity import part_problem
from ominix.checkpoint.layout import CHECKPOINTS, CONFIG, RECORD, STATE, STEP_GLOB, TOKENIZER
from ominix.checkpoint.weights import iter_weights, weight_infos
from ominix.config import ModelConfig, OminixConfig, load_config
from ominix.data.store import PLAIN
from ominix.dtypes import torch_dtype
from ominix.errors import OminixError
from ominix.hubref import model_path

EXPORT_META = "ominix_export.json"
HINT_SOURCES = (f"pass a run directory, RUN_DIR/{CHECKPOINTS}/{STEP_GLOB}, or a directory written by "
                "`ominix checkpoint export`")


@dataclass
class ModelSource:
    """Where a model's weights, shape and tokenizer are."""

    kind: str  # "checkpoint" or "export"
    path: Path  # the directory the user named
    weights: Path  # directory of model.safetensors (+ index) or shards
    model: ModelConfig
    tokenizer: Path | None
    run_dir: Path | None = None
    run_config: OminixConfig | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the saved state of a checkpoint (read_state)
    framing: str | None = None  # how the training documents were framed; None: as the tokenizer does

    @property
    def label(self) -> str:
        step = self.state.get("step")
        return f"{self.path} (step {step})" if step is not None else str(self.path)


def resolve(path: str | Path) -> ModelSource:
    """Classify ``path`` (or the Hub id it spells) and read its model shape; raises OminixError for
    anything else."""
    path = model_path(path)
    if not path.exists():
        raise OminixError(f"{path} does not exist", HINT_SOURCES)
    if (path / "config.json").is_file() and has_weights(path):
        return _export_source(path)
    # a checkpoint that is not whole is resolve_checkpoint's to explain
    if is_checkpoint(path) or (path / CHECKPOINTS).is_dir() or (path / STATE).is_file():
        return _checkpoint_source(resolve_checkpoint(path))
    raise OminixError(f"{path} is not an OminiX run, checkpoint or Hugging Face export", HINT_SOURCES)


def _checkpoint_source(ckpt: Path) -> ModelSource:
    run_dir = run_dir_of(ckpt)
    # the checkpoint carries the config of the run that wrote it; older layouts only the run's
    config_file = next((f for f in (ckpt / CONFIG, run_dir / "config.yaml") if f.is_file()), None)
    if config_file is None:
        raise OminixError(f"{ckpt} has no config.yaml, nor has its run directory {run_dir}",
                          "checkpoints are read with the config.yaml of their run")
    cfg = load_config(config_file)
    state = read_state(ckpt)
    own = ckpt / TOKENIZER
    if own.is_dir() and (problem := part_problem(ckpt, TOKENIZER)):
        raise OminixError(f"the tokenizer of checkpoint {ckpt} does not match its {RECORD} ({problem})",
                          f"restore {own} from a copy of the checkpoint")
    # a checkpoint without a framing was written before prepare framed documents: doc EOS
    return ModelSource(kind="checkpoint", path=ckpt, weights=weights_dir(ckpt), model=cfg.model,
                       tokenizer=own if own.is_dir() else _run_tokenizer(cfg, run_dir, state), run_dir=run_dir,
                       run_config=cfg, state=state, framing=state.get("framing", PLAIN))


def _run_tokenizer(cfg: OminixConfig, run_dir: Path, state: dict[str, Any]) -> Path | None:
    """The tokenizer of a checkpoint written before checkpoints carried one: the run's prepared
    data's, where that is the data the checkpoint recorded; else the run's ``data.tokenizer``."""
    from ominix.data.recorded import run_data

    data = run_data(cfg.data.path, run_dir, state.get("data_manifest_sha256"), holding=TOKENIZER)
    if data is not None:
        return data / TOKENIZER
    named = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    return named if named is not None and named.is_absolute() and named.exists() else None


def _export_source(path: Path) -> ModelSource:
    meta_file = path / EXPORT_META
    framing = None  # a model from elsewhere: its tokenizer frames text as it was trained
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        model = ModelConfig.model_validate(meta["model"])
        state = meta.get("state", {})
        framing = meta.get("framing", PLAIN)
    else:
        model, state = model_config_from_hf(json.loads((path / "config.json").read_text()), path), {}
    return ModelSource(kind="export", path=path, weights=path, model=model, tokenizer=path, state=state,
                       framing=framing)


def model_config_from_hf(hf: dict[str, Any], path: Path) -> ModelConfig:
    """The ModelConfig of a plain Hugging Face LLaMA ``config.json`` (no rope scaling, no biases)."""
    if hf.get("model_type") != "llama":
        raise OminixError(f"{path}/config.json is a {hf.get('model_type')!r} model, not llama",
                          "OminiX serves LLaMA-architecture models only")
    unsupported = [k for k in ("rope_scaling", "attention_bias", "mlp_bias") if hf.get(k)]
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append("hidden_act")
    head_dim = hf.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        unsupported.append("head_dim")
    if unsupported:
        raise OminixError(f"{path}/config.json uses {', '.join(unsupported)}, which OminiX does not implement",
                          "use transformers directly for this model")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
            "tie_word_embeddings", "initializer_range")
    return ModelConfig(name=path.name, attn="sdpa", **{k: hf[k] for k in keys if k in hf})


def check_state(state: Mapping[str, Any], model: ModelConfig, source: Path) -> None:
    """Refuse weights that do not fit ``model`` with one line naming the first offending tensor.
    ``state`` maps names to anything with a ``shape``: tensors, or the headers of
    :func:`~ominix.checkpoint.weights.weight_infos`."""
    import torch

    from ominix.model import LlamaForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(model, attn="sdpa").state_dict().items()}
    if model.tie_word_embeddings:  # the model's state dict holds the tied head once, as the embedding
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unknown tensor {unexpected[0]}"
        raise OminixError(f"the weights in {source} do not fit the model config: it {what} "
                          f"({len(missing)} missing, {len(unexpected)} unexpected)",
                          "the checkpoint belongs to another model shape or is not an OminiX/LLaMA model")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise OminixError(f"the weights in {source} do not fit the model config: {name} has shape "
                              f"{list(state[name].shape)}, the config says {list(shape)}",
                              "the checkpoint belongs to another model shape; check config.yaml / config.json")


def empty_model(model_cfg: ModelConfig, device: str = "cpu", dtype: str = "fp32"):
    """An eval-mode OminiX model on ``device`` in ``dtype`` with uninitialised weights (to fill)."""
    import torch

    from ominix.model import LlamaForCausalLM

    cfg = model_cfg.model_copy(update={"compile": False, "recompute_activations": False})
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, attn="sdpa").to(torch_dtype(dtype))
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset_parameters()  # float32 frequencies, like transformers
    return model.eval().requires_grad_(False)


def fill(model, tensors: Iterable[tuple[str, Any]]):
    """Copy ``(name, tensor)`` pairs (already checked) into ``model`` one at a time, converting
    the dtype on the way, so no second copy of the weights is ever held; returns ``model``."""
    import torch

    params = model.state_dict(keep_vars=True)
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, tensor in tensors:
            if not (tied and name == "lm_head.weight"):
                params[name].copy_(tensor)
    return model


def load_model(source: ModelSource, device: str = "cpu", dtype: str = "fp32"):
    """Check the weights of ``source`` against its shape (headers only), then load them into a
    model built empty on ``device``, one tensor at a time: host memory holds the model (when
    ``device`` is the CPU) and one tensor, never a second copy of the weights."""
    infos = weight_infos(source.weights)
    check_state(infos, source.model, source.weights)
    return fill(empty_model(source.model, device, dtype), iter_weights(source.weights, infos))


def load_tokenizer(source: ModelSource):
    """The Hugging Face tokenizer of ``source``, framing text as the model's training documents were
    framed; a clear error when there is none."""
    return framed_tokenizer(source.tokenizer, source.framing, source.path)


def framed_tokenizer(tok_dir: Path | None, framing: str | None, owner: Path):
    """The Hugging Face tokenizer in ``tok_dir`` (of the model at ``owner``), framing text as
    ``framing`` says (None: as the tokenizer does)."""
    from ominix.data.tokenizer import set_framing

    tokenizer = _read_tokenizer(tok_dir, owner)
    if framing is not None:
        set_framing(tokenizer, framing)
    return tokenizer


def _read_tokenizer(tok_dir: Path | None, owner: Path):
    if tok_dir is None or not tok_dir.exists():
        where = f"({tok_dir} does not exist)" if tok_dir else "(the run config names no data.path)"
        raise OminixError(f"no tokenizer for {owner} {where}",
                          "set data.path in the run's config.yaml to the prepared data directory")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if tok_dir.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(tok_dir))
    if (tok_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(tok_dir)
    if (tok_dir / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    raise OminixError(f"no tokenizer files in {tok_dir} (tokenizer.json or tokenizer_config.json)",
                      "point data.path at a prepared data directory, or export again")
