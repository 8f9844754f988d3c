#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, built here into .whl/ (git-ignored) to carry to every device
# call. That machine has Python 3.12, torch 2.11 (CUDA 13), no registry, and transformers 5.17, under
# which ColossalAI's lazy init breaks; these wheels go on its PYTHONPATH ahead of the image's packages:
#   pip install -q --no-deps --no-index --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD
# The versions are the ones this checkout's .venv resolved (make install), so both machines run the
# same transformers, tokenizers and pydantic. bitsandbytes is imported only because ColossalAI's
# optimizer package imports galore-torch, which imports it: its wheel keeps just the CPU and CUDA 13
# libraries (the carry limit is 64 MiB in all).
#   bash bench/gpu_wheels.sh         (after make install; seconds with a warm pip cache)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
dest=.whl
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf "$dest" && mkdir -p "$dest"
binary=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform any -d "$dest")
pkgs=()
for p in transformers tokenizers huggingface-hub pydantic pydantic-core annotated-types typing-inspection \
    zstandard galore-torch peft bitsandbytes; do
    pkgs+=("$p==$(version "$p")")
done
"$py" -m pip download -q "${binary[@]}" "${pkgs[@]}"
# torchao: model.fp8 (the fp8 extra); 0.17.0 is the release built against the machine's torch 2.11
"$py" -m pip download -q "${binary[@]}" "torchao==0.17.0"
"$py" -m pip wheel -q --no-deps -w "$dest" "colossalai==$(version colossalai)"
# bitsandbytes: drop the libraries of the CUDA versions the machine does not have
bnb=$(ls "$dest"/bitsandbytes-*.whl)
"$py" - "$bnb" <<'EOF'
import re, sys, zipfile, os
path = sys.argv[1]
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
tmp = path + ".tmp"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
    for item in src.infolist():
        name = item.filename
        if name.endswith(".so") and "libbitsandbytes_" in name and not keep.search(name):
            continue
        out.writestr(item, src.read(name))
os.replace(tmp, path)
EOF
du -sh "$dest"; ls "$dest"
