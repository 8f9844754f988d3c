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
# The shape: MICRO (default 8) sequences per pass, GLOBAL (16) per step; BASELINE=0 skips the
# transformers side; WARMUP/STEPS (2/4) bench steps (the CLI runs WARMUP + STEPS, saving every
# SAVE_EVERY = 3 steps, and the resume starts from the first save). If the bench's OminiX side fails
# (out of memory), the CLI runs FALLBACK_MICRO (8) x accumulation instead.
# Writes $OUT/train_7b_gemini_1gpu.json, $OUT/resume_7b.json, logs, and $OUT/colossalai_ext.tgz (the
# JIT-built ColossalAI kernels, to carry to a later call as .ext/).
#   OUT=/path bash bench/gpu_issue17_7b.sh        (the device runner sets OUT)
cd "$(dirname "$0")/.."
source bench/gpu_common.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; free -g | head -2; df -h "$tmp" | tail -1

prepare_c4096

micro=${MICRO:-8} global=${GLOBAL:-16} warm=${WARMUP:-2} steps=${STEPS:-4} every=${SAVE_EVERY:-3}
baseline=$([ "${BASELINE:-1}" = 0 ] && echo --no-baseline)
run=$tmp/r7b
rm -rf "$run" "$run-resume"
echo "== 7B bench + CLI ($(( $(date +%s) - start )) s)"
bench() {  # MICRO_BATCH, then extra arguments
    timeout $(( $(left) - ${RESERVE:-150} )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch "$1" \
        --global-batch "$global" --warmup "$warm" --steps "$steps" --set model.compile=true --set model.attn=auto \
        --cli "$data" --cli-run "$run" --cli-set checkpoint.every="$every" --cli-set checkpoint.save_optimizer=false \
        --cli-set checkpoint.keep_last=2 --out "$out/train_7b_gemini_1gpu.json" "${@:2}" >> "$out/train_7b.log" 2>&1
}
bench "$micro" $baseline || { echo "FAILED: 7B bench at micro $micro (see train_7b.log)"
    grep -m1 -E "OutOfMemory|CUDA out of memory" "$out/train_7b.log" && [ "$micro" != "${FALLBACK_MICRO:-8}" ] \
    && { rm -rf "$run"; bench "${FALLBACK_MICRO:-8}" --no-baseline || echo "FAILED: fallback"; }; }
grep -v "^ " "$out/train_7b.log" | grep -iE "error|step |saved|tokens_per_s|ratio|cli|mfu" | tail -30
[ -d ~/.cache/colossalai ] && tar czf "$out/colossalai_ext.tgz" -C ~/.cache colossalai

echo "== 7B resume from step $every ($(( $(date +%s) - start )) s)"
first=$(printf '%s/checkpoints/step_%08d' "$run" "$every")
if [ -d "$first" ] && [ "$(left)" -gt 60 ]; then
    timeout $(( $(left) - 10 )) "$python" -m ominix train launch --config "$run/config.yaml" --out "$run-resume" \
        --nodes 1 --nproc-per-node 1 --resume "$first" --set checkpoint.keep_last=1 > "$out/resume_7b.log" 2>&1 \
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
echo "== done in $(( $(date +%s) - start )) s"
