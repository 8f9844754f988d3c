"""The training loop: what every rank runs. ``train`` reads top to bottom.

Loss bookkeeping: each micro batch's mean loss is divided by the number of accumulated micro batches
before backward, so the accumulated gradient is that of the mean loss over the rank's batch; the
plugin then averages gradients over data-parallel ranks. The logged loss is the mean over all ranks
and over the steps since the last log line, read from the device once per log window.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ominix import hubref
from ominix.config import OminixConfig, dump_yaml, load_config
from ominix.errors import OminixError, os_error
from ominix.train.stop import Preemption, StopVote, preemption
from ominix.train.watchdog import Watchdog


@dataclass
class LoopState:
    """Where training stands; saved as JSON inside each checkpoint's state.json."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed by all ranks together
    last_loss: float | None = None
    skipped_steps: int = 0  # updates skipped for a non-finite loss (schedule.on_nan=skip)


def _mean_over_dp(values: list, engine) -> list[float]:
    """Per-step losses averaged over the data-parallel ranks: one collective, one host sync."""
    import torch
    import torch.distributed as dist

    t = torch.stack([v.float() for v in values])
    dist.all_reduce(t, group=getattr(engine.plugin, "dp_group", None))
    return (t / engine.layout.dp).tolist()


def _stop_on_nonfinite(losses: list[float], norms: list[float | None], first: int,
                       fp16: bool) -> None:
    """Raise at the first step whose loss (or, outside fp16 loss scaling, whose gradient norm) is
    not finite. Under fp16 an infinite gradient norm is the loss scaler's business: it skips that
    step."""
    for i, (loss, norm) in enumerate(zip(losses, norms)):
        bad_norm = norm is not None and not math.isfinite(norm) and not fp16
        if not math.isfinite(loss) or bad_norm:
            what = (f"loss became {loss}" if not math.isfinite(loss)
                    else f"gradient norm became {norm}")
            raise OminixError(
                f"{what} at step {first + i}",
                "lower optim.lr, raise schedule.warmup_steps, use bf16, or resume from the last "
                "checkpoint with --set schedule.on_nan=skip",
                exit_code=1,
            )


def to_device(batch, device):
    """The batch on ``device``: on a GPU through pinned memory, queued without waiting for the GPU
    (a copy from pageable memory makes the host wait until the GPU has finished the step before)."""
    if device.type != "cuda":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


def forward_backward(engine, batch, phase=lambda name: contextlib.nullcontext()):
    """Forward and backward of one step's ``batch`` (the rank's sequences): through the pipeline
    (the plugin splits it into micro batches), or micro batch by micro batch with the gradients
    accumulated and synchronised after the last. Returns the step's mean loss, on the device.
    ``phase`` names the host's time (``StepProfiler.phase``). The training loop and
    bench/train_throughput.py both run this, so the bench times the loop's own step."""
    import torch

    layout = engine.layout
    if layout.pp > 1:
        with phase("forward"):
            return engine.pipeline_loss(batch)
    loss = torch.zeros((), device=engine.device)
    for i, micro in enumerate(batch.split(layout.micro_batch)):
        with engine.no_sync(last_micro=i == layout.accum - 1), engine.autocast(), phase("forward"):
            micro_loss = engine.loss(micro)
        with phase("backward"):
            engine.booster.backward(micro_loss / layout.accum, engine.optimizer)
        loss += micro_loss.detach().float() / layout.accum
    return loss


@contextlib.contextmanager
def _disk_errors_name_the_step(state: LoopState, run_dir: Path):
    """An ``OSError`` of the steps (a log write on a full disk, a log file made unwritable) as one
    error naming the step reached and the checkpoint a resume continues from (a failed save removes
    its partial directory, so ``latest`` still names a complete one)."""
    from ominix.checkpoint.layout import checkpoints_dir, latest_name

    try:
        yield
    except OSError as exc:
        kept = latest_name(checkpoints_dir(run_dir))
        resume = (f"then --resume auto continues from {kept}" if kept
                  else "no checkpoint was saved yet")
        raise os_error(exc, f"at step {state.step} in {run_dir}", resume) from exc


def freeze_heap() -> None:
    """Move everything built so far out of the garbage collector's reach (``gc.freeze``; ``train``
    thaws it when it returns). Setup leaves ~450k long-lived objects (torch, ColossalAI, the
    engine); a full collection scanned them all, ~250 ms on the CI machine's CPU: a pause of the
    host that the GPU feels wherever the host runs little ahead of it."""
    gc.collect()
    gc.freeze()


def train(cfg: OminixConfig, run_dir: Path) -> int:
    """Train ``cfg`` on this rank until max steps/tokens (return 0), a stop signal (save, return
    128 + the signal: 143 for SIGTERM, 130 for Ctrl-C), or a non-finite loss (raise).

    What the run changes in the process (a one-process group's environment variables when run
    in-process, the ColossalAI shims, the signal handlers) is undone when it returns or raises."""
    from ominix.train import colossalai_patches
    from ominix.train.engine import one_process_env

    watchdog = Watchdog(run_dir, cfg.launch.hang_timeout)
    with one_process_env(), colossalai_patches.patched() as skipped, preemption() as preempt:
        try:
            return _train(cfg, run_dir, preempt, skipped, watchdog)
        finally:
            watchdog.close()
            gc.unfreeze()  # the objects frozen after setup may be collected again


