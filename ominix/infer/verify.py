"""Check an export against the checkpoint it came from, one decoder layer at a time.

Both models are built on the meta device: OminiX's ``LlamaForCausalLM`` (weights read from the
checkpoint and rounded to the export's precision) and transformers' ``LlamaForCausalLM`` built
from the export's ``config.json`` by ``AutoModelForCausalLM`` (weights read from the exported
files). The same tokens go through the embedding, each layer, the final norm and the head of
both, every piece computed in float32; only the piece being run holds real weights, so host
memory stays at two copies of one layer however large the model. The export's tensor names and
shapes must be exactly those transformers expects (nothing missing, nothing left over).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ominix.checkpoint.weights import TensorInfo, read_tensor, weight_infos
from ominix.config import ModelConfig
from ominix.errors import OminixError

PROMPT = "OminiX exports a model that transformers can load."
BUG = "report this as a bug; --no-verify skips the check"


def verify_export(out: Path, model_cfg: ModelConfig, source: dict[str, TensorInfo], dtype: Any,
                  device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compare the logits of the export in ``out`` (read by transformers' model) with OminiX's model
    holding the checkpoint's tensors ``source`` cast to ``dtype``; raise when they differ.
    ``progress(done, total)`` after each piece (embedding, layers, head)."""
    import torch
    from transformers import AutoTokenizer

    ours, theirs = _meta_models(out, model_cfg)
    exported = weight_infos(out)
    _check_names(theirs, exported, model_cfg.tie_word_embeddings)
    tied = model_cfg.tie_word_embeddings

    def mine(name: str) -> Any:
        name = "model.embed_tokens.weight" if tied and name == "lm_head.weight" else name
        return read_tensor(source[name], name).to(dtype).float()

    def yours(name: str) -> Any:
        name = "model.embed_tokens.weight" if tied and name == "lm_head.weight" else name
        return read_tensor(exported[name], name).float()

    ids = AutoTokenizer.from_pretrained(out)(PROMPT, return_tensors="pt").input_ids
    ids = ids[:, : model_cfg.max_position_embeddings].to(device)
    positions = torch.arange(ids.shape[1], device=device)[None]
    total = model_cfg.num_hidden_layers + 2
    # one pair of layers holds every layer's weights in turn: real storage is allocated once (the
    # allocator would keep freed layers' pages if each layer got its own)
    layer_a, layer_b = ours.model.layers[0], theirs.model.layers[0]
    pieces = [("model.embed_tokens.", ours.model.embed_tokens, theirs.model.embed_tokens)]
    pieces += [(f"model.layers.{i}.", layer_a, layer_b) for i in range(model_cfg.num_hidden_layers)]
    pieces.append(("", _Head(ours), _Head(theirs)))
    ours.model.rotary_emb.to_empty(device=device)
    ours.model.rotary_emb.reset_parameters()
    rotary = type(theirs.model.rotary_emb)(config=theirs.config, device=device)
    hidden_diff = 0.0
    with torch.no_grad():
        for done, (prefix, a, b) in enumerate(pieces, 1):
            for module, read in ((a, mine), (b, yours)):
                if next(module.named_parameters())[1].is_meta:
                    module.to_empty(device=device)
                for name, param in module.named_parameters():
                    param.copy_(read(name if isinstance(module, _Head) else prefix + name))
            if done == 1:
                x, y = a(ids), b(ids)
                cos, sin = ours.model.rotary_emb(positions, torch.float32)
                embeddings = rotary(y, positions)
            elif done < total:
                x = a(x, cos, sin)
                out_b = b(y, attention_mask=None, position_ids=positions, position_embeddings=embeddings)
                y = out_b[0] if isinstance(out_b, tuple) else out_b
                hidden_diff = max(hidden_diff, (x - y).abs().max().item())
            else:
                x, y = a(x), b(y)
            if done in (1, total - 1):  # the embedding, then the shared layers, are done with
                a.to_empty(device="meta")
                b.to_empty(device="meta")
            if progress is not None:
                progress(done, total)
    diff = (x - y).abs().max().item()
    scale = y.abs().max().item()
    if not diff <= 1e-4 * max(1.0, scale):
        raise OminixError(f"verification failed: logits of the export differ from OminiX's by {diff:.3g} "
                          f"(max |logit| {scale:.3g})", BUG, exit_code=1)
    return {"tokens": ids.shape[1], "max_abs_logit_diff": diff, "max_abs_hidden_diff": hidden_diff,
            "layers": model_cfg.num_hidden_layers, "method": "layer by layer, float32"}


class _Head:
    """The final norm and lm_head of a causal LM, run as one piece."""

    def __init__(self, model: Any) -> None:
        self.norm, self.lm_head = model.model.norm, model.lm_head

    def __call__(self, x: Any) -> Any:
        return self.lm_head(self.norm(x))

    def named_parameters(self):
        yield "model.norm.weight", self.norm.weight
        yield "lm_head.weight", self.lm_head.weight

    def to_empty(self, device: str) -> None:
        self.norm.to_empty(device=device)
        self.lm_head.to_empty(device=device)


def _meta_models(out: Path, model_cfg: ModelConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ominix.model import LlamaForCausalLM

    config = AutoConfig.from_pretrained(out)
    cfg = model_cfg.model_copy(update={"compile": False, "recompute_activations": False})
    with torch.device("meta"):
        ours = LlamaForCausalLM(cfg, attn="sdpa").float().eval()
        # sdpa: with no mask, transformers' attention is causal (eager would attend everywhere)
        theirs = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32,
                                                  attn_implementation="sdpa").eval()
    return ours, theirs


def _check_names(theirs: Any, exported: dict[str, TensorInfo], tied: bool) -> None:
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    if tied:
        expected.pop("lm_head.weight", None)
    got = {k: v.shape for k, v in exported.items()}
    if got != expected:
        odd = sorted(set(got) ^ set(expected)) or [k for k in expected if got[k] != expected[k]]
        raise OminixError(f"verification failed: the export's tensors are not those transformers expects "
                          f"(first difference: {odd[0]})", BUG, exit_code=1)
