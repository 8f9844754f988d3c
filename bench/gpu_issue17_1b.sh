#!/usr/bin/env bash
# Issue 17's 1.1B measurements on one H200, in ONE device call of under 10 minutes:
#   1. bench/train_throughput.py tinyllama-1.1b under gemini (compiled layers, micro batch 4): one
#      micro batch per step, as measured before;
#   2. the preset's step (micro 4 x accumulation 8) in the bench and through `ominix train launch` on
#      the prepared embedded corpus, in one results file (cli_vs_bench);
#   3. bench/loss_match.py: 200 bf16 steps of the 1.1B shape on that data, compiled layers + chunked
#      loss against eager layers + the unfused loss (mean |diff| <= 0.02 nats).
# Writes $OUT/train_1.1b_*.json, $OUT/loss_match_1.1b.json and logs.
#   OUT=/path bash bench/gpu_issue17_1b.sh        (the device runner sets OUT)
cd "$(dirname "$0")/.."
source bench/gpu_common.sh
rm -rf "$tmp/r7b" "$tmp/r7b-resume"  # a warm machine still holds the 7B call's checkpoints
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
prepare_c4096

echo "== 1.1B bench, one micro batch per step ($(( $(date +%s) - start )) s)"
[ "${MICRO4:-1}" = 0 ] || timeout 150 "$python" bench/train_throughput.py tinyllama-1.1b --plugin gemini --micro-batch 4 --no-baseline \
    --out "$out/train_1.1b_gemini_1gpu_micro4.json" > "$out/train_1.1b_micro4.log" 2>&1 || echo "FAILED (see train_1.1b_micro4.log)"
grep -E '"(value|mfu|peak_mem_gib)"' "$out/train_1.1b_gemini_1gpu_micro4.json" 2>/dev/null | head -3

echo "== 1.1B bench + CLI, micro 4 x accumulation 8 ($(( $(date +%s) - start )) s)"
timeout 230 "$python" bench/train_throughput.py tinyllama-1.1b --plugin gemini --micro-batch 4 --global-batch 32 \
    --warmup 2 --steps 6 --no-baseline --cli "$data" \
    --out "$out/train_1.1b_gemini_1gpu_cli_vs_bench.json" > "$out/train_1.1b_cli.log" 2>&1 || echo "FAILED (see train_1.1b_cli.log)"
grep -E '"(value|mfu|cli|cli_mfu|cli_vs_bench)"' "$out/train_1.1b_gemini_1gpu_cli_vs_bench.json" 2>/dev/null

echo "== 1.1B loss match, 200 steps ($(( $(date +%s) - start )) s)"
timeout $(( $(left) - 5 )) "$python" bench/loss_match.py --preset tinyllama-1.1b --data "$data" --plugin gemini \
    --steps 200 --tol 0.02 --set schedule.global_batch_size=4 --set schedule.micro_batch_size=4 \
    --set schedule.warmup_steps=20 --set checkpoint.save_optimizer=false --out "$out/loss_match_1.1b_gemini_h200.json" > "$out/loss_match.log" 2>&1 \
    || echo "FAILED or over the tolerance (see loss_match.log)"
grep -E '"(value|last10_mean_loss_diff|max_abs_diff|ok)"' "$out/loss_match_1.1b_gemini_h200.json" 2>/dev/null
echo "== done in $(( $(date +%s) - start )) s"
