"""Profile a window of training steps (``logging.profile_steps: [FIRST, LAST]``, rank 0).

The window runs under ``torch.profiler`` with the loop's phases named (``data``, ``forward``,
``backward``, ``optimizer``, ``log``), and leaves two files in RUN_DIR/profile/:

    steps_FIRST-LAST.trace.json.gz   Chrome trace (chrome://tracing, Perfetto, TensorBoard's profiler)
    steps_FIRST-LAST.json            the summary: wall time, how much of it the GPU was busy, and
                                     the host's time in each phase

"GPU busy" is the union of kernel and copy intervals over the window's wall time: where it is far
below 100%, the GPU waited for the host (syncs, data, Python), and the phases say where the host was.
Outside the window the phases cost nothing (no profiler, no annotation).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
PHASES = ("data", "forward", "backward", "optimizer", "log")


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarize(trace: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """GPU busy time and the host's time per phase from a Chrome trace (times in microseconds)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_CATEGORIES]
    busy = busy_seconds(gpu) / 1e6
    phases = {name: 0.0 for name in PHASES}
    for e in events:
        if e.get("cat") == "user_annotation" and e.get("name") in phases:
            phases[e["name"]] += e["dur"] / 1e6
    measured = bool(gpu) and wall_s > 0  # no GPU events: a CPU run, nothing to say of a GPU
    return {"wall_s": round(wall_s, 4), "gpu_busy_s": round(busy, 4) if gpu else None,
            "gpu_busy_fraction": round(busy / wall_s, 4) if measured else None,
            "gpu_kernels": sum(e.get("cat") == "kernel" for e in events),
            "host_phase_s": {k: round(v, 4) for k, v in phases.items()}}


class StepProfiler:
    """Profiles steps ``first..last`` (1-based, inclusive) when ``steps`` is given and this rank
    writes; otherwise every method is free."""

    def __init__(self, steps: tuple[int, int] | None, out_dir: Path, enabled: bool) -> None:
        self.first, self.last = steps if steps and enabled else (0, -1)
        self.out_dir = out_dir
        self._prof = None
        self._began = 0.0

    def unreachable(self, done: int, total: int) -> str | None:
        """A note when the window cannot open in a run that has ``done`` of its ``total`` steps behind it."""
        if self.last < 0 or done < self.first <= total:
            return None
        where = (f"the run's {total} steps end before it" if self.first > total
                 else f"the run resumes at step {done + 1}")
        return f"note: logging.profile_steps [{self.first}, {self.last}] is not profiled: {where}"

    def phase(self, name: str):
        """A named range of the host's time in the trace (nothing outside the window)."""
        if self._prof is None:
            return contextlib.nullcontext()
        import torch

        return torch.profiler.record_function(name)

    def before(self, step: int) -> None:
        """Called before step ``step`` runs: the window opens at ``first``."""
        if step != self.first:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        self._prof = profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])])
        self._prof.__enter__()
        self._began = time.perf_counter()

    def after(self, step: int, final: bool = False) -> str | None:
        """Called after step ``step``: at ``last`` (or the run's ``final`` step, if sooner) the window
        closes and its files are written; returns the log line that says what was found."""
        if self._prof is None or not (step == self.last or final):
            return None
        self.last = step
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._began
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"steps_{self.first}-{self.last}"
        trace_file = self.out_dir / f"{name}.trace.json.gz"
        prof.export_chrome_trace(str(trace_file))  # torch compresses a path ending in .gz
        with gzip.open(trace_file, "rt") as f:
            trace = json.load(f)
        summary = {"steps": [self.first, self.last], **summarize(trace, wall)}
        (self.out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
        host = ", ".join(f"{k} {v:.3f}" for k, v in summary["host_phase_s"].items())
        busy = summary["gpu_busy_fraction"]
        return (f"profiled steps {self.first}-{self.last}: {wall:.3f} s"
                + (f", GPU busy {busy:.1%}" if busy is not None else "")
                + f"; host s: {host}; trace {trace_file}")
