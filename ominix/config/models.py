"""Every configuration model of OminiX, nested by subsystem, with the rules a config must follow.

Plugin names and the rules that depend on the plugin come from ``ominix.plugins``; the release
section lives in ``release``, ``launch.slurm`` in ``slurm``, the shared base in ``section``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ominix import plugins
from ominix.config.release import ReleaseConfig
from ominix.config.section import Section
from ominix.config.slurm import SlurmConfig
from ominix.plugins import NAMES as PLUGIN_NAMES

SLIMPAJAMA = "cerebras/SlimPajama-627B"
# LLaMA-2's tokenizer (32,000 ids), from an ungated Apache-2.0 repository (meta-llama's is gated)
LLAMA2_TOKENIZER = "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"




class ModelConfig(Section):
    """Shape of the LLaMA decoder; names follow ``transformers.LlamaConfig``."""

    name: str = Field("custom", description="Preset or model name, recorded in cards and exports.")
    vocab_size: int = Field(32000, ge=8, description="Vocabulary size; must cover the tokenizer's ids.")
    hidden_size: int = Field(4096, ge=8, description="Width of the residual stream.")
    intermediate_size: int = Field(11008, ge=8, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(32, ge=1, description="Number of decoder layers.")
    num_attention_heads: int = Field(32, ge=1, description="Query heads per layer.")
    num_key_value_heads: int | None = Field(
        None, ge=1, description="Key/value heads (grouped-query attention); None = num_attention_heads."
    )
    max_position_embeddings: int = Field(4096, ge=8, description="Longest sequence the model serves.")
    rope_theta: float = Field(10000.0, gt=0, description="Base of the rotary embedding frequencies.")
    rms_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every RMSNorm.")
    tie_word_embeddings: bool = Field(False, description="Share the input embedding with the lm_head.")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of weights.")
    attn: Literal["auto", "flash", "sdpa", "cudnn"] = Field(
        "auto",
        description="Attention kernel: flash-attn if installed (auto), torch SDPA, or SDPA's cuDNN backend.",
    )
    compile: bool = Field(False, description="torch.compile the decoder (fuses norms, rotary, SwiGLU).")
    compile_scope: Literal["auto", "layers", "ops"] = Field(
        "auto",
        description="What model.compile compiles: whole decoder layers (auto, layers; under gemini each "
        "layer runs as one compiled region between its parameter hooks), or only the parameter-free "
        "kernels (ops: norm, rotary, SwiGLU).",
    )
    loss_chunk: int = Field(
        8192, ge=0, description="Tokens per chunk of the fused lm_head + cross-entropy; 0 = unfused."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute layer activations in backward.")
    checkpoint_policy: Literal["full", "selective"] = Field(
        "full", description="With gradient_checkpointing, what backward recomputes: full (the whole layer; "
        "least memory) or selective (keep matmul and attention outputs, recompute norms, rotary, SwiGLU "
        "and adds; less recompute, more memory).",
    )
    init_from: str | None = Field(
        None, description="Hugging Face weights directory or Hub id to start from (continued pretraining)."
    )

    # how the model runs, starts or is named, not what function its weights compute: a checkpoint
    # resumes under other values of these, every other field (a new one included) must match
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "name", "initializer_range", "attn", "compile", "compile_scope", "loss_chunk",
        "gradient_checkpointing", "checkpoint_policy", "init_from",
    })

    def function_fields(self) -> dict[str, Any]:
        """Every field that changes the function the weights compute, in declaration order (the
        key/value heads resolved, so None and num_attention_heads are the same model)."""
        fields = {k: getattr(self, k) for k in type(self).model_fields if k not in self.RUNTIME_FIELDS}
        return {**fields, "num_key_value_heads": self.kv_heads}

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"model.num_key_value_heads ({self.kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError("model.hidden_size / model.num_attention_heads must be even for rotary")
        return self


class DataConfig(Section):
    """Where tokens come from (``data prepare``) and where prepared shards live (training)."""

    sources: list[str] = Field(
        default_factory=lambda: [SLIMPAJAMA],
        description="Hub dataset ids, local files, directories, globs, or save_to_disk directories.",
    )
    split: str = Field("train", description="datasets split expression, e.g. 'train[:10%]'.")
    text_field: str = Field("text", description="Record field holding the document text.")
    path: str | None = Field(None, description="Prepared data directory (output of data prepare).")
    tokenizer: str | None = Field(
        LLAMA2_TOKENIZER, description="Tokenizer: a Hugging Face Hub id, a directory or a tokenizer.json "
        "(default: the LLaMA-2 tokenizer, 32,000 ids); unset when train_tokenizer trains one.",
    )
    train_tokenizer: bool = Field(False, description="Train a byte-level BPE on the source.")
    # 2**20 ids: four times the largest vocabulary in use (~256k), far below the uint32 a shard holds;
    # the BPE trainer allocates per id, and 10**9 aborts the process instead of raising
    vocab_size: int = Field(32000, ge=260, le=1 << 20,
                            description="Vocabulary size of a trained tokenizer (260 to 1048576).")
    seq_len: int = Field(4096, ge=8, description="Tokens per training sequence (blocks hold seq_len+1).")
    val_fraction: float = Field(
        0.005, ge=0.0, lt=1.0, description="Fraction of documents held out for validation."
    )
    num_proc: int | None = Field(
        None, ge=1, description="Tokenizer threads (the Rust pool of tokenizers); None = all cores."
    )
    streaming: bool = Field(False, description="Stream hub data instead of downloading files first.")
    seed: int = Field(1234, description="Seed of the validation split and of the training order.")
    verify: bool = Field(
        True, description="Training: one process per node checks the sha256 of the shards the run reads "
        "in a background thread, skipping those DIR/.ominix-verified.json records as verified "
        "(same size and mtime); false skips the check.",
    )

    @model_validator(mode="before")
    @classmethod
    def _trained_replaces_default(cls, data: Any) -> Any:
        # train_tokenizer without a tokenizer named: the default (LLaMA-2's) does not apply
        if isinstance(data, dict) and data.get("train_tokenizer") and "tokenizer" not in data:
            return {**data, "tokenizer": None}
        return data

    @model_validator(mode="after")
    def _tokenizer_choice(self) -> DataConfig:
        if self.tokenizer and self.train_tokenizer:
            raise ValueError("set either data.tokenizer or data.train_tokenizer, not both")
        return self


class OptimConfig(Section):
    """Optimizer settings."""

    optimizer: Literal["auto", "adamw", "hybrid_adam"] = Field(
        "auto", description="auto = ColossalAI HybridAdam on GPU (fused torch Adam under fsdp), torch AdamW on CPU."
    )
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    min_lr: float = Field(3e-5, ge=0, description="Learning rate at the end of the decay.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not on norms).")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="Adam beta2.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")

    @model_validator(mode="after")
    def _lr_order(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr ({self.min_lr}) must not exceed optim.lr ({self.lr})")
        return self


class ScheduleConfig(Section):
    """How big each step is, how many steps, the learning-rate shape and evaluation cadence."""

    global_batch_size: int | None = Field(
        None, ge=1, description="Sequences per optimizer step over all data-parallel ranks; None = "
        "micro_batch_size x data-parallel size (one micro batch per rank per step), resolved when the "
        "launch knows its processes and recorded in RUN_DIR/config.yaml.",
    )
    micro_batch_size: int = Field(
        16, ge=1, description="Sequences per forward/backward on one rank."
    )
    max_steps: int | None = Field(1000, ge=1, description="Stop after this many optimizer steps.")
    max_tokens: int | None = Field(None, ge=1, description="Stop once this many tokens were seen.")
    warmup_steps: int = Field(
        100, ge=0, description="Linear warmup steps; a shorter run warms up over all its steps (with a notice)."
    )
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay shape.")
    decay_steps: int | None = Field(
        None, ge=1, description="Steps the learning-rate schedule spans, warmup included; None = the run's "
        "steps. Train the first steps of a longer schedule, and a relaunch with more --max-steps continues "
        "the same curve."
    )
    eval_every: int = Field(200, ge=0, description="Evaluate every N steps; 0 disables.")
    eval_blocks: int = Field(320, ge=1, description="Held-out blocks per evaluation, over all "
                             "ranks together, spread over the validation split (all of it when it "
                             "holds fewer): the same blocks and loss under every plugin, batch size "
                             "and world size (ominix eval --max-blocks N). Replaces eval_batches "
                             "(micro batches): eval_batches=N becomes N x micro_batch_size blocks.")
    seed: int = Field(42, description="Seed of the weight initialisation and of the python, numpy and "
                      "torch random generators of every rank; the training order follows data.seed.")
    on_nan: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss stops the run (stop) or skips the update (skip)."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _eval_batches_to_blocks(cls, data: Any, handler: Any) -> ScheduleConfig:
        # the old key counted micro batches: converted, it names the same blocks as it did
        if not isinstance(data, dict) or "eval_batches" not in data:
            return handler(data)
        data = dict(data)
        old = data.pop("eval_batches")
        if "eval_blocks" in data:
            raise ValueError("schedule.eval_batches and schedule.eval_blocks are both set: set "
                             "schedule.eval_blocks only (eval_batches, its old name, counted micro "
                             "batches)")
        micro = data.get("micro_batch_size", cls.model_fields["micro_batch_size"].default)
        if not isinstance(old, int) or not isinstance(micro, int) or old < 1:
            raise ValueError(f"schedule.eval_batches ({old!r}), the old name of schedule.eval_blocks, "
                             "must be a whole number of micro batches")
        schedule = handler({**data, "eval_blocks": old * micro})
        schedule._notice = (f"note: schedule.eval_batches={old} (micro batches of {micro}) is now "
                            f"schedule.eval_blocks={old * micro}, the same held-out blocks; rename it")
        return schedule

    _notice: str | None = PrivateAttr(None)  # what the conversion of an old key says, once, at launch

    @model_validator(mode="after")
    def _stop_rule(self) -> ScheduleConfig:
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set schedule.max_steps or schedule.max_tokens")
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"schedule.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"schedule.micro_batch_size ({self.micro_batch_size})"
            )
        return self  # warmup_steps beyond the run's steps: warmup over the steps it has (train.schedule)


class ParallelConfig(Section):
    """The ColossalAI plugin and its degrees of parallelism."""

    plugin: Literal[PLUGIN_NAMES] = Field(
        "ddp", description="ColossalAI booster plugin."
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Training precision (fp16 uses dynamic loss scaling)."
    )
    tp: int = Field(1, ge=1, description="Tensor-parallel degree (3d plugin).")
    pp: int = Field(1, ge=1, description="Pipeline-parallel degree (3d plugin).")
    zero_stage: Literal[0, 1, 2] = Field(0, description="ZeRO stage inside the 3d plugin.")
    sequence_parallel: bool = Field(False, description="Split activations along sequence (3d, tp>1).")
    num_microbatches: int | None = Field(
        None, ge=1, description="Pipeline micro batches per step (3d, pp>1); it must equal global batch / "
        "(micro batch x data-parallel size), which None derives."
    )
    gemini_placement: Literal["static", "auto"] = Field(
        "static", description="Gemini placement policy (gemini_auto forces auto)."
    )
    offload_optim_frac: float = Field(
        0.0, ge=0.0, le=1.0, description="Gemini: fraction of optimizer state kept on CPU."
    )
    gemini_async_reduce: bool | None = Field(
        None, description="Gemini: reduce gradient chunks on a side stream, overlapped with backward "
        "(true) or on the compute stream (false); None: on where chunks move to the host (auto "
        "placement, offload_optim_frac > 0), off otherwise.",
    )
    overlap_communication: bool = Field(True, description="Overlap gradient communication (zero).")

    @model_validator(mode="after")
    def _plugin_rules(self) -> ParallelConfig:
        plugins.check_parallel(self)
        return self


class CheckpointConfig(Section):
    """When checkpoints are written and which are kept."""

    every: int = Field(500, ge=0, description="Save every N steps (and at the end); 0 = only at end.")
    keep_last: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    keep_every: int = Field(
        0, ge=0, description="Also keep every checkpoint whose step is a multiple of N (0 = none)."
    )
    resume: str = Field("auto", description="auto (latest if any), never, or a checkpoint path.")
    save_optimizer: bool = Field(True, description="Save optimizer state (needed for exact resume).")
    verify: Literal["sizes", "full"] = Field(
        "sizes", description="What resume checks against a checkpoint's integrity.json: sizes (a stat per file; "
        "finds missing and truncated files) or full (also the sha256 of every file; reads it all once).",
    )


class WandbConfig(Section):
    """Weights & Biases logging from rank 0: the numbers of metrics.jsonl and the config, one W&B run
    per run directory (its id kept in RUN_DIR/wandb-run.json, so a resumed run logs into it)."""

    enabled: bool = Field(False, description="Log to Weights & Biases (pip install 'ominix[wandb]').")
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
    seed: int = Field(0, description="Sampling seed.")
    device: str = Field("auto", description="auto (cuda if present), cpu or cuda[:N].")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU."
    )


class OminixConfig(Section):
    """The whole configuration of a run."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Model shape.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data preparation and input.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Steps and LR.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Parallelism.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Run dir and logs.")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="Process launch.")
    infer: InferConfig = Field(default_factory=InferConfig, description="Generation.")
    release: ReleaseConfig = Field(default_factory=ReleaseConfig, description="MOF release metadata.")

    @model_validator(mode="after")
    def _cross_section(self) -> OminixConfig:
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_position_embeddings "
                f"({self.model.max_position_embeddings})"
            )
        p = self.parallel
        if p.tp > 1 and self.model.num_attention_heads % p.tp:
            raise ValueError(
                f"model.num_attention_heads ({self.model.num_attention_heads}) must be divisible by "
                f"parallel.tp ({p.tp})"
            )
        if p.tp > 1 and self.model.kv_heads % p.tp:
            raise ValueError(
                f"model.num_key_value_heads ({self.model.kv_heads}) must be divisible by "
                f"parallel.tp ({p.tp})"
            )
        if p.pp > self.model.num_hidden_layers:
            raise ValueError(
                f"parallel.pp ({p.pp}) exceeds model.num_hidden_layers ({self.model.num_hidden_layers})"
            )
        plugins.check_run(self)
        return self
