#!/usr/bin/env bash
# Issue 17's open GPU questions, one STAGE per device call of under 10 minutes (1 x H200):
#   STAGE=grads   tests/gpu/test_compiled_gemini.py (every parameter's gradient, compiled region vs
#                 eager: fp32 alone, and under Gemini), then bench/loss_match.py at 1.1B for 100 steps
#                 with eager layers on both sides: the noise floor of the 0.02-nat bound
#   STAGE=cli     where the CLI's 8.7% at 1.1B goes: the bench fed the CLI's real data, and the CLI
#                 logging every 2 steps instead of every step, in one results file
#   STAGE=decode  three bench/decode.py runs and their median (bench/gpu_issue17.sh, EXPORT_7B=0)
#   STAGE=zero2cpu  llama2-7b under zero2_cpu (optimizer state on the host), micro 16
#   STAGE=profile the 1.1B bench and CLI on real data, then 2 more steps of each under torch.profiler
#                 (bench --profile 2): where the CLI's ~11% goes; then zero2cpu in the time left
#   STAGE=verify  after the logger and chunk-norm fixes (bench/NOTES.md sections 9, 11): the 1.1B bench
#                 and CLI again, profiled (THEN_7B=1: verify7b after it in the same call, in the time left)
#   STAGE=verify7b  llama2-7b micro 16 (the preset's step) after the chunk-norm fix, one more step profiled
#   STAGE=prefill three decode runs with the prompt as a CUDA graph (bench/decode.py --prefill-graphs,
#                 which times the eager prefill too), then tests/gpu/test_infer_gpu.py
#   STAGE=casts   the 200-step 1.1B loss match of section 8 with Inductor emulating eager's bf16 casts
#                 (TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1): is the compiled layers' +0.019 rounding?
#   STAGE=recheck after Gemini's reduce moved to the compute stream (bench/NOTES.md section 13): the 1.1B
#                 bench and CLI profiled, then verify7b (micro 16, which crashed on the side stream);
#                 THEN_TESTS=1: gputests in the time left
#   STAGE=cli7b   llama2-7b through the bench and `ominix train launch` at MICRO (default 8) x
#                 accumulation to 16 sequences per step, one results file (the preset's step on 1 GPU)
#   STAGE=gputests  tests/gpu/test_infer_gpu.py in one process, then the tests added on 2026-12-02: the
#                 chunk norm on any stream, a side-stream reduction holding its frees, Gemini training with it
#                 at static placement and (its default) at auto placement
#   STAGE=bisect  where the compiled layers' +0.019-nat offset comes from: the 200-step 1.1B loss match
#                 with the region traced but run by eager kernels (--compile-backend aot_eager: tracing
#                 and hooks, no fusion), then eager against eager with cuDNN attention on one side
#                 (another kernel's rounding, the same math: is 0.02 within reach of any kernel change?)
#   STAGE=bisect2 the same with only parameter-free ops compiled (compile_scope=ops)
#   STAGE=seeds   the 200-step 1.1B loss match for each seed in SEEDS (default "7 1234"), each with the
#                 plain run trained twice (--control: the floor of the same code run again; CONTROL=0
#                 leaves it out), one results file per seed for `loss_match.py --combine`; a seed
#                 starts only with the time for its runs left
#   STAGE=selective  llama2-7b with selective checkpointing (matmul and attention outputs kept) at
#                 MICRO (default 2) x accumulation to 16 sequences per step; micro 1 if that runs out
#                 of memory (bench/NOTES.md section 14 has the memory arithmetic)
#   STAGE=asyncreduce  Gemini's reduction back on its side stream, its frees now held until the stream
#                 has read the chunk (parallel.gemini_async_reduce=true, shims.frees_after_reads): the
#                 stream tests, the 1.1B bench and CLI profiled, then 7B micro 16 in the time left
#   STAGE=bigbatch  one side (SIDE=plain|optimised) of the 200-step 1.1B loss match at GLOBAL (default
#                 24) sequences per step, seed SEED (default 7); a second plain run (TAG=_2) is the
#                 control. 200 eager steps at 24 take ~7.5 minutes here (32 would not fit a call).
#                 Then, here: loss_match.py --pair PLAIN OPTIMISED (and PLAIN PLAIN_2)
#                 CORPUS=src: on the source corpus instead (bench/source_corpus.py; carry .corpus), which
#                 a 200-step run at 24 sees once (21.8M training tokens), where the embedded one is seen
#                 ~53 times; its files are named loss_match_1.1b_gemini_src_g24_...
#                 STOP=N: stop the side after N of its 200 steps, on the 200-step schedule (loss_match.py
#                 --stop-after), e.g. the control through the plateau at step ~35 in a short call.
#                 A side the call's time cuts stops 30 s before it (--time-limit) and writes its steps
#   STAGE=levers7b  the two routes to 7B at 50% in one call: selective checkpointing (STAGE=selective),
#                 then 7B micro 16 with the reduction on its side stream, then (time left) the 1.1B
#                 bench and CLI with it; the stream tests run in STAGE=gputests
#   STAGE=base7b  llama2-7b micro MICRO (default 8) against the transformers model through the same
#                 plugin, each in its own process, after Gemini's reduce moved to the compute stream;
#                 then the GPU infer tests (THEN_TESTS=1)
# Carry .whl and .ext (the JIT-built ColossalAI kernels that bench/gpu_issue17_7b.sh returns).
#   OUT=/path STAGE=grads bash bench/gpu_issue17_next.sh
cd "$(dirname "$0")/.."
source bench/gpu_common.sh
prepare_c4096
# The 1.1B preset's step (micro 4 x 8) through the bench and the CLI on real data, 4 timed steps, then
# 2 profiled per side: results in $out/$1.json, the log in $out/$2.log
profiled_1b() {  # $3...: more --set options for both sides
    local name=$1 log=$2; shift 2
    timeout 330 "$python" bench/train_throughput.py tinyllama-1.1b --plugin gemini --micro-batch 4 --global-batch 32 \
        --warmup 2 --steps 4 --profile 2 --no-baseline --set model.compile=true "$@" --data "$data" --cli "$data" \
        --cli-set checkpoint.save_optimizer=false --profile-dir "$out/profile" --out "$out/$name.json" > "$out/$log.log" 2>&1
    grep -E 'profiled|"(value|cli|cli_vs_bench)"' "$out/$log.log"
}
case "${STAGE:?set STAGE=grads|cli|decode|zero2cpu|profile|verify|verify7b|casts|prefill|recheck|cli7b|gputests|bisect|bisect2|seeds|base7b|selective|asyncreduce|levers7b|bigbatch}" in
seeds)
    control=$([ "${CONTROL:-1}" = 1 ] && echo --control)
    for seed in ${SEEDS:-7 1234}; do
        [ "$(left)" -lt "$([ -n "$control" ] && echo 360 || echo 240)" ] && { echo "seed $seed: not started, $(left) s left"; continue; }
        timeout $(( $(left) - 5 )) "$python" bench/loss_match.py --preset tinyllama-1.1b --data "$data" \
            --plugin gemini --steps 200 --tol 0.02 --seed "$seed" $control --set schedule.global_batch_size=4 \
            --set schedule.micro_batch_size=4 --set schedule.warmup_steps=20 --set checkpoint.save_optimizer=false \
            --out "$out/loss_match_1.1b_gemini_seed${seed}_h200.json" > "$out/loss_match_seed$seed.log" 2>&1
        grep -E '"(value|last10_mean_loss_diff|ok)"' "$out/loss_match_1.1b_gemini_seed${seed}_h200.json"
    done
    (cd "$out" && tar czf logs.tgz ./*.log && rm ./*.log) ;;
selective)
    for micro in ${MICRO:-2} 1; do
        [ "$(left)" -lt 200 ] && break
        timeout $(( $(left) - 10 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch "$micro" \
            --global-batch 16 --warmup 1 --steps 2 --no-baseline --set model.compile=true --set model.attn=auto \
            --set model.checkpoint_policy=selective --out "$out/train_7b_gemini_1gpu_selective_micro${micro}_h200.json" \
            > "$out/selective$micro.log" 2>&1
        grep -E '"(value|mfu|peak_mem_gib)"|Error' "$out/selective$micro.log" | tail -4
        grep -q "OutOfMemoryError\|out of memory" "$out/selective$micro.log" || break
    done ;;
bigbatch)
    side=${SIDE:?set SIDE=plain or optimised}; global=${GLOBAL:-24}; seed=${SEED:-7}; corpus=
    if [ "${CORPUS:-embedded}" = src ]; then  # the embedded corpus's tokenizer, so both corpora share the ids
        [ -d "$tmp/src4096" ] || "$python" -m ominix data prepare .corpus/src.jsonl.zst --tokenizer "$data/tokenizer" \
            --seq-len 4096 --val-fraction 0.02 --out "$tmp/src4096" > "$out/prepare_src.log" 2>&1 \
            || { tail "$out/prepare_src.log"; exit 1; }
        data=$tmp/src4096 corpus=src_
    fi
    timeout $(( $(left) - 5 )) "$python" bench/loss_match.py --preset tinyllama-1.1b --data "$data" --plugin gemini \
        --steps 200 --tol 0.02 --seed "$seed" --side "$side" --set schedule.global_batch_size="$global" \
        --set schedule.micro_batch_size=4 --set schedule.warmup_steps=20 --set checkpoint.save_optimizer=false \
        --time-limit $(( $(left) - 30 )) ${STOP:+--stop-after "$STOP"} --out "$out/loss_match_1.1b_gemini_${corpus}g${global}_seed${seed}_${side}${TAG:-}${STOP:+_first$STOP}_h200.json" \
        > "$out/bigbatch.log" 2>&1
    echo "rc $? after $(( ${BUDGET:-575} - $(left) )) s"; tail -4 "$out/bigbatch.log"; pack_ext ;;
levers7b)
    STAGE=selective BUDGET=$(( $(left) < 320 ? $(left) : 320 )) bash "$0"
    if [ "$(left)" -gt 200 ]; then
        timeout $(( $(left) - 10 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch 16 \
            --warmup 1 --steps 2 --no-baseline --set model.compile=true --set model.attn=auto \
            --set parallel.gemini_async_reduce=true --out "$out/train_7b_gemini_1gpu_micro16_asyncreduce_h200.json" \
            > "$out/asyncreduce7b.log" 2>&1
        grep -E '"(value|mfu|peak_mem_gib)"|Error' "$out/asyncreduce7b.log" | tail -4
    fi
    [ "$(left)" -gt 200 ] && profiled_1b train_1.1b_cli_vs_bench_asyncreduce_h200 asyncreduce \
        --set parallel.gemini_async_reduce=true
    (cd "$out" && tar czf logs.tgz ./*.log && rm ./*.log) ;;
asyncreduce)
    timeout 120 "$python" -m pytest -q -rA --tb=short -m gpu tests/gpu/test_train_gpu.py -k "side_stream or any_stream" \
        -p no:cacheprovider > "$out/streamtests.txt" 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$out/streamtests.txt"
    profiled_1b train_1.1b_cli_vs_bench_asyncreduce_h200 asyncreduce --set parallel.gemini_async_reduce=true
    [ "$(left)" -gt 240 ] && timeout $(( $(left) - 10 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini \
        --micro-batch 16 --warmup 1 --steps 2 --no-baseline --set model.compile=true --set model.attn=auto \
        --set parallel.gemini_async_reduce=true --out "$out/train_7b_gemini_1gpu_micro16_asyncreduce_h200.json" \
        > "$out/asyncreduce7b.log" 2>&1 && grep -E '"(value|mfu|peak_mem_gib)"|Error' "$out/asyncreduce7b.log" | tail -4
    (cd "$out" && tar czf logs.tgz ./*.log && rm ./*.log) ;;
base7b)
    micro=${MICRO:-8}  # 16: the preset's own micro batch (the baseline's peak at 8 was 112.8 GiB)
    timeout $(( $(left) < 450 ? $(left) - 10 : 440 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini \
        --micro-batch "$micro" --warmup 1 --steps 2 --set model.compile=true --set model.attn=auto \
        --out "$out/train_7b_gemini_1gpu_micro${micro}_vs_baseline_syncreduce_h200.json" > "$out/base7b.log" 2>&1
    grep -E '"(value|mfu|baseline|ratio|peak_mem_gib)"|Error' "$out/base7b.log" | tail -8
    [ "${THEN_TESTS:-0}" = 1 ] && [ "$(left)" -gt 60 ] && STAGE=gputests BUDGET=$(( $(left) - 5 )) bash "$0" ;;
recheck)
    profiled_1b train_1.1b_cli_vs_bench_syncreduce_h200 recheck
    NAME7B=train_7b_gemini_1gpu_micro16_syncreduce_h200 STAGE=verify7b BUDGET=$(( $(left) - 10 )) bash "$0"
    [ "${THEN_TESTS:-0}" = 1 ] && [ "$(left)" -gt 60 ] && STAGE=gputests BUDGET=$(( $(left) - 5 )) bash "$0"
    (cd "$out" && tar czf logs.tgz ./*.log && rm ./*.log) ;;  # the device returns 8 files at most
cli7b)
    micro=${MICRO:-8}
    timeout $(( $(left) - 10 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch "$micro" \
        --global-batch 16 --warmup 1 --steps 3 --no-baseline --set model.compile=true --set model.attn=auto \
        --cli "$data" --cli-set checkpoint.save_optimizer=false --cli-set checkpoint.every=0 \
        --out "$out/train_7b_gemini_1gpu_micro${micro}_cli_h200.json" > "$out/cli7b.log" 2>&1
    grep -E '"(value|cli|cli_vs_bench|mfu|cli_mfu|peak_mem_gib)"|Error' "$out/cli7b.log" | tail -12 ;;
bisect|bisect2)
    variants=$([ "$STAGE" = bisect ] && echo "aot_eager eager_cudnn" || echo ops)
    for variant in $variants; do
        case $variant in
        aot_eager) extra="--compile-backend aot_eager" ;;
        eager_cudnn) extra="--set model.compile=false --set model.loss_chunk=0 --optimised-set model.attn=cudnn" ;;
        ops) extra="--set model.compile_scope=ops" ;;
        esac
        timeout $(( $(left) < 290 ? $(left) - 5 : 285 )) "$python" bench/loss_match.py --preset tinyllama-1.1b \
            --data "$data" --plugin gemini --steps 200 --tol 0.02 --set schedule.global_batch_size=4 \
            --set schedule.micro_batch_size=4 --set schedule.warmup_steps=20 --set checkpoint.save_optimizer=false \
            $extra --out "$out/loss_match_1.1b_gemini_${variant}_h200.json" > "$out/loss_match_$variant.log" 2>&1
        grep -E '"(value|last10_mean_loss_diff|max_abs_diff|ok)"' "$out/loss_match_1.1b_gemini_${variant}_h200.json"
    done ;;
gputests)
    timeout $(( $(left) - 10 )) "$python" -m pytest -q -rA --tb=short -m gpu tests/gpu/test_infer_gpu.py \
        tests/gpu/test_train_gpu.py::test_chunk_norm_stays_on_the_device_on_any_stream \
        tests/gpu/test_train_gpu.py::test_a_chunk_reduced_on_a_side_stream_is_not_reused_while_the_stream_reads_it \
        "tests/gpu/test_train_gpu.py::test_plugin_trains_and_resumes_on_gpu[gemini-1gpu-gemini_async_reduce]" \
        "tests/gpu/test_train_gpu.py::test_plugin_trains_and_resumes_on_gpu[gemini_auto-1gpu-default]" -p no:cacheprovider \
        > "$out/gputests.txt" 2>&1; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$out/gputests.txt" | tail -20 ;;
grads)
    timeout 300 "$python" -m pytest -q -m gpu tests/gpu/test_compiled_gemini.py -s -p no:cacheprovider \
        > "$out/compiled_gemini_grads.txt" 2>&1; grep -E "relative error|passed|failed|skipped" "$out/compiled_gemini_grads.txt"
    timeout 270 "$python" bench/loss_match.py --preset tinyllama-1.1b --data "$data" --plugin gemini --steps 100 \
        --tol 0.02 --set schedule.global_batch_size=4 --set schedule.micro_batch_size=4 --set schedule.warmup_steps=20 \
        --set checkpoint.save_optimizer=false --set model.compile=false --set model.loss_chunk=0 \
        --out "$out/loss_match_1.1b_eager_both_h200.json" > "$out/loss_match.log" 2>&1
    grep -E '"(value|last10_mean_loss_diff|ok)"' "$out/loss_match_1.1b_eager_both_h200.json" ;;
cli)
    timeout 560 "$python" bench/train_throughput.py tinyllama-1.1b --plugin gemini --micro-batch 4 --global-batch 32 \
        --warmup 2 --steps 6 --no-baseline --set model.compile=true --data "$data" --cli "$data" \
        --cli-set logging.log_every=2 --out "$out/train_1.1b_cli_vs_bench_realdata_h200.json" > "$out/cli.log" 2>&1
    grep -E '"(value|cli|cli_vs_bench)"' "$out/train_1.1b_cli_vs_bench_realdata_h200.json" ;;
decode)
    EXPORT_7B=0 bash bench/gpu_issue17.sh ;;
verify)
    profiled_1b train_1.1b_cli_vs_bench_fixed_h200 verify
    [ "${THEN_7B:-0}" = 1 ] && STAGE=verify7b BUDGET=$(( $(left) - 10 )) bash "$0" ;;
verify7b)
    timeout $(( $(left) < 560 ? $(left) : 560 )) "$python" bench/train_throughput.py llama2-7b --plugin gemini --micro-batch 16 --warmup 1 --steps 2 \
        --profile 1 --no-baseline --set model.compile=true --set model.attn=auto --profile-dir "$out/profile" \
        --out "$out/${NAME7B:-train_7b_gemini_1gpu_micro16_fixed_h200}.json" > "$out/verify7b.log" 2>&1
    grep -E 'profiled|"(value|mfu|peak_mem_gib)"' "$out/verify7b.log" ;;
prefill)
    EXPORT_7B=0 DECODE_ARGS=--prefill-graphs bash bench/gpu_issue17.sh | tail -25
    timeout $(( $(left) - 10 )) "$python" -m pytest -q -m gpu tests/gpu/test_infer_gpu.py -p no:cacheprovider 2>&1 | tail -5 ;;
casts)
    TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1 timeout 560 "$python" bench/loss_match.py --preset tinyllama-1.1b \
        --data "$data" --plugin gemini --steps 200 --tol 0.02 --set schedule.global_batch_size=4 \
        --set schedule.micro_batch_size=4 --set schedule.warmup_steps=20 --set checkpoint.save_optimizer=false \
        --out "$out/loss_match_1.1b_gemini_casts_h200.json" > "$out/loss_match_casts.log" 2>&1
    grep -E '"(value|last10_mean_loss_diff|max_abs_diff|ok)"' "$out/loss_match_1.1b_gemini_casts_h200.json" ;;
profile)
    profiled_1b train_1.1b_cli_vs_bench_profiled_h200 profile
    cat "$out"/profile/*/steps_*.json
    STAGE=zero2cpu BUDGET=$(( $(left) - 15 )) bash "$0" ;;
zero2cpu)
    timeout $(( $(left) < 560 ? $(left) : 560 )) "$python" bench/train_throughput.py llama2-7b --plugin zero2_cpu --micro-batch 16 --warmup 1 --steps 2 \
        --no-baseline --set model.compile=true --set model.attn=auto --out "$out/train_7b_zero2cpu_1gpu_h200.json" \
        > "$out/zero2cpu.log" 2>&1
    grep -E '"(value|mfu|peak_mem_gib)"|Error' "$out/zero2cpu.log" | tail -5 ;;
esac
pack_profiles
