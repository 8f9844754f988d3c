"""The sections that say how a run is saved, logged, launched and sampled: checkpoint, logging (with
W&B), launch (with SLURM) and infer. The model, data, optimizer, schedule and parallel sections and
the whole config live in ``models``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ominix.config.section import Section
from ominix.config.slurm import SlurmConfig


class CheckpointConfig(Section):
    """When checkpoints are written and which are kept."""

    every: int = Field(500, ge=0, description="Save every N steps (and at the end); 0 = only at end.")
    keep_last: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    keep_every: int = Field(
        0, ge=0, description="Also keep every checkpoint whose step is a multiple of N (0 = none)."
    )
    resume: str = Field("auto", description=(
        "auto (latest if any), never (a new run; refused in a run directory that holds checkpoints or "
        "metrics), restart (a new run; such a directory's earlier run is moved into RUN_DIR/previous/TIME/ "
        "first), or a checkpoint path."))
    save_optimizer: bool = Field(True, description="Save optimizer state (needed for exact resume).")
    async_save: bool = Field(
        False, description="Write checkpoints in the background: training is blocked only while the state is "
        "copied to host memory; integrity.json and latest follow once the write is done. Needs host memory for "
        "a copy of each rank's share of a checkpoint until it is written, hence off by default.",
    )
    verify: Literal["sizes", "full"] = Field(
        "sizes", description="What resume checks against a checkpoint's integrity.json: sizes (a stat per file; "
        "finds missing and truncated files) or full (also the sha256 of every file; reads it all once).",
    )


    @property
    def starts_fresh(self) -> bool:
        """True when this run starts at step 0 whatever the run directory holds."""
        return self.resume in ("never", "restart")


class WandbConfig(Section):
    """Weights & Biases logging from rank 0: the numbers of metrics.jsonl and the config, one W&B run
    per run directory (its id kept in RUN_DIR/wandb-run.json, so a resumed run logs into it)."""

    enabled: bool = Field(False, description="Log to Weights & Biases (the wandb extra: docs/INSTALL.md).")
    project: str = Field("ominix", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (user or team); None = your default entity.")
    name: str | None = Field(None, description="W&B run name; None = the run directory's name.")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (upload later with `wandb sync`) or disabled; None = $WANDB_MODE if "
        "set, else offline, so a run never waits on the network unless asked to.",
    )
    tags: list[str] = Field(default_factory=list, description="Tags of the W&B run.")


class LoggingConfig(Section):
    """Where a run writes and how often it reports."""

    run_dir: str = Field("runs/default", description="Run directory: config, logs, metrics, ckpts.")
    log_every: int = Field(1, ge=1, description="Log one line every N steps (rank 0).")
    tensorboard: bool = Field(True, description="Write TensorBoard events under RUN_DIR/tb.")
    figure: bool = Field(
        True, description="Draw RUN_DIR/plots/training.png (loss, lr, throughput) at each eval and at the end."
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="Weights & Biases logging.")
    profile_steps: tuple[int, int] | None = Field(
        None, description="Profile steps [FIRST, LAST] on rank 0 (torch.profiler): a Chrome trace and a summary "
        "(GPU busy, the host's time per phase) in RUN_DIR/profile/, e.g. [5, 6]."
    )

    @model_validator(mode="after")
    def _profile_window(self) -> LoggingConfig:
        if self.profile_steps is not None:
            first, last = self.profile_steps
            if not 1 <= first <= last:
                raise ValueError(f"logging.profile_steps: [{first}, {last}] is not a window of steps "
                                 "(want [FIRST, LAST] with 1 <= FIRST <= LAST, e.g. [5, 6])")
        return self


class LaunchConfig(Section):
    """How processes are started: locally, over SSH on several nodes, or through SLURM."""

    launcher: Literal["ominix", "colossalai", "slurm"] = Field(
        "ominix", description="ominix (torchrun per node over SSH), colossalai run, or an sbatch file."
    )
    nodes: int = Field(1, ge=1, description="Number of nodes (the first N hosts of the hostfile).")
    nproc_per_node: int | None = Field(
        None, ge=1, description="Processes per node; None = GPUs found (1 on CPU)."
    )
    hostfile: str | None = Field(None, description="Hostfile: 'host', 'user@host:port', 'slots=N'.")
    master_addr: str | None = Field(None, description="Rendezvous address; None = first host.")
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port.")
    rdzv_timeout: int = Field(120, ge=1, description="Seconds to wait for every node to join.")
    ssh_port: int = Field(22, ge=1, le=65535, description="Default SSH port of hosts without one.")
    ssh_user: str | None = Field(None, description="Default SSH user; None = ~/.ssh/config or local.")
    ssh_key: str | None = Field(None, description="Private key file; None = agent and default keys.")
    known_hosts: str | None = Field(None, description="known_hosts file; None = ~/.ssh/known_hosts.")
    accept_new_host_keys: bool = Field(False, description="Trust and record unknown host keys.")
    connect_timeout: float = Field(10.0, gt=0, description="SSH connect timeout in seconds.")
    stop_timeout: float = Field(
        900.0, ge=1,
        description="Seconds a stopped multi-node run (Ctrl-C, SIGTERM) gets to save its checkpoint and exit "
        "before its processes are killed; covers the save of a large checkpoint (minutes for 7B). "
        "A second Ctrl-C kills at once.",
    )
    max_restarts: int = Field(
        3, ge=0, description="Relaunches after a worker or node fault (a crash, a lost node, a hang; never a "
        "config error or a stop signal), each from the newest good checkpoint; 0 = a fault ends the run. "
        "Covers torchrun launches (several processes or nodes); a one-process run runs in the launcher.",
    )
    restart_backoff: float = Field(
        30.0, ge=0, description="Seconds to wait before the first relaunch, doubled for each further one "
        "(time for a node to reboot or a network to come back).",
    )
    hang_timeout: float = Field(
        1800.0, ge=0, description="Seconds without a finished step (an evaluation or checkpoint save counts "
        "as progress) after which every rank still running dumps its stacks into RUN_DIR/hang/ and the "
        "attempt ends (then restarts if allowed); must exceed the longest step, eval or save; 0 = off.",
    )
    workdir: str | None = Field(None, description="Working directory on every node; None = here.")
    python: str | None = Field(None, description="Python on the nodes; None = this interpreter.")
    forward_env: list[str] = Field(
        default_factory=list, description="Variables to forward to every node (e.g. HF_TOKEN)."
    )
    node_env: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Variables per host ('*' = every node), e.g. {node1: {NCCL_SOCKET_IFNAME: ib0}}.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables set for every process on every node, e.g. {NCCL_NVLS_ENABLE: '0'}; "
        "the user's own environment wins locally, node_env wins over it.",
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="SLURM settings (launcher slurm).")
    memory_check: bool = Field(
        True, description="Refuse a layout whose estimated peak memory per GPU exceeds the GPU's "
        "(ominix.train.memory; --dry-run prints the estimate), naming the largest micro batch "
        "that fits.",
    )
    device_memory_gib: float | None = Field(
        None, gt=0, description="Memory of one GPU in GiB for the memory check; None = read on the "
        "GPU machine (by the local launcher, or by each worker at start on other nodes).",
    )

    @model_validator(mode="after")
    def _env_names(self) -> LaunchConfig:
        names = [*self.forward_env, *(k for env in self.node_env.values() for k in env), *self.env]
        bad = [n for n in names if not n.isidentifier() or not n.isascii()]
        if bad:
            raise ValueError(f"launch.forward_env/node_env/env: {bad[0]!r} is not a variable name")
        return self


class InferConfig(Section):
    """Text generation settings."""

    max_new_tokens: int = Field(128, ge=1, description="Tokens to generate per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature; 0 = greedy.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 = off.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 = off.")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on repeated tokens; 1 = off.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Sampling seed (0 to 2**63-1, what torch takes).")
    device: str = Field("auto", description="auto (cuda if present), cpu or cuda[:N].")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU."
    )
