"""Config models: presets, unknown keys, --set typing, precedence, cross-field rules, schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ominix.config import OminixConfig, load_config, parse_set, preset_names, save_config, schema
from ominix.errors import OminixError
from ominix.plugins import PLUGINS
from tests.conftest import run_cli

PRESETS = ["llama2-13b", "llama2-70b", "llama2-7b", "tiny", "tinyllama-1.1b"]


def test_all_presets_ship() -> None:
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name: str) -> None:
    cfg = load_config(name)
    assert cfg.model.name == name
    assert cfg.data.seq_len <= cfg.model.max_position_embeddings


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_lays_out_on_its_own_nodes(name: str) -> None:
    """Each preset's batch, micro batch and parallel degrees divide the world its launch section
    names (the check a launch makes before it reaches any node)."""
    from ominix.train.parallel_layout import validate

    cfg = load_config(name)
    layout = validate(cfg, cfg.launch.nodes * (cfg.launch.nproc_per_node or 1), gpu=True)
    assert layout.global_batch == cfg.schedule.global_batch_size and layout.accum >= 1


def test_reference_run_preset() -> None:
    cfg = load_config("llama2-7b")
    assert cfg.parallel.plugin == "gemini"
    assert cfg.schedule.micro_batch_size == 16
    assert cfg.data.seq_len == 4096
    assert cfg.model.recompute_activations and cfg.model.attn == "auto"
    assert (cfg.launch.nodes, cfg.launch.nproc_per_node) == (4, 8)
    assert cfg.schedule.global_batch_size == 16 * 4 * 8


def test_70b_is_3d_parallel() -> None:
    cfg = load_config("llama2-70b")
    assert cfg.parallel.plugin == "3d" and cfg.parallel.tp * cfg.parallel.pp == 32


def test_unknown_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  hidden_sise: 64\n")
    with pytest.raises(OminixError, match=r"unknown setting 'model.hidden_sise'"):
        load_config(f)


def test_unknown_section_is_named() -> None:
    with pytest.raises(OminixError, match=r"unknown setting 'trainer'"):
        load_config(None, ["trainer.lr=1"])


@pytest.mark.parametrize(
    ("item", "parts", "value"),
    [("optim.lr=1e-4", ["optim", "lr"], "1e-4"), ("schedule.max_steps=20", ["schedule", "max_steps"], 20),
     ("model.recompute_activations=true", ["model", "recompute_activations"], True),
     ("data.sources=[a.jsonl, b.jsonl]", ["data", "sources"], ["a.jsonl", "b.jsonl"]),
     ("data.tokenizer=null", ["data", "tokenizer"], None), ("logging.run_dir=a=b", ["logging", "run_dir"], "a=b")],
)
def test_set_values_are_typed(item: str, parts: list[str], value: object) -> None:
    assert parse_set(item) == (parts, value)


def test_set_coerces_into_field_types() -> None:
    cfg = load_config("tiny", ["optim.lr=1e-2", "schedule.max_steps=70", "parallel.tp=1"])
    assert cfg.optim.lr == pytest.approx(1e-2) and cfg.schedule.max_steps == 70


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=3", "a.b=[unclosed"])
def test_malformed_set_is_rejected(item: str) -> None:
    with pytest.raises(OminixError):
        parse_set(item)


def test_wrongly_typed_set_names_the_setting() -> None:
    with pytest.raises(OminixError) as err:
        load_config("tiny", ["schedule.max_steps=many"])
    assert "schedule.max_steps" in err.value.message
    assert "schedule.max_steps" in err.value.hint


def test_precedence_defaults_yaml_set_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.01\n  min_lr: 0.0\nschedule:\n  max_steps: 10\n  warmup_steps: 0\n")
    assert OminixConfig().optim.lr == 3e-4
    assert load_config(f).optim.lr == 0.01
    assert load_config(f, ["optim.lr=0.02"]).optim.lr == 0.02
    cfg = load_config(f, ["optim.lr=0.02"], {"optim.lr": 0.03, "schedule.max_steps": None})
    assert cfg.optim.lr == 0.03
    assert cfg.schedule.max_steps == 10  # a flag left unset does not override


@pytest.mark.parametrize(
    ("sets", "named"),
    [(["schedule.micro_batch_size=5"], "schedule.micro_batch_size"),
     (["model.num_key_value_heads=3"], "model.num_key_value_heads"),
     (["parallel.tp=2"], "parallel.plugin=3d"),
     (["parallel.plugin=3d", "parallel.tp=3"], "parallel.tp"),
     (["data.seq_len=1024"], "model.max_position_embeddings"),
     (["optim.min_lr=1"], "optim.min_lr"),
     (["data.tokenizer=tok.json"], "data.train_tokenizer")],
)
def test_cross_field_rules_name_the_setting(sets: list[str], named: str) -> None:
    with pytest.raises(OminixError) as err:
        load_config("tiny", sets)
    assert named in err.value.message


def test_missing_preset_lists_presets() -> None:
    with pytest.raises(OminixError) as err:
        load_config("llama9")
    assert "tiny" in err.value.hint


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("model: [\n")
    with pytest.raises(OminixError, match="not valid YAML"):
        load_config(f)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config("llama2-70b")
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_every_field_has_a_description() -> None:
    def walk(node: dict, defs: dict, path: str) -> None:
        for name, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{path}{name} has no description"
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
            if ref:
                walk(defs[ref.split("/")[-1]], defs, f"{path}{name}.")

    s = schema()
    walk(s, s["$defs"], "")


# --- renamed keys: activation recompute was named like the checkpoint section (saving) ------------

OLD_KEYS = {"gradient_checkpointing": "recompute_activations", "checkpoint_policy": "recompute_policy"}


def test_old_key_names_in_yaml_and_set_give_the_new_keys_config_and_one_notice(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("model:\n  gradient_checkpointing: true\n  checkpoint_policy: selective\n")
    new.write_text("model:\n  recompute_activations: true\n  recompute_policy: selective\n")
    wanted = load_config(new).model_dump()
    assert wanted["model"]["recompute_activations"] and load_config(new).notices() == []
    from_file = load_config(old)
    from_set = load_config(None, ["model.gradient_checkpointing=true", "model.checkpoint_policy=selective"])
    for cfg, origin in ((from_file, str(old)), (from_set, "--set model.")):
        assert cfg.model_dump() == wanted
        assert [n for n in cfg.notices() if "gradient_checkpointing" in n] == [
            f"note: model.gradient_checkpointing is now model.recompute_activations: {origin}"
            + ("" if cfg is from_file else "gradient_checkpointing=true")
            + " uses the old name, read as the new one; rename it"]
        assert len(cfg.notices()) == 2 and not set(OLD_KEYS) & set(cfg.model_dump()["model"])
    # the same old key in the file and in --set: still one notice; a later layer still wins
    both = load_config(old, ["model.gradient_checkpointing=false"])
    assert not both.model.recompute_activations and len(both.notices()) == 2
    assert not load_config(new, ["model.gradient_checkpointing=false"]).model.recompute_activations
    assert load_config(old, ["model.recompute_policy=full"]).model.recompute_policy == "full"
    old.write_text("model:\n  gradient_checkpointing: true\n  recompute_activations: false\n")
    with pytest.raises(OminixError, match="gradient_checkpointing and model.recompute_activations are both set"):
        load_config(old)


def test_old_key_names_in_a_saved_state_and_in_the_schema() -> None:
    """A checkpoint's state.json of an older version validates (a resume compares it); the JSON
    Schema lists the old names as deprecated, so an editor accepts an older config file."""
    from ominix.config import ModelConfig

    saved = ModelConfig.model_validate({"gradient_checkpointing": True, "checkpoint_policy": "selective"})
    assert (saved.recompute_activations, saved.recompute_policy) == (True, "selective")
    props = schema()["$defs"]["ModelConfig"]["properties"]
    for old, new in OLD_KEYS.items():
        assert props[old]["deprecated"] and f"model.{new}" in props[old]["description"]
        assert props[old]["type"] == props[new].get("type") and "deprecated" not in props[new]


def test_config_show_prints_an_old_key_under_its_new_name_with_one_notice() -> None:
    result = run_cli("config", "show", "tiny", "--set", "model.gradient_checkpointing=true")
    assert result.returncode == 0, result.stderr
    assert "  recompute_activations: true\n" in result.stdout and "gradient_checkpointing" not in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("note:")] == [
        "note: model.gradient_checkpointing is now model.recompute_activations: --set "
        "model.gradient_checkpointing=true uses the old name, read as the new one; rename it"]


# --- plugin rules that depend on the config alone: refused at load, so `config show` and --dry-run
# refuse what training would (the rules live in ominix/plugins.py) -----------------------------------

PLUGIN_RULES = [
    (["parallel.zero_stage=1"], "parallel.zero_stage applies to the 3d plugin only", "--plugin zero2"),
    (["parallel.plugin=3d", "parallel.pp=2", "parallel.zero_stage=2"], "ZeRO stage 2 cannot", "zero_stage=1"),
    (["parallel.plugin=gemini", "parallel.precision=fp32"], "gemini trains in bf16 or fp16", "precision=bf16"),
    (["parallel.plugin=gemini_auto", "parallel.precision=fp32"], "gemini_auto trains in bf16", "precision=bf16"),
    (["parallel.plugin=3d", "parallel.pp=2", "model.tie_word_embeddings=true"], "tied embeddings cannot",
     "model.tie_word_embeddings=false"),
    (["parallel.plugin=fsdp", "optim.optimizer=hybrid_adam"], "cannot resume HybridAdam", "optim.optimizer=auto"),
    (["parallel.plugin=3d", "parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_len=127"],
     r"data.seq_len \(127\) must be divisible by parallel.tp \(2\)", "sequence_parallel=false"),
]


@pytest.mark.parametrize(("sets", "message", "hint"), PLUGIN_RULES)
def test_plugin_rules_are_refused_when_the_config_loads(sets: list[str], message: str, hint: str) -> None:
    with pytest.raises(OminixError, match=message) as err:
        load_config("tiny", sets)
    assert hint in err.value.hint


def test_plugin_rules_let_valid_combinations_through() -> None:
    load_config("tiny", ["parallel.plugin=3d", "parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1",
                         "parallel.sequence_parallel=true"])
    load_config("tiny", ["parallel.plugin=gemini", "parallel.precision=bf16"])
    load_config("tiny", ["parallel.plugin=fsdp", "optim.optimizer=adamw"])


def test_plugin_names_come_from_the_plugin_table() -> None:
    with pytest.raises(OminixError) as err:
        load_config("tiny", ["parallel.plugin=zero3"])
    assert all(f"'{name}'" in err.value.message for name in PLUGINS)
    assert schema()["$defs"]["ParallelConfig"]["properties"]["plugin"]["enum"] == list(PLUGINS)


def test_config_show_refuses_a_plugin_rule_with_exit_2() -> None:
    result = run_cli("config", "show", "tiny", "--set", "parallel.plugin=gemini")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and "gemini trains in bf16 or fp16, not fp32" in lines[0]
    assert lines == [lines[0], "hint: set parallel.precision=bf16"]


def test_config_and_plugin_table_import_no_torch() -> None:
    code = "import sys, ominix.config, ominix.plugins; assert 'torch' not in sys.modules and 'colossalai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_seed_says_what_it_seeds() -> None:
    """The loader orders the training blocks by data.seed (``loop._train``); schedule.seed seeds the
    weights and the random generators, and its description must not claim the data order."""
    props = schema()["$defs"]
    schedule_seed = props["ScheduleConfig"]["properties"]["seed"]["description"]
    assert "data order" not in schedule_seed and "training order follows data.seed" in schedule_seed
    assert "weight initialisation" in schedule_seed
    assert "training order" in props["DataConfig"]["properties"]["seed"]["description"]


def test_a_section_given_to_set_as_a_mapping_merges_into_the_preset() -> None:
    cfg = load_config("tiny", sets=["model={hidden_size: 96, rope_theta: 5000.0}"])
    tiny = load_config("tiny").model
    assert cfg.model.hidden_size == 96 and cfg.model.rope_theta == 5000.0
    assert cfg.model.model_dump(exclude={"hidden_size", "rope_theta"}) == tiny.model_dump(
        exclude={"hidden_size", "rope_theta"})


@pytest.mark.parametrize(("text", "key", "line"), [
    ("model:\n  hidden_size: 64\n  hidden_size: 32\n", "hidden_size", 3),
    ("model:\n  name: a\noptim:\n  lr: 0.1\nmodel:\n  name: b\n", "model", 5),
    ("launch:\n  node_env:\n    h1: {A: '1', A: '2'}\n", "A", 3),
])
def test_a_duplicate_yaml_key_is_an_error_naming_the_key_and_line(tmp_path: Path, text: str, key: str,
                                                                   line: int) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(OminixError, match=f"dup.yaml: line {line}: duplicate key '{key}'"):
        load_config(path)


@pytest.mark.parametrize("item", ["model.rope_theta=.inf", "optim.lr=.inf", "optim.lr=.nan",
                                  "infer.temperature=-.inf", "model.rms_norm_eps=.NaN"])
def test_non_finite_floats_are_refused_naming_the_field(item: str) -> None:
    field = item.partition("=")[0]
    with pytest.raises(OminixError, match=f"{field}: Input should be a finite number"):
        load_config("tiny", sets=[item])


@pytest.mark.parametrize(("flag", "value"), [("temperature", float("inf")), ("top_p", float("nan")),
                                             ("repetition_penalty", float("inf"))])
def test_infer_refuses_non_finite_sampling_flags(tmp_path: Path, flag: str, value: float) -> None:
    import torch
    from safetensors.torch import save_file

    from ominix.checkpoint.layout import checkpoints_dir, step_name, write_latest
    from ominix.infer.session import settings

    save_config(load_config("tiny"), tmp_path / "config.yaml")
    ckpt = checkpoints_dir(tmp_path) / step_name(1)
    (ckpt / "model").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, ckpt / "model" / "model.safetensors")
    (ckpt / "state.json").write_text('{"step": 1}')
    write_latest(ckpt.parent, ckpt.name)
    with pytest.raises(OminixError, match=f"--{flag.replace('_', '-')}: Input should be a finite number"):
        settings(tmp_path, {flag: value})
