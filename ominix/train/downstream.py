"""lm-eval tasks inside training (``schedule.eval_tasks``): at each evaluation and at the end, rank 0
scores the current weights on the tasks and records them (``metrics.jsonl`` kind ``downstream``,
TensorBoard, W&B, the figure) and in ``RUN_DIR/eval/downstream.json``, which the release bundle's
``eval/eval_results.json`` and model card carry.

The full weights reach rank 0 as a checkpoint's do: every rank calls the booster's ``save_model``
(under Gemini, ZeRO, FSDP or tensor/pipeline parallelism that is the plugin's own gather) into a
scratch directory of the run, which rank 0 reads into an unwrapped OminiX model and deletes. Rank 0
then runs the tasks while the others wait for its outcome on a CPU (gloo) group: they wait as long
as the tasks take, and a failure on rank 0 stops every rank with its message.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from ominix.atomic import write_text
from ominix.errors import OminixError
from ominix.eval.results import IN_TRAINING

SCRATCH = Path("eval") / ".downstream-weights"
# the other ranks wait this long for rank 0's tasks: far longer than any cheap in-loop evaluation,
# where the default of a collective (10 to 30 minutes) could end a long one
WAIT = timedelta(hours=12)


class DownstreamTasks:
    """The run's in-loop lm-eval tasks; every rank builds one (it makes a process group) and calls
    ``run`` at the same steps."""

    def __init__(self, cfg: Any, run_dir: Path, engine: Any, tokenizer_dir: Path, framing: str) -> None:
        import torch.distributed as dist

        s = cfg.schedule
        self.tasks, self.limit, self.every = list(s.eval_tasks), s.eval_task_limit, s.eval_every
        self.cfg, self.run_dir, self.engine = cfg, run_dir, engine
        self.tokenizer_dir, self.framing = tokenizer_dir, framing
        self.resolved = None
        if not self.tasks:
            return
        self.group = dist.new_group(backend="gloo", timeout=WAIT)
        self.resolved = self._on_rank0(self._resolve)  # an unknown task stops the run before step 1

    def _resolve(self):
        from ominix.eval.harness import resolve_tasks

        return resolve_tasks(self.tasks)

    def due(self, step: int, done: bool) -> bool:
        return bool(self.tasks) and (done or bool(self.every and step % self.every == 0))

    def run(self, step: int, tokens: int, out: Any) -> None:
        """Score the weights of ``step`` on the tasks (every rank calls it) and record the numbers."""
        from ominix.eval.harness import version

        began = time.perf_counter()
        scratch = self.run_dir / SCRATCH
        rank0 = self.engine.rank == 0
        if rank0:
            shutil.rmtree(scratch, ignore_errors=True)  # left by a run killed mid-evaluation
            scratch.mkdir(parents=True)
        self._on_rank0(lambda: None)  # the directory exists before any rank writes into it
        self.engine.booster.save_model(self.engine.model, str(scratch), shard=True, use_safetensors=True)
        scores = self._on_rank0(lambda: self._score(scratch))
        if not rank0:
            return
        record = {"step": step, "tokens": tokens, "seconds": time.perf_counter() - began,
                  **{f"{task}/{name}": value for task, values in scores.items() for name, value in values.items()}}
        out.line(format_downstream(record))
        out.record("downstream", record)
        write_text(self.run_dir / IN_TRAINING, json.dumps({
            "step": step, "tokens_seen": tokens, "tasks": scores,
            "settings": {"tasks": self.tasks, "limit": self.limit, "lm_eval": version()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2) + "\n")

    def _score(self, scratch: Path) -> dict[str, dict[str, float]]:
        """Rank 0: the tasks' numbers for the weights in ``scratch`` (deleted once read)."""
        import torch

        from ominix.checkpoint.weights import iter_weights, weight_infos
        from ominix.eval.harness import run_tasks
        from ominix.infer.load import check_state, empty_model, fill, framed_tokenizer

        device = self.engine.device
        bf16 = device.type == "cuda" and self.cfg.parallel.precision == "bf16"
        infos = weight_infos(scratch)
        check_state(infos, self.cfg.model, scratch)
        model = fill(empty_model(self.cfg.model, str(device), "bf16" if bf16 else "fp32"),
                     iter_weights(scratch, infos))
        shutil.rmtree(scratch)
        tokenizer = framed_tokenizer(self.tokenizer_dir, self.framing, self.run_dir)
        try:
            with _random_state_kept(device):  # lm-eval seeds python, numpy and torch
                return run_tasks(model, tokenizer, self.tasks, self.limit, self.resolved)
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # training gets the evaluation copy's memory back

    def _on_rank0(self, work):
        """``work()`` on rank 0, its value there (None elsewhere); every rank waits for it on the CPU
        group and raises rank 0's error, if it had one."""
        import torch.distributed as dist

        outcome: list[Any] = [None]
        value = None
        if self.engine.rank == 0:
            try:
                value = work()
                outcome = [("ok", None)]
            except OminixError as exc:
                outcome = [("error", (exc.message, exc.hint, exc.exit_code))]
            except Exception as exc:
                outcome = [("error", (f"the lm-eval tasks failed on rank 0: {exc}",
                                      "see rank 0's traceback in the log", 1))]
                dist.broadcast_object_list(outcome, src=0, group=self.group)
                raise
        dist.broadcast_object_list(outcome, src=0, group=self.group)
        kind, detail = outcome[0]
        if kind == "error":
            raise OminixError(*detail)
        return value


@contextlib.contextmanager
def _random_state_kept(device: Any) -> Iterator[None]:
    """The python, numpy and torch generators as they were before, afterwards: rank 0's training
    stream (and the RNG state its checkpoints save) does not depend on the evaluation."""
    import random

    import numpy as np
    import torch

    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


def format_downstream(record: dict[str, Any]) -> str:
    numbers = " | ".join(f"{key} {value:.4f}" for key, value in record.items() if "/" in key)
    return f"tasks step {record['step']:>6} | {numbers} | {record['seconds']:.1f} s"
