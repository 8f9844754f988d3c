"""Peak host memory (RSS) and time of `ominix checkpoint export` and of loading a model for
infer/eval, on a random-init checkpoint made in a temporary directory.

Each measured command runs in its own child process; its peak RSS is the kernel's ``ru_maxrss``
of that child and what it waited for (``bench/childproc.py``). The bound the export must hold:
peak <= 0.5 x the checkpoint's weight bytes + 1 GiB. ``--baseline-pythonpath DIR`` runs the same export with another checkout's
``ominix`` (an older main) in the same call, for a same-run before/after.

    python bench/export_memory.py                    # ~300M, fp32 -> bench/results/export_memory_cpu.json
    python bench/export_memory.py --preset llama2-7b --dtype bf16 --device cuda \\
        --load bf16 --load-device cuda               # a GPU node -> export_memory_7b_CARD.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import childproc  # bench/childproc.py: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# about 322M parameters: a model of a few hundred million that a CPU host exports in a minute
SMALL = {"model.hidden_size": 1024, "model.intermediate_size": 2816, "model.num_hidden_layers": 20,
         "model.num_attention_heads": 16, "model.num_key_value_heads": 16, "model.vocab_size": 32000,
         "model.max_position_embeddings": 2048}
TEXT = "OminiX exports a model that transformers can load. The quick brown fox jumps over the lazy dog. " * 20


def make_checkpoint(root: Path, preset: str, dtype: str, device: str, shard_gb: float) -> dict:
    """A run directory with one checkpoint of random weights (written in a child process)."""
    code = f"""
