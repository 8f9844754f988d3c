# Sourced by the bench/gpu_*.sh scripts (from the repository root): what every GPU call sets up.
#   out      where results go ($OUT, which the device runner sets; else bench/results)
#   python   the interpreter ($PYTHON; default python)
#   tmp      scratch space ($TMPDIR; default /tmp)
#   left     seconds left of the call's budget ($BUDGET, default 575 s, counted from sourcing)
#   prepare_c4096   the embedded corpus at seq 4096 (a trained BPE of 8,192 ids) in $tmp/c4096
# NCCL's NVLink multicast switches are set off: they fail on the H200 hosts measured here. The
# JIT-built ColossalAI kernels come from .ext/colossalai_ext.tgz when a call carries them.
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python}
tmp=${TMPDIR:-/tmp}
start=$(date +%s)
left() { echo $(( ${BUDGET:-575} - ($(date +%s) - start) )); }
# The kernels' sources are dated back after unpacking: pip --target has just written them, and ninja
# builds an output again when an input is newer than the output's record in its build log (~100 s a
# call, seen 2026-12-02; touching the outputs does not help, the log keeps their build time).
if [ -f .ext/colossalai_ext.tgz ] && [ ! -d ~/.cache/colossalai ]; then
    mkdir -p ~/.cache && tar xzf .ext/colossalai_ext.tgz -C ~/.cache
    kernels=$("$python" -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('colossalai').origin))" 2>/dev/null)
    [ -d "$kernels/kernel/extensions" ] && find "$kernels/kernel/extensions" -type f -exec touch -d 2000-01-01 {} +
fi
# A call that came without .ext returns the kernels it built, to carry to later calls as .ext/
pack_ext() {
    [ -f .ext/colossalai_ext.tgz ] || [ ! -d ~/.cache/colossalai ] || tar czf "$out/colossalai_ext.tgz" -C ~/.cache colossalai
}
data=$tmp/c4096
prepare_c4096() {
    [ -d "$data" ] || "$python" -m ominix data prepare @embedded --train-tokenizer --vocab-size 8192 --seq-len 4096 \
        --val-fraction 0.1 --out "$data" > "$out/prepare.log" 2>&1 || { tail "$out/prepare.log"; exit 1; }
}
# The device returns at most 8 files: pack $out/profile (traces and summaries, from --profile) into
# one profiles.tgz, keep each summary beside it as profile_SIDE_STEPS.json, and drop prepare.log.
pack_profiles() {
    [ -d "$out/profile" ] || return 0
    for f in "$out"/profile/*/steps_*.json; do
        [ -f "$f" ] && cp "$f" "$out/profile_$(basename "$(dirname "$f")")_$(basename "$f")"
    done
    tar czf "$out/profiles.tgz" -C "$out" profile && rm -rf "$out/profile" "$out/prepare.log"
}