def _train(cfg: OminixConfig, run_dir: Path, preempt: Preemption, skipped: list[str],
           watchdog: Watchdog) -> int:
    import torch
    import torch.distributed as dist

    from ominix import checkpoint as ckpt
    from ominix.data.ledger import LedgerWriter, describe
    from ominix.data.loader import BlockLoader
    from ominix.data.verified import verification_note
    from ominix.flops import device_name, flops_per_token, peak_flops
    from ominix.plugins import PLUGINS
    from ominix.train.downstream import DownstreamTasks
    from ominix.train.engine import build_engine, init_distributed
    from ominix.train.parallel_layout import derive_layout, with_global_batch
    from ominix.train.metrics import MetricsWriter, Throughput, format_eval, format_step
    from ominix.train.step_profiler import StepProfiler
    from ominix.train.saver import Saver
    from ominix.train.schedule import (
        continue_schedule, eval_note, lr_multiplier, resume_note, span, total_steps, warmup_note,
    )
    from ominix.train.startup import devices, from_rank0, open_data, resume_from, run_lines

    launched = time.perf_counter()
    s, c = cfg.schedule, cfg.checkpoint
    init_distributed(s.seed)
    world = torch.distributed.get_world_size()
    layout = derive_layout(cfg, world)
    # checkpoints record the global batch (a SLURM job counting GPUs left it unset)
    cfg = with_global_batch(cfg, layout)
    total = total_steps(cfg, layout.tokens_per_step)
    train_set, val_set, data_sha = open_data(cfg)
    resume, notices = resume_from(cfg, run_dir)
    if resume is not None:  # refuse a mismatching checkpoint before building anything
        saved = ckpt.read_state(resume)
        ckpt.check_compatible(saved, cfg, data_sha, layout, PLUGINS[cfg.parallel.plugin].reshard)
    engine = build_engine(cfg, lr_multiplier(cfg, total))
    loader = BlockLoader(train_set, layout.rank_batch, engine.dp_rank, layout.dp,
                         seed=cfg.data.seed)
    vote = StopVote()  # a process group: built here, before the throughput clock starts
    out = MetricsWriter(run_dir, engine.rank == 0, cfg.logging, cfg.model_dump(mode="json"))
    tasks = DownstreamTasks(cfg, run_dir, engine, train_set.tokenizer_dir, train_set.framing)

    state = LoopState()
    notes = [warmup_note(cfg, total), eval_note(cfg, 0 if val_set is None else len(val_set)),
             verification_note(train_set, val_set)]
    for notice in [*skipped, *notices, *notes]:  # skipped: speed-ups of colossalai_patches.patched
        if notice:
            out.line(notice)
    if resume is not None:
        began = time.perf_counter()
        with_optimizer = c.save_optimizer and saved["has_optimizer"]
        ckpt.load_checkpoint(engine, loader, resume, load_optimizer=with_optimizer)
        state = LoopState(**saved["loop"])
        seconds = time.perf_counter() - began
        fresh = ("" if with_optimizer
                 else "; optimizer state starts afresh (the checkpoint has none)")
        out.line(f"resumed from {resume} at step {state.step} ({state.tokens:,} tokens) in "
                 f"{seconds:.1f} s{fresh}")
        if note := resume_note(state.step, *continue_schedule(engine.scheduler), span(cfg, total)):
            out.line(note)
        out.record("checkpoint", {"step": state.step, "action": "load", "seconds": seconds})
    elif cfg.model.init_from:
        engine.booster.load_model(engine.model, hubref.weights_path(cfg.model.init_from))
        out.line(f"initialised from {cfg.model.init_from}")

    meter = Throughput(layout.tokens_per_step, world, flops_per_token(cfg.model, layout.seq_len),
                       peak_flops(device_name()))
    for line in run_lines(cfg, layout, world, engine, train_set.framing, total, run_dir):
        out.line(line)
    if state.step >= total:
        out.line(f"the checkpoint is at step {state.step}, the run ends at {total}: nothing to "
                 "train (raise --max-steps to continue)")

    ledger = from_rank0(lambda: LedgerWriter(run_dir, describe(loader.state_dict(), data_sha),
                                             state.step), share=False)
    facts = {"world_size": world, "dp": layout.dp, "tp": layout.tp, "pp": layout.pp,
             "plugin": cfg.parallel.plugin, "has_optimizer": c.save_optimizer,
             "data_manifest_sha256": data_sha, "model": cfg.model.model_dump(mode="json")}
    saver = Saver(cfg, engine, loader, run_dir, dump_yaml(cfg), facts, out, meter, watchdog)
    launch = {"step": state.step, "world_size": world, "devices": devices()}

    profiler = StepProfiler(cfg.logging.profile_steps, run_dir / "profile", engine.rank == 0)
    if note := profiler.unreachable(state.step, total):
        out.line(note)
    freeze_heap()
    out.record("launch", {**launch, "setup_s": time.perf_counter() - launched,
                          "steps_redone": ledger.dropped if ledger else 0}, dashboards=False)
    watchdog.arm(engine.rank)  # after setup: loading and compiling are not steps
    code = 0
    window: list = []  # (loss, grad norm) of each step since the last log line, kept on the device
    engine.model.train()
    with _disk_errors_name_the_step(state, run_dir):
        while state.step < total:
            profiler.before(state.step + 1)
            with profiler.phase("data"):
                batch = to_device(next(loader), engine.device)
                if ledger is not None:
                    ledger.append(loader.step_blocks)
            loss = forward_backward(engine, batch, profiler.phase)
            skip = s.on_nan == "skip"
            with profiler.phase("optimizer"):
                # skip mode: one sync per step, to know before the update
                if skip and not math.isfinite(_mean_over_dp([loss], engine)[0]):
                    norm, stepped = torch.tensor(float("nan")), False
                else:
                    norm, stepped = engine.clip_and_step(cfg.optim.grad_clip, skip_nonfinite=skip)
            if not stepped:
                state.skipped_steps += 1
                out.line(f"step {state.step + 1}: non-finite loss or gradient, update skipped "
                         "(schedule.on_nan=skip)")
            lr = engine.scheduler.get_last_lr()[0]  # the rate this step used
            with profiler.phase("optimizer"):
                engine.scheduler.step()
                engine.optimizer.zero_grad()
            state.step += 1
            state.tokens += layout.tokens_per_step
            window.append((loss, norm))
            watchdog.beat()

            done = state.step >= total
            # a signal any rank had by the previous step: all stop here
            stop = vote.cast(preempt.requested)
            saving = done or (c.every and state.step % c.every == 0)
            if state.step % cfg.logging.log_every == 0 or saving or done or stop:
                with profiler.phase("log"):  # where the host waits for the GPU, once per window
                    first = state.step - len(window) + 1
                    losses = _mean_over_dp([w[0] for w in window], engine)
                    # None: the plugin did not say
                    norms = [None if w[1] is None else float(w[1]) for w in window]
                    if s.on_nan == "stop":
                        _stop_on_nonfinite(losses, norms, first,
                                           fp16=cfg.parallel.precision == "fp16")
                    state.last_loss = losses[-1]
                    record = {"step": state.step, "loss": sum(losses) / len(losses), "lr": lr,
                              "grad_norm": norms[-1], "tokens": state.tokens,
                              **meter.measure(len(window), total - state.step)}
                    out.line(format_step(record, total))
                    out.record("train", record)
                    window = []
            if s.eval_every and (state.step % s.eval_every == 0 or done):
                meter.pause()
                result = engine.evaluate(val_set, s.eval_blocks)
                record = {"step": state.step, "val_loss": result["loss"],
                          "val_perplexity": result["perplexity"]}
                out.line(format_eval(record))
                out.record("eval", record)
                watchdog.beat()
                engine.model.train()
                meter.resume()
            if tasks.due(state.step, done):
                meter.pause()
                with watchdog.held():  # the other ranks wait on a group with its own timeout
                    tasks.run(state.step, state.tokens, out)
                meter.resume()
            # before a save, which is not a step
            if line := profiler.after(state.step, final=done or stop):
                out.line(line)
            saver.report_finished()
            if saving or stop:
                path = saver.save(asdict(state), announce=not (stop and not done))
            # the rank that saw no signal stops as the others do, with their code
            if stop and not done:
                signum = preempt.signal or signal.SIGTERM
                saver.wait(announce=False)  # say "saved" once it is
                out.line(f"stopped by {signal.Signals(signum).name} at step {state.step}; saved "
                         f"checkpoint {path.name}; resume with --resume auto")
                code = 128 + signum
                break
    saver.wait(announce=code == 0)  # latest names it before the exit
    if code == 0:  # a finished run read matching data: wait for this node's verifier's verdict
        for split in (train_set, val_set):
            if split is not None:
                split.check(wait=True)
    out.close()
    if ledger is not None:
        ledger.close()
    vote.close()
    # every rank's queued GPU work and collectives done before the process group is torn down
    # (FSDP's last all-gathers otherwise left destroy_process_group waiting on the GPU)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()
    return code


def main(run_dir: str) -> int:
    """Worker entry point (``python -m ominix.train --run-dir RUN_DIR``): train
    RUN_DIR/config.yaml."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise OminixError(f"{path} not found",
                          "start runs with `ominix train launch`, which writes it")
    cfg = load_config(path)
    import torch.distributed as dist

    code = train(cfg, Path(run_dir))
    # only after a clean finish: on an error the other ranks may sit in a collective, and tearing
    # the group down would wait on them and hide this rank's traceback; exiting frees everything
    if dist.is_initialized():
        dist.destroy_process_group()
    return code