import json, sys, torch
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from ominix.checkpoint.weights import TensorSpec, write_sharded
from ominix.config import load_config, save_config
from ominix.dtypes import torch_dtype
from ominix.model import build_model
root = Path({str(root)!r})
tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator([{TEXT!r}], trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(root / "data/tokenizer")
flags = {{"data.path": str(root / "data"), "logging.run_dir": str(root / "run"), **{SMALL if preset == "small" else {}!r}}}
cfg = load_config({"tiny" if preset == "small" else preset!r}, flags=flags)
cfg.parallel.precision = {dtype!r}
save_config(cfg, root / "run/config.yaml")
ckpt = root / "run/checkpoints/step_00000001"
(ckpt / "model").mkdir(parents=True)
model = build_model(cfg.model.model_copy(update={{"compile": False}}), {device!r}, torch_dtype({dtype!r}), seed=0, attn="sdpa")
state = model.state_dict()
specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in state.items()]
write_sharded(specs, lambda k: state[k].cpu(), ckpt / "model", int({shard_gb} * 1e9))
(ckpt / "state.json").write_text(json.dumps({{"step": 1, "tokens": 0}}))
save_config(cfg, ckpt / "config.yaml")
(root / "run/checkpoints/latest").write_text(ckpt.name)
print(json.dumps({{"params": sum(v.numel() for v in state.values()), "model": cfg.model.name}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    made = json.loads(out.stdout.strip().splitlines()[-1])
    if preset == "small":
        made["model"] = "random-init test shape"
    return made


def measure(argv: list[str], env: dict | None = None) -> dict:
    """Run ``argv``; its wall time and peak RSS (this child alone)."""
    result = childproc.run(argv, env)
    return {"seconds": round(result["seconds"], 2), "peak_rss_gib": round(result["peak_rss_bytes"] / GIB, 3)}


def _card_name() -> str:
    """The GPU's name, as ``nvidia-smi`` gives it (the parent process holds no CUDA context)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.split("\n")[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out or "cuda"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="small (~322M) or an OminiX preset, e.g. llama2-7b")
    ap.add_argument("--dtype", default="fp32", help="checkpoint precision: fp32 or bf16")
    ap.add_argument("--export-dtype", default="bf16", help="precision of the export")
    ap.add_argument("--device", default="cpu", help="where the random checkpoint is initialised")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="shard size of the made checkpoint (GB)")
    ap.add_argument("--no-verify", action="store_true", help="export without the logits check")
    ap.add_argument("--load", default="bf16,fp32", help="dtypes to measure model loading in ('' = none)")
    ap.add_argument("--load-device", default="cpu", help="where the loaded model lives (cuda on the GPU machine)")
    ap.add_argument("--baseline-pythonpath", help="also export with the ominix under this directory")
    ap.add_argument("--tmp", help="directory for the checkpoint and exports (default: a temporary one)")
    ap.add_argument("--out", help="JSON results file (default: bench/results/export_memory_CARD.json, "
                    "export_memory_SIZE_CARD.json for a preset)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        made = make_checkpoint(root, args.preset, args.dtype, args.device, args.shard_gb)
        made_s = time.perf_counter() - t0
        ckpt = root / "run/checkpoints/step_00000001/model"
        weights = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        bound = 0.5 * weights / GIB + 1
        verify = ["--no-verify"] if args.no_verify else []
        cli = [sys.executable, "-m", "ominix", "checkpoint", "export", str(root / "run"), "--dtype", args.export_dtype,
               "--json", *verify]
        # this checkout first, then whatever the caller's path adds (e.g. wheels installed with --target)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
        rows = [{"what": f"export -> {args.export_dtype}" + ("" if verify else " + verify"),
                 **measure([*cli, "--out", str(root / "export")], env)}]
        if args.baseline_pythonpath:
            rows.append({"what": f"baseline export ({args.baseline_pythonpath})",
                         **measure([*cli, "--out", str(root / "export_base")],
                                   {**env, "PYTHONPATH": os.pathsep.join(
                                       filter(None, [args.baseline_pythonpath, os.environ.get("PYTHONPATH")]))})})
        for dtype in filter(None, args.load.split(",")):
            code = (f"from ominix.infer.load import load_model, resolve; "
                    f"load_model(resolve({str(root / 'run')!r}), {args.load_device!r}, {dtype!r})")
            row = {"what": f"load for infer/eval, {args.load_device} {dtype}",
                   **measure([sys.executable, "-c", code], env)}
            if args.load_device == "cpu":  # the model itself lives in host memory: the bound is on the rest
                row["model_gib"] = round(made["params"] * (4 if dtype == "fp32" else 2) / GIB, 3)
            rows.append(row)
        for row in rows:
            row["x_weights"] = round(row["peak_rss_gib"] * GIB / weights, 3)
            if not row["what"].startswith("baseline"):
                row["within_bound"] = row["peak_rss_gib"] - row.get("model_gib", 0) <= bound
            print(json.dumps(row), flush=True)
    ours = rows[0]
    base = rows[1] if args.baseline_pythonpath else None
    result = {
        "name": f"export peak host memory, {made['model']} ({made['params'] / 1e6:.0f}M params, {args.dtype} "
                f"checkpoint -> {args.export_dtype} export)",
        "card": "cpu" if args.device == "cpu" else _card_name(),
        "host": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join(["python", "bench/export_memory.py", *sys.argv[1:]]),
        "value": ours["peak_rss_gib"], "unit": "GiB peak RSS",
        "baseline": base["peak_rss_gib"] if base else None,
        "ratio": round(base["peak_rss_gib"] / ours["peak_rss_gib"], 2) if base else None,
        "weights_gib": round(weights / GIB, 3), "bound_gib": round(bound, 3),
        "bound": "peak RSS <= 0.5 x weights + 1 GiB (a CPU load: besides the loaded model itself)",
        "params": made["params"],
        "make_checkpoint_seconds": round(made_s, 1), "rows": rows,
    }
    print(json.dumps(result, indent=1))
    size = "" if args.preset == "small" else f"_{childproc.preset_size(args.preset)}"
    out = Path(args.out or childproc.result_path(f"export_memory{size}", result["card"]))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(r.get("within_bound", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

