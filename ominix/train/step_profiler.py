"""Profile a window of training steps (``logging.profile_steps: [FIRST, LAST]``, rank 0).

The window runs under ``torch.profiler`` with the loop's phases named (``data``, ``forward``,
``backward``, ``optimizer``, ``log``), and leaves two files in RUN_DIR/profile/:

    steps_FIRST-LAST.trace.json.gz   Chrome trace (chrome://tracing, Perfetto, TensorBoard's profiler)
    steps_FIRST-LAST.json            the summary: wall time, how much of it the GPU was busy, the
                                     host's time in each phase, and the GPU's time by kind of work
                                     (matmul, attention, optimizer, copy, collective, other) in
                                     each phase of the host that launched it

"GPU busy" is the union of kernel and copy intervals over the window's wall time: where it is far
below 100%, the GPU waited for the host (syncs, data, Python), and the phases say where the host was.
Outside the window the phases cost nothing (no profiler, no annotation). Under full activation
recompute the backward phase runs each layer's forward again, so its matmul and attention time holds
the recompute: about as much as the forward phase's.
"""

from __future__ import annotations

import contextlib
import gzip
import bisect
import json
import re
import time
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
PHASES = ("data", "forward", "backward", "optimizer", "log")
# a GPU event's kind from its name (first match wins); copies and memsets by their category
KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|attn", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor", re.I)),
    ("collective", re.compile(r"nccl|all_?reduce|all_?gather|reduce_?scatter", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|wgmma|scaled_mm|matmul|splitk|triton_tem", re.I)),
)


def kind_of(event: dict[str, Any]) -> str:
    """What a GPU event does: attention, optimizer, collective, matmul, copy or other."""
    if event.get("cat") != "kernel":
        return "copy"
    name = event.get("name", "")
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def _launch_phase(events: list[dict[str, Any]]) -> dict[int, str]:
    """The host phase each launch (by correlation id) was made in: the phase annotation its time
    falls in. Time, not thread: backward's kernels are launched by autograd's own thread while the
    loop's thread is inside ``backward``."""
    spans = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                   if e.get("cat") == "user_annotation" and e.get("name") in PHASES)
    starts = [span[0] for span in spans]
    found: dict[int, str] = {}
    for e in events:
        corr = (e.get("args") or {}).get("correlation")
        if e.get("cat") not in ("cuda_runtime", "cuda_driver") or corr is None:
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1  # the last phase to begin before it (phases do not nest)
        if i >= 0 and e["ts"] <= spans[i][1]:
            found[corr] = spans[i][2]
    return found


def gpu_time_by_kind(events: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds of GPU time per phase (``unphased``: launched outside every phase) and kind, each
    event counted in full (streams that overlap add up)."""
    phase_of = _launch_phase(events)
    table: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("cat") not in GPU_CATEGORIES:
            continue
        phase = phase_of.get((e.get("args") or {}).get("correlation"), "unphased")
        row = table.setdefault(phase, {})
        row[kind_of(e)] = row.get(kind_of(e), 0.0) + e["dur"] / 1e6
    return {p: {k: round(v, 4) for k, v in sorted(row.items())} for p, row in table.items()}


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
            "host_phase_s": {k: round(v, 4) for k, v in phases.items()},
            "gpu_s_by_phase_and_kind": gpu_time_by_kind(events)}


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
        kinds: dict[str, float] = {}
        for row in summary["gpu_s_by_phase_and_kind"].values():
            for kind, seconds in row.items():
                kinds[kind] = kinds.get(kind, 0.0) + seconds
        gpu = ", ".join(f"{k} {v:.3f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        return (f"profiled steps {self.first}-{self.last}: {wall:.3f} s"
                + (f", GPU busy {busy:.1%}" if busy is not None else "")
                + f"; host s: {host}" + (f"; GPU s: {gpu}" if gpu else "") + f"; trace {trace_file}")
