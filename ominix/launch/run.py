"""Start a training run: resolve the run directory, write its config once, and run the worker
in-process (one process) or under torchrun (several); multi-node runs go to ``ominix.train.multinode``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ominix.config import OminixConfig, dump_yaml, load_config, save_config
from ominix.errors import OminixError

# NCCL's NVLink SHARP (multicast) paths fail on the H200 hosts we run on; harmless elsewhere.
GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def torchrun_argv(python: str, nnodes: int, node_rank: int, nproc: int, master_addr: str | None,
                  master_port: int, rdzv_timeout: int, run_dir: str) -> list[str]:
    """The torchrun command of one node that starts ``nproc`` workers of ``run_dir``.

    One node: ``--standalone`` (a free local port). Several: a static rendezvous at
    ``master_addr:master_port`` that waits ``rdzv_timeout`` seconds for every node.
    """
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and master_addr is None:
        argv.append("--standalone")
    else:
        argv += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                 f"--master-port={master_port}", f"--rdzv-conf=timeout={rdzv_timeout}"]
    return argv + ["-m", "ominix.train", "--run-dir", run_dir]


def local_nproc(cfg: OminixConfig) -> int:
    """``launch.nproc_per_node``, or the GPUs of this machine (1 without a GPU)."""
    if cfg.launch.nproc_per_node:
        return cfg.launch.nproc_per_node
    import torch

    return max(torch.cuda.device_count(), 1)


def prepare_run_dir(cfg: OminixConfig) -> Path:
    """Create the run directory and write the resolved config the workers will read. A relaunch
    into the same directory writes its own config (more steps, another lr); a checkpoint of another
    model shape, data or plugin is refused when the worker resumes."""
    run_dir = Path(cfg.logging.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def summary(cfg: OminixConfig, nproc: int) -> str:
    from ominix.train.engine import derive_layout

    layout = derive_layout(cfg, nproc * cfg.launch.nodes)
    p, s = cfg.parallel, cfg.schedule
    stop = f"max_steps {s.max_steps}" if s.max_steps else ""
    stop += f"{', ' if stop else ''}max_tokens {s.max_tokens:,}" if s.max_tokens else ""
    return "\n".join([
        f"model     {cfg.model.name}: hidden {cfg.model.hidden_size}, layers {cfg.model.num_hidden_layers}, "
        f"heads {cfg.model.num_attention_heads}/{cfg.model.kv_heads}, vocab {cfg.model.vocab_size}",
        f"data      {cfg.data.path} (seq_len {cfg.data.seq_len})",
        f"parallel  plugin {p.plugin}, {p.precision}; {layout.describe()}",
        f"schedule  {stop}; lr {cfg.optim.lr} -> {cfg.optim.min_lr} ({s.decay}, warmup {s.warmup_steps})",
        f"run dir   {cfg.logging.run_dir} (resume {cfg.checkpoint.resume})",
    ])


def launch(cfg: OminixConfig, dry_run: bool = False) -> int:
    """Run ``cfg``: validate, write RUN_DIR/config.yaml, start the worker(s); return the exit code."""
    import torch

    from ominix.train.engine import validate

    if cfg.launch.nodes > 1 or cfg.launch.hostfile:
        from ominix.train.multinode import launch_multinode

        if cfg.launch.nproc_per_node:
            validate(cfg, cfg.launch.nodes * cfg.launch.nproc_per_node, torch.cuda.is_available() or dry_run)
        run_dir = Path(cfg.logging.run_dir) if dry_run else prepare_run_dir(cfg)
        return launch_multinode(cfg, run_dir, dry_run=dry_run)

    nproc = local_nproc(cfg)
    validate(cfg, nproc, torch.cuda.is_available())
    if cfg.data.path is None or not (Path(cfg.data.path) / "manifest.json").is_file():
        raise OminixError(
            f"no prepared data at {cfg.data.path}" if cfg.data.path else "no prepared data: data.path is not set",
            "run `ominix data prepare ... --out DIR`, then pass --data DIR",
        )
    run_dir = str(cfg.logging.run_dir)
    argv = torchrun_argv(sys.executable, 1, 0, nproc, None, cfg.launch.master_port, cfg.launch.rdzv_timeout, run_dir)
    if dry_run:
        print(summary(cfg, nproc))
        print("command   " + (shlex.join(argv) if nproc > 1 else f"(in-process) python -m ominix.train --run-dir {run_dir}"))
        print("--- resolved config ---")
        print(dump_yaml(cfg), end="")
        return 0
    prepare_run_dir(cfg)
    if nproc == 1:
        from ominix.train.loop import main

        return main(run_dir)
    env = {**os.environ, **(GPU_ENV if torch.cuda.is_available() else {})}
    return subprocess.run(argv, env=env).returncode


def launch_from_cli(source: str | None, sets: list[str], flags: dict, dry_run: bool = False) -> int:
    """Resolve the config (defaults < FILE/preset < --set < flags) and launch it."""
    cfg = load_config(source, sets, flags)
    return launch(cfg, dry_run=dry_run)
