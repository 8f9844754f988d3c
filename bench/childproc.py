"""What the benches share: ``childproc.run(argv)`` starts a measured command as a child process and
returns its wall time, exit status, output, peak RSS and CPU time; ``result_path`` names the one
current results file of a benchmark on a card.

Peak RSS is the kernel's ``ru_maxrss`` for that child from ``wait4``: the largest resident set of the
child and of the processes it waited for, so a CLI that runs its work in a subprocess is measured
too. Both output pipes are drained while the child runs (a child that writes more than a pipe holds,
a progress bar say, would otherwise block forever).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

GIB = 2**30
RESULTS = Path(__file__).resolve().parent / "results"
# NCCL's NVLink SHARP (multicast) paths fail on some H200 hosts; the product leaves these to the
# user's environment, so the benches that launch training set them unless already set.
GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def card_slug(card: str) -> str:
    """A card's name as results files spell it: ``NVIDIA H200`` -> ``h200``, ``cpu`` -> ``cpu``."""
    name = card.lower().removeprefix("nvidia ").strip()
    return "".join(c if c.isalnum() or c == "." else "_" for c in name)


def preset_size(preset: str) -> str:
    """The size part of a preset's name, as results files spell it: ``tinyllama-1.1b`` -> ``1.1b``."""
    name = Path(preset).name.removesuffix(".yaml").removesuffix(".yml")  # a config file: its name
    return name.rsplit("-", 1)[-1]


def result_path(stem: str, card: str) -> Path:
    """``bench/results/STEM_CARD.json``: where a benchmark writes unless ``--out`` says otherwise, so
    each benchmark keeps one current file per card and its history lives in git."""
    return RESULTS / f"{stem}_{card_slug(card)}.json"


def run(argv: list[str], env: dict | None = None, check: bool = True) -> dict:
    """Run ``argv`` (with ``env`` added to this environment); ``check``: a failure exits the bench
    with the command's output."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    output: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, pipe=pipe: output.__setitem__(name, pipe.read()))
               for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    for reader in readers:
        reader.join()
    stdout, stderr = (output[k].decode(errors="replace") for k in ("stdout", "stderr"))
    if check and proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return {"seconds": seconds, "rc": proc.returncode, "stdout": stdout, "stderr": stderr,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}
