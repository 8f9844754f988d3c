"""One way for the benches to run a measured command: ``childproc.run(argv)`` starts it as a child process and
returns its wall time, exit status, output, peak RSS and CPU time.

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

GIB = 2**30


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
