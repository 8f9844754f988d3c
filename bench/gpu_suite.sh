#!/usr/bin/env bash
# Issue 8's GPU comparison, section by section (each fits one 10-minute device call):
#   bash bench/gpu_suite.sh scaling      1.1B gemini on 1, 2, 4 GPUs (weak scaling) + zero2 on 1 GPU
#   bash bench/gpu_suite.sh 7b-gemini    LLaMA-2 7B, seq 4096, 16 per GPU, checkpointing, all GPUs
#   bash bench/gpu_suite.sh 7b-zero2     the same through zero2
#   bash bench/gpu_suite.sh 7b-3d        the same through 3d with tp=2
# Every run measures OminiX and its same-run baseline (bench/train_throughput.py) and writes
# bench/results/train_<shape>_<plugin>_<N>gpu_<card>.json (RESULTS=dir to write elsewhere).
set -uo pipefail
cd "$(dirname "$0")/.."
gpus=$(nvidia-smi -L | wc -l)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z_' | sed 's/^nvidia_//')
results=${RESULTS:-bench/results}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

run() {  # run N PRESET NAME ARGS...
    local n=$1 preset=$2 name=$3; shift 3
    echo "== $name on $n GPU(s)"
    python bench/train_throughput.py "$preset" --nproc-per-node "$n" --set model.compile=true "$@" \
        --out "$results/train_${name}_${n}gpu_${card}.json" || echo "FAILED: $name on $n GPU(s)"
}

seven_b() {  # flash-attn is optional: auto falls back to SDPA's flash backend
    run "$gpus" llama2-7b "7b_$1" --micro-batch 16 --set model.attn=auto --warmup 2 --steps 5 --plugin "$@"
}

case "${1:-}" in
    scaling)
        for n in 1 2 4; do
            [ "$n" -le "$gpus" ] && run "$n" tinyllama-1.1b 1.1b_gemini --micro-batch 4 --plugin gemini
        done
        run 1 tinyllama-1.1b 1.1b_zero2 --micro-batch 4 --plugin zero2 ;;
    7b-gemini) seven_b gemini ;;
    7b-zero2) seven_b zero2 ;;
    7b-3d) seven_b 3d --set parallel.tp=2 ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
esac
