#!/usr/bin/env bash
# A GPU node without a package registry: install what this checkout built for it, run the GPU tests
# and the throughput comparison. Run from anywhere; paths are relative to the repository root.
#   bash bench/gpu_wheels.sh                  first, on a machine with a registry: the wheels into .whl/
#   bash bench/gpu_node.sh setup [SITE]       on the node: .whl/*.whl into SITE (default .site), and the
#                                             ColossalAI kernels of .ext/colossalai_ext.tgz if carried
#   bash bench/gpu_node.sh kernels [FILE]     pack the kernels ColossalAI built here (default
#                                             .ext/colossalai_ext.tgz), so the next node skips the build
#   bash bench/gpu_node.sh tests [FILE] [PYTEST ARGS...]
#                                             tests/gpu; the record in FILE (default
#                                             bench/results/gpu_tests_CARD.txt)
#   bash bench/gpu_node.sh throughput scaling|7b-gemini|7b-zero2|7b-3d
#                                             bench/train_throughput.py with its same-run baseline:
#                                             1.1B on 1, 2, 4 GPUs + zero2; or LLaMA-2 7B on every GPU
# SITE is put first on PYTHONPATH when it exists (SITE=DIR to use another). NCCL's NVLink multicast
# is switched off unless set: it fails on some H200 hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${SITE:-.site}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1} PYTHONUNBUFFERED=1
python=${PYTHON:-python}
card() { nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z_' | sed 's/^nvidia_//'; }
use_site() { [ -d "$site" ] && export PYTHONPATH=$PWD/$site:$PWD${PYTHONPATH:+:$PYTHONPATH} || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; }

setup() {
    site=${1:-$site}
    "$python" -m pip install -q --no-deps --no-index --target "$site" .whl/*.whl
    if [ -f .ext/colossalai_ext.tgz ]; then
        mkdir -p ~/.cache && tar xzf .ext/colossalai_ext.tgz -C ~/.cache
        # pip --target has just written the kernels' sources, and ninja rebuilds an output whose input
        # is newer than its build log's record (~100 s): date the sources back
        use_site
        local ext
        ext=$("$python" -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('colossalai').origin))")
        [ -d "$ext/kernel/extensions" ] && find "$ext/kernel/extensions" -type f -exec touch -d 2000-01-01 {} +
    fi
    echo "export PYTHONPATH=$PWD/$site:$PWD"
}

kernels() {
    local file=${1:-.ext/colossalai_ext.tgz}
    [ -d ~/.cache/colossalai ] || { echo "no kernels built here (~/.cache/colossalai)" >&2; exit 2; }
    mkdir -p "$(dirname "$file")" && tar czf "$file" -C ~/.cache colossalai && echo "$file"
}

tests() {
    local file=${1:-bench/results/gpu_tests_$(card).txt}
    shift || true
    use_site
    mkdir -p "$(dirname "$file")"
    { echo "# tests/gpu on $(nvidia-smi -L | wc -l) x $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1), $(date -u +%F)"
      echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
      "$python" -m pytest -q -m gpu -rA tests/gpu "$@" 2>&1 | grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed'
    } | tee "$file"
}

throughput() {
    use_site
    local gpus
    gpus=$(nvidia-smi -L | wc -l)
    run() {  # run N PRESET ARGS...: OminiX against transformers' LLaMA through the same plugin
        local n=$1 preset=$2; shift 2
        "$python" bench/train_throughput.py "$preset" --nproc-per-node "$n" "$@" || echo "FAILED: $preset on $n GPU(s) $*"
    }
    seven_b() {  # flash-attn is optional: auto falls back to SDPA's flash kernel
        run "$gpus" llama2-7b --micro-batch 16 --set model.attn=auto --warmup 2 --steps 5 --plugin "$@"
    }
    case "${1:-}" in
        scaling)
            for n in 1 2 4; do
                [ "$n" -le "$gpus" ] && run "$n" tinyllama-1.1b --micro-batch 4 --plugin gemini
            done
            run 1 tinyllama-1.1b --micro-batch 4 --plugin zero2 ;;
        7b-gemini) seven_b gemini ;;
        7b-zero2) seven_b zero2 ;;
        7b-3d) seven_b 3d --set parallel.tp=2 ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
}

case "${1:-}" in
    setup|kernels|tests|throughput) cmd=$1; shift; "$cmd" "$@" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
