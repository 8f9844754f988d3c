"""What every launcher puts on a node: the torchrun command line, the environment, the working
directory and interpreter, and the run summary a dry run shows. Below every launcher module."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ominix.errors import OminixError

if TYPE_CHECKING:
    from ominix.config import OminixConfig

# Variables a node keeps from its own login environment; everything else is set explicitly.
KEEP_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_HOME")
# No torch variable sets torchrun's stop timeout (30 s after it is signalled): a stop therefore
# signals the workers themselves, never torchrun (torchrun.py, nodeguard.py).
BASE_ENV = {"PYTHONUNBUFFERED": "1"}


def is_secret(name: str) -> bool:
    """Names such as HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY: never on a command line."""
    return re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", name.upper()) is not None


def forwarded(cfg: OminixConfig) -> dict[str, str]:
    """The ``launch.forward_env`` variables with their values here."""
    missing = [k for k in cfg.launch.forward_env if k not in os.environ]
    if missing:
        raise OminixError(f"launch.forward_env names {', '.join(missing)}, not set here",
                          "export it before launching, or drop it from launch.forward_env")
    return {k: os.environ[k] for k in cfg.launch.forward_env}


def every_node_env(cfg: OminixConfig) -> dict[str, str]:
    """What every remote node gets: BASE_ENV < launch.env < launch.node_env['*']."""
    return {**BASE_ENV, **cfg.launch.env, **cfg.launch.node_env.get("*", {})}


def local_env(cfg: OminixConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child started here: ``launch.env``, the user's ``environ`` winning."""
    return {**cfg.launch.env, **environ}


def remote_python(cfg: OminixConfig) -> str:
    return cfg.launch.python or sys.executable


def workdir(cfg: OminixConfig) -> str:
    return cfg.launch.workdir or os.getcwd()


def torchrun_argv(python: str, nnodes: int, node_rank: int, nproc: int, master_addr: str | None,
                  master_port: int, rdzv_timeout: int, run_dir: str, worker: list[str] | None = None) -> list[str]:
    """The torchrun command of one node that starts ``nproc`` workers of ``run_dir`` (or, given
    ``worker``, ``nproc`` processes of that module and its arguments: ``["-m", MODULE, ...]``).

    One node: ``--standalone`` (a free local port). Several: a static rendezvous at
    ``master_addr:master_port`` that waits ``rdzv_timeout`` seconds for every node.
    """
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and master_addr is None:
        argv.append("--standalone")
    else:
        argv += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                 f"--master-port={master_port}", f"--rdzv-conf=timeout={rdzv_timeout}"]
    return argv + (worker or ["-m", "ominix.train", "--run-dir", run_dir])


def summary(cfg: OminixConfig, nproc: int) -> str:
    """What a dry run says the job is: model, data, layout, schedule, run directory."""
    from ominix.compiled import describe_compile
    from ominix.model import describe_attn
    from ominix.train.memory import describe_fit as memory_line
    from ominix.train.parallel_layout import derive_layout
    from ominix.train.schedule import total_steps, warmup_note, warmup_steps

    layout = derive_layout(cfg, nproc * cfg.launch.nodes)
    p, s = cfg.parallel, cfg.schedule
    total = total_steps(cfg, layout.tokens_per_step)
    stop = f"max_steps {s.max_steps}" if s.max_steps else ""
    stop += f"{', ' if stop else ''}max_tokens {s.max_tokens:,}" if s.max_tokens else ""
    data = (f"{cfg.data.path} (seq_len {cfg.data.seq_len})" if cfg.data.path else
            f"not set (seq_len {cfg.data.seq_len}): a real launch needs --data DIR from `ominix data prepare`")
    return "\n".join(filter(None, [
        f"model     {cfg.model.name}: hidden {cfg.model.hidden_size}, layers {cfg.model.num_hidden_layers}, "
        f"heads {cfg.model.num_attention_heads}/{cfg.model.kv_heads}, "
        f"vocab {cfg.model.vocab_size}; attention {describe_attn(cfg.model.attn)}; {describe_compile(cfg.model)}",
        f"data      {data}",
        f"parallel  plugin {p.plugin}, {p.precision}; {layout.describe()}",
        f"memory    {memory_line(cfg, layout)}",
        f"schedule  {stop}; lr {cfg.optim.lr} -> {cfg.optim.min_lr} ({s.decay}, warmup {warmup_steps(cfg, total)})",
        f"run dir   {cfg.logging.run_dir} (resume {cfg.checkpoint.resume})",
        warmup_note(cfg, total),
    ]))
