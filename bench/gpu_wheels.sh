#!/usr/bin/env bash
# The wheels a GPU node without a package registry lacks, built here (a machine with one) into .whl/
# (git-ignored) to copy to the node with the checkout; there `bash bench/gpu_node.sh setup` installs
# them ahead of the node's own packages. The versions are the ones this checkout's .venv resolved
# (make install), so both machines run the same transformers, tokenizers and pydantic; the node
# brings torch. PYVER (default 3.12) is the node's Python. bitsandbytes is there only because
# ColossalAI's optimizer package imports galore-torch, which imports it: its wheel keeps just the
# CPU and CUDA 13 libraries, to keep .whl/ small (about 31 MiB).
#   bash bench/gpu_wheels.sh         (after make install; seconds with a warm pip cache)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
dest=.whl
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf "$dest" && mkdir -p "$dest"
binary=(--only-binary=:all: --no-deps --python-version "${PYVER:-3.12}" --implementation cp --platform manylinux_2_28_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform any -d "$dest")
pkgs=()
for p in transformers tokenizers huggingface-hub pydantic pydantic-core annotated-types typing-inspection \
    zstandard galore-torch peft bitsandbytes; do
    pkgs+=("$p==$(version "$p")")
done
"$py" -m pip download -q "${binary[@]}" "${pkgs[@]}"
# torchao: model.fp8 (the fp8 extra); 0.17.0 is the release built against torch 2.11
"$py" -m pip download -q "${binary[@]}" "torchao==0.17.0"
"$py" -m pip wheel -q --no-deps -w "$dest" "colossalai==$(version colossalai)"
# bitsandbytes: drop the libraries of the CUDA versions other than 13
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
