"""Batch-1 decode speed: `ominix infer`'s generation against transformers `generate`, same export, same run.

OminiX's figure is the median of three timed runs after one full warm-up run; transformers' is one
run after a short warm-up (it is ~40x slower, and its variance is small against that).

Builds a model of a preset's shape with random weights, writes it as a training checkpoint, exports
it with `ominix checkpoint export` (bf16 on a GPU), then times greedy generation of ``--new-tokens``
tokens after a short prompt with both: OminiX (static KV cache, compiled decode step with OminiX's
Triton kernels, replayed as one CUDA graph) and transformers' `generate` (its default cache) on the
export. The ceiling is the memory-bandwidth limit: weight bytes / measured device-to-device copy
bandwidth (each decoded token reads every weight once).

    python bench/decode.py                              # tinyllama-1.1b shape on cuda
    python bench/decode.py --shape tiny --device cpu    # smoke test on a CPU
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import childproc  # bench/childproc.py: this script's folder is on sys.path

TEXT = "the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun all day long. " * 8


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - start)


def write_run(root: Path, shape: str, dtype: str, device: str) -> Path:
    """A run directory with one checkpoint of random weights and a small trained tokenizer."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ominix.checkpoint import checkpoints_dir, step_name
    from ominix.checkpoint.layout import CONFIG, MODEL, STATE, write_latest
    from ominix.config import load_config, save_config
    from ominix.infer.load import torch_dtype
    from ominix.model import build_model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(
        root / "data" / "tokenizer")
    run = root / "run"
    cfg = load_config(shape, flags={"data.path": str(root / "data"), "logging.run_dir": str(run),
                                    "parallel.precision": dtype, "model.attn": "sdpa"})
    save_config(cfg, run / "config.yaml")
    ckpt = checkpoints_dir(run) / step_name(1)
    (ckpt / MODEL).mkdir(parents=True)
    model = build_model(cfg.model, device=device, dtype=torch_dtype(dtype), seed=0)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, ckpt / MODEL / "model.safetensors")
    (ckpt / STATE).write_text(json.dumps({"step": 1, "tokens_seen": 0, "loss": None}))
    save_config(cfg, ckpt / CONFIG)
    write_latest(ckpt.parent, ckpt.name)
    return run


def time_ominix(export: Path, device: str, dtype: str, prompt: list[int], new: int, compile: bool,
                inductor: dict | None = None, kernels: bool | None = None, prefill_graphs: bool = False):
    from ominix.infer.generate import Sampling, generate
    from ominix.infer.load import resolve
    from ominix.infer.session import open_session

    session = open_session(resolve(export), device, dtype, compile, kernels)
    sampling = Sampling(max_new_tokens=new, temperature=0)
    started = time.perf_counter()
    decoder = session.decoder(len(prompt), sampling, inductor, prefill_graphs)  # compiles, captures the graphs
    generate(decoder, prompt, sampling)  # one full warm-up run (allocator, pinned buffers)
    sync(device)
    warmup = time.perf_counter() - started
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        tokens = generate(decoder, prompt, sampling).tokens
        sync(device)
        rates.append(len(tokens) / (time.perf_counter() - started))
    def prefill_time() -> float:  # the prompt's forward alone (the time to the first token, less sampling)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            decoder.prefill(torch.tensor([prompt]))
            sync(device)
            times.append(time.perf_counter() - started)
        return sorted(times)[1]

    prefill = {"prefill": prefill_time()}
    if decoder.prefill_graphs:  # the eager prefill too, in the same process
        decoder.prefill_graphs = False
        prefill["eager"] = prefill_time()
        decoder.prefill_graphs = True
    replay = None
    if decoder.use_graph:  # the decode step alone, back to back: the ceiling of the host loop
        decoder._pos.zero_()
        sync(device)
        started = time.perf_counter()
        for _ in range(new):
            decoder._graph.replay()
        sync(device)
        replay = new / (time.perf_counter() - started)
    weight_bytes = sum(p.numel() * p.element_size() for p in session.model.parameters())
    return sorted(rates)[1], tokens, warmup, weight_bytes, replay, decoder.kernels, prefill


def time_transformers(export: Path, device: str, dtype: str, prompt: list[int], new: int):
    from transformers import AutoModelForCausalLM

    from ominix.infer.load import torch_dtype

    model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch_dtype(dtype)).to(device).eval()
    ids = torch.tensor([prompt], device=device)
    kwargs = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)
        sync(device)
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        sync(device)
    seconds = time.perf_counter() - started
    tokens = out[0, len(prompt):].tolist()
    del model
    return len(tokens) / seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b", help="preset whose model shape is measured")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the decode step (GPU)")
    parser.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                        help="OminiX's Triton kernels for the decoder layers (default, as in ominix infer: "
                             "on a GPU when Triton is installed)")
    parser.add_argument("--inductor", type=json.loads, default=None,
                        help='compiler options as JSON (default: ominix.infer.generate.INDUCTOR)')
    parser.add_argument("--prefill-graphs", action="store_true",
                        help="the prompt runs as a CUDA graph of its padded length (the eager prefill is timed too)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON; default bench/results/decode_CARD.json, e.g. decode_h200.json")
    args = parser.parse_args()

    from ominix.flops import device_name
    from ominix.infer.export import export
    from ominix.infer.generate import INDUCTOR

    device = args.device
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    card = device_name() if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="ominix-bench-decode-") as tmp:
        run = write_run(Path(tmp), args.shape, dtype, device)
        out = Path(tmp) / "export"
        meta = export(run, out, dtype=dtype, verify=True, device=device)
        prompt = list(range(10, 10 + args.prompt_tokens))
        ours, our_tokens, warmup, weight_bytes, replay, kernels, prefill = time_ominix(
            out, device, dtype, prompt, args.new_tokens, args.compile, args.inductor, args.kernels, args.prefill_graphs)
        theirs, their_tokens = time_transformers(out, device, dtype, prompt, args.new_tokens)
    bandwidth = copy_bandwidth(device) if device.startswith("cuda") else None
    limit = bandwidth / weight_bytes if bandwidth else None
    agree = next((i for i, (a, b) in enumerate(zip(our_tokens, their_tokens)) if a != b), len(our_tokens))
    result = {
        "name": f"decode batch 1, {args.shape} shape, {dtype}, {args.new_tokens} new tokens",
        "card": card,
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join(["python", *sys.argv]),
        "value": round(ours, 1),
        "unit": "tokens/s",
        "baseline": round(theirs, 1),
        "baseline_name": "transformers generate (default dynamic cache, sdpa)",
        "ratio": round(ours / theirs, 2),
        "bandwidth_limit": round(limit, 1) if limit else None,
        "fraction_of_bandwidth_limit": round(ours / limit, 3) if limit else None,
        "weight_bytes": weight_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "ominix_warmup_s": round(warmup, 1),
        "ominix_prefill_ms": round(prefill["prefill"] * 1e3, 2),
        "prefill_graphs": "eager" in prefill,
        "ominix_prefill_eager_ms": round(prefill["eager"] * 1e3, 2) if "eager" in prefill else None,
        "graph_replay_only_tokens_per_s": round(replay, 1) if replay else None,
        "greedy_tokens_equal_before_first_difference": agree,
        "export_verify_max_abs_logit_diff": meta["verify"]["max_abs_logit_diff"],
        "compile": args.compile,
        "inductor": args.inductor if args.inductor is not None else INDUCTOR,
        "kernels": kernels,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    print(json.dumps(result, indent=1))
    path = args.out or childproc.result_path("decode", card)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
