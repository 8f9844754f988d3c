"""Every configuration model of OminiX, nested by subsystem, with the rules a config must follow.

Plugin names and the rules that depend on the plugin come from ``ominix.plugins``; the checkpoint,
logging, launch and infer sections live in ``runtime``, the release section in ``release``,
``launch.slurm`` in ``slurm``, the shared base in ``section``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ominix import plugins
from ominix.config.renamed import rename_section, schema_extra
from ominix.config.release import ReleaseConfig
from ominix.config.runtime import CheckpointConfig, InferConfig, LaunchConfig, LoggingConfig
from ominix.config.section import Section
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
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the decoder (fuses norms, rotary, SwiGLU and FP8 casts): true, "
        "false, or auto (on with CUDA, off on the CPU); a compile that fails falls back to eager with "
        "one notice.",
    )
    fp8: Literal["off", "tensorwise", "rowwise"] = Field(
        "off", description="FP8 matmuls in the decoder layers through torchao's float8 training "
        "(pip install 'ominix[fp8]'; a GPU with compute capability 8.9+): tensorwise or rowwise "
        "scaling; the embedding and lm_head stay in the training dtype.",
    )
    compile_scope: Literal["auto", "layers", "ops"] = Field(
        "auto",
        description="What model.compile compiles: whole decoder layers (auto, layers; under gemini each "
        "layer runs as one compiled region between its parameter hooks), or only the parameter-free "
        "kernels (ops: norm, rotary, SwiGLU).",
    )
    loss_chunk: int = Field(
        8192, ge=0, description="Tokens per chunk of the fused lm_head + cross-entropy; 0 = unfused."
    )
    recompute_activations: bool = Field(
        False, description="Activation recompute (also called activation or gradient checkpointing; "
        "nothing to do with the checkpoint section, which saves the run): keep fewer of each decoder "
        "layer's activations and recompute them in backward, trading compute for memory. Old name: "
        "model.gradient_checkpointing.",
    )
    recompute_policy: Literal["full", "selective"] = Field(
        "full", description="With recompute_activations, what backward recomputes: full (the whole layer; "
        "least memory) or selective (keep matmul and attention outputs, recompute norms, rotary, SwiGLU "
        "and adds; less recompute, more memory). Old name: model.checkpoint_policy.",
    )
    init_from: str | None = Field(
        None, description="Hugging Face weights directory or Hub id to start from (continued pretraining)."
    )

    # how the model runs, starts or is named, not what function its weights compute: a checkpoint
    # resumes under other values of these, every other field (a new one included) must match
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "name", "initializer_range", "attn", "compile", "fp8", "compile_scope", "loss_chunk",
        "recompute_activations", "recompute_policy", "init_from",
    })

    model_config = ConfigDict(json_schema_extra=schema_extra("model"))

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return rename_section("model", data)

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
    eval_tasks: list[str] = Field(
        [], description="lm-evaluation-harness tasks run on rank 0 at each evaluation (eval_every) and "
        "at the end: task names, or local task YAML files (their data_files relative to the file) for "
        "offline clusters. Needs pip install 'ominix[eval]'."
    )
    eval_task_limit: int | None = Field(
        100, ge=1, description="Documents per lm-eval task at each evaluation (the first N), so in-loop "
        "tasks stay cheap; None = every document."
    )
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

    _renamed: list[str] = PrivateAttr(default_factory=list)  # load_config's notices of old key names

    def notices(self) -> list[str]:
        """One line per old key the config was given (renamed or converted), for a command to show."""
        return [*self._renamed, *filter(None, [self.schedule._notice])]

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
