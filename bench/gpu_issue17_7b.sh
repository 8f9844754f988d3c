#!/usr/bin/env bash
# Issue 17's 7B measurements on one H200, in ONE device call of under 10 minutes:
#   1. the embedded corpus prepared at seq 4096 (a trained BPE of 8,192 ids; the model keeps 32,000);
#   2. bench/train_throughput.py llama2-7b under gemini, micro batch 8 x accumulation 2 (16 sequences
#      per step, as the CLI run below): OminiX's decoder (compiled layers) and transformers'
#      LlamaForCausalLM, each in its own process, then `ominix train launch` of the same shape on the
#      prepared data (6 steps, a model-only checkpoint at steps 3 and 6: the 64 GiB disk holds no 7B
#      optimizer state), all in one results file;
#   3. the CLI run resumed from its step-3 checkpoint to step 6: load time, and its losses next to
#      the first run's;
#   4. if time is left: OminiX alone at micro batch 16 in one pass (the preset's per-GPU batch).
# Writes $OUT/train_7b_gemini_1gpu.json, $OUT/resume_7b.json, logs, and $OUT/colossalai_ext.tgz (the
# JIT-built ColossalAI kernels, to carry to a later call as .ext/).
#   OUT=/path bash bench/gpu_issue17_7b.sh        (the device runner sets OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python}
tmp=${TMPDIR:-/tmp}
start=$(date +%s)
left() { echo $(( ${BUDGET:-575} - ($(date +%s) - start) )); }
[ -f .ext/colossalai_ext.tgz ] && [ ! -d ~/.cache/colossalai ] && mkdir -p ~/.cache && tar xzf .ext/colossalai_ext.tgz -C ~/.cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; free -g | head -2; df -h "$tmp" | tail -1

data=$tmp/c4096
[ -d "$data" ] || "$python" -m ominix data prepare @embedded --train-tokenizer --vocab-size 8192 --seq-len 4096 \
    --val-fraction 0.1 --out "$data" > "$out/prepare.log" 2>&1 || { tail "$out/prepare.log"; exit 1; }

run=$tmp/r7b
rm -rf "$run" "$run-resume"
echo "== 7B bench + CLI ($(( $(date +%s) - start )) s)"
timeout $(( $(left) - 100 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch 8 --global-batch 16 \
    --warmup 2 --steps 4 --set model.compile=true --cli "$data" --cli-run "$run" \
    --cli-set checkpoint.every=3 --cli-set checkpoint.save_optimizer=false --cli-set checkpoint.keep_last=2 \
    --out "$out/train_7b_gemini_1gpu.json" > "$out/train_7b.log" 2>&1 || echo "FAILED: 7B bench (see train_7b.log)"
grep -v "^ " "$out/train_7b.log" | grep -iE "error|step |saved|tokens_per_s|ratio|cli|mfu" | tail -30
[ -d ~/.cache/colossalai ] && tar czf "$out/colossalai_ext.tgz" -C ~/.cache colossalai

echo "== 7B resume from step 3 ($(( $(date +%s) - start )) s)"
if [ -d "$run/checkpoints/step_00000003" ] && [ "$(left)" -gt 60 ]; then
    timeout $(( $(left) - 10 )) "$python" -m ominix train launch llama2-7b --data "$data" --out "$run-resume" --nodes 1 \
        --nproc-per-node 1 --plugin gemini --max-steps 6 --resume "$run/checkpoints/step_00000003" \
        --set model.compile=true --set schedule.micro_batch_size=8 --set schedule.global_batch_size=16 \
        --set logging.log_every=1 --set schedule.eval_every=0 --set checkpoint.every=3 \
        --set checkpoint.save_optimizer=false --set checkpoint.keep_last=1 > "$out/resume_7b.log" 2>&1 \
        || echo "FAILED: 7B resume (see resume_7b.log)"
    tail -12 "$out/resume_7b.log"
    "$python" - "$run" "$out" <<'PY'
import json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
def rows(d):
    p = d / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []
first, again = rows(run), rows(Path(str(run) + "-resume"))
loss = lambda rs: {r["step"]: r["loss"] for r in rs if r["kind"] == "train"}
ck = lambda rs, a: [{k: r.get(k) for k in ("step", "seconds", "bytes")} for r in rs
                    if r["kind"] == "checkpoint" and r.get("action") == a]
result = {"name": "llama2-7b gemini x1: model-only checkpoint save, load and resume (ominix train launch)",
          "first_run_losses": loss(first), "resumed_losses": loss(again),
          "saves": ck(first, "save") + ck(again, "save"), "loads": ck(again, "load"),
          "note": "the optimizer state is not saved (80 GB of fp32 master weights and Adam moments "
                  "do not fit the 64 GiB disk): the resumed run's Adam state starts afresh"}
(out / "resume_7b.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
PY
fi
rm -rf "$run-resume"
echo "== 7B bench, micro batch 16 in one pass, if time is left ($(( $(date +%s) - start )) s)"
if [ "$(left)" -gt 150 ]; then
    timeout $(( $(left) - 5 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch 16 \
        --warmup 1 --steps 2 --no-baseline --set model.compile=true --out "$out/train_7b_gemini_1gpu_micro16.json" \
        > "$out/train_7b_micro16.log" 2>&1 || echo "FAILED: micro 16 (see train_7b_micro16.log)"
    grep -E '"(value|mfu|peak_mem_gib)"|Error' "$out/train_7b_micro16.log" | tail -5
fi
echo "== done in $(( $(date +%s) - start )) s"
