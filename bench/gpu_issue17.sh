#!/usr/bin/env bash
# Issue 17's single-GPU measurements that fit ONE device call of under 10 minutes on one H200:
#   1. decode: three runs of bench/decode.py (tinyllama-1.1b shape, bf16), each in its own process,
#      and their median (tokens/s, fraction of the bandwidth limit, prefill);
#   2. the 7B streaming export: a random-init llama2-7b checkpoint in bf16 written in OminiX's
#      checkpoint format, then `ominix checkpoint export` (bf16, verified layer by layer), its peak
#      RSS and wall time (bench/export_memory.py; bound 0.5 x weights + 1 GiB), and loading it for
#      infer (bf16 on the CPU: the model plus one tensor).
# Writes $OUT/decode_run{1,2,3}.json, $OUT/decode_median.json, $OUT/export_memory_7b.json and logs.
#   OUT=/path bash bench/gpu_issue17.sh        (the device runner sets OUT)
#   EXPORT_7B=0 bash bench/gpu_issue17.sh      (decode only)
#   DECODE_ARGS=--prefill-graphs ...            (extra bench/decode.py options)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python}
tmp=${TMPDIR:-/tmp}
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
free -g | head -2; df -h "$tmp" | tail -1

for i in 1 2 3; do  # ~1.5 min each: export + compile + 3 timed runs + transformers
    echo "== decode run $i ($(( $(date +%s) - start )) s)"
    timeout 170 "$python" bench/decode.py ${DECODE_ARGS:-} --out "$out/decode_run$i.json" > "$out/decode_run$i.log" 2>&1 \
        || echo "FAILED: decode run $i (see decode_run$i.log)"
    tail -3 "$out/decode_run$i.log"
done
"$python" - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("decode_run*.json"))]
if runs:
    keys = ("value", "fraction_of_bandwidth_limit", "ominix_prefill_ms", "ominix_prefill_eager_ms", "baseline",
            "bandwidth_limit")
    med = {k: statistics.median(r[k] for r in runs) for k in keys if all(r.get(k) is not None for r in runs)}
    result = {**{k: runs[0][k] for k in ("name", "card", "date", "unit")},
              "command": "bash bench/gpu_issue17.sh (3 x python bench/decode.py)", "runs": len(runs), **med,
              "per_run": [{k: r.get(k) for k in keys} for r in runs]}
    (out / "decode_median.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
PY

if [ "${EXPORT_7B:-1}" = 0 ]; then echo "== done in $(( $(date +%s) - start )) s (7B export skipped: EXPORT_7B=0)"; exit 0; fi
echo "== 7B streaming export ($(( $(date +%s) - start )) s)"
# make the checkpoint on the GPU (random init in seconds), export on the host as a user would
timeout $(( 570 - ($(date +%s) - start) )) "$python" bench/export_memory.py --preset llama2-7b --dtype bf16 \
    --export-dtype bf16 --device cuda --shard-gb 5 --load bf16 --load-device cuda --tmp "$tmp" \
    --out "$out/export_memory_7b.json" \
    > "$out/export_memory_7b.log" 2>&1 || echo "FAILED or over the bound: 7B export (see export_memory_7b.log)"
tail -40 "$out/export_memory_7b.log"
echo "== done in $(( $(date +%s) - start )) s"
