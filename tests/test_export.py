"""`ominix checkpoint export` / `list`: a real tokenizer, real safetensors checkpoints, real transformers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

CORPUS = (
    "Once upon a time there was a small model that learned to tell stories. "
    "It read the same few sentences again and again, and every time it was a little less surprised. "
    "The quick brown fox jumps over the lazy dog. OminiX exports a model that transformers can load. "
) * 4


def make_tokenizer(out: Path, vocab_size: int = 320) -> Path:
    """A byte-level BPE trained with `tokenizers`, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return out


def make_run(root: Path, seed: int = 0, steps: tuple[int, ...] = (10,), **model: object) -> Path:
    """A run directory in the documented layout: config.yaml, checkpoints/step_N/{model,state.json,
    config.yaml}, checkpoints/latest, and a prepared-data tokenizer that data.path points at."""
    from safetensors.torch import save_file

    from ominix.config import load_config, save_config
    from ominix.model import build_model

    data = root / "data"
    if not (data / "tokenizer").exists():
        make_tokenizer(data / "tokenizer")
    run = root / "run"
    flags = {"data.path": str(data), "logging.run_dir": str(run), "model.vocab_size": 384,
             **{f"model.{k}": v for k, v in model.items()}}
    cfg = load_config("tiny", flags=flags)
    save_config(cfg, run / "config.yaml")
    for i, step in enumerate(steps):
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        (ckpt / "model").mkdir(parents=True)
        state = {k: v.contiguous() for k, v in build_model(cfg.model, seed=seed + i).state_dict().items()}
        save_file(state, ckpt / "model" / "model.safetensors", metadata={"format": "pt"})
        (ckpt / "state.json").write_text(json.dumps({"step": step, "tokens": step * 2048, "last_loss": 7.0 - i}))
        save_config(cfg, ckpt / "config.yaml")
        (run / "checkpoints" / "latest").write_text(ckpt.name)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("export"))


def _fail(result, text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_export_loads_in_transformers_with_same_logits_and_tokenizer(run_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ominix.infer.load import load_model, resolve

    out = tmp_path / "hf"
    result = run_cli("checkpoint", "export", str(run_dir), "--out", str(out), "--dtype", "fp32",
                     "--max-shard-size", "300KB", "--json")
    assert result.returncode == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["verify"]["max_abs_logit_diff"] < 1e-4
    assert len(meta["files"]) > 1 and (out / "model.safetensors.index.json").is_file()
    from safetensors.torch import load_file

    from ominix.checkpoint import read_weights

    # the streamed shards hold exactly the checkpoint's tensors (fp32 -> fp32: bit for bit), each
    # file one safetensors' own reader accepts, shards filled in the model's order (layer 0 first)
    exported = {k: v for f in out.glob("model-*.safetensors") for k, v in load_file(f).items()}
    source = read_weights(run_dir / "checkpoints" / "step_00000010")
    assert exported.keys() == source.keys() and all(torch.equal(exported[k], source[k]) for k in source)
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["model.embed_tokens.weight"] <= weight_map["model.layers.0.mlp.down_proj.weight"] \
        <= weight_map["model.layers.3.mlp.down_proj.weight"] <= weight_map["lm_head.weight"]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".hf.tmp-*"))

    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours = load_model(resolve(run_dir))
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)
    assert tokenizer.decode(ids[0]) == "The quick brown fox"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id


def _greedy(model, tokenizer, prompts: list[str], n: int = 6) -> list[list[int]]:
    """The ``n`` greedy continuation ids of each prompt, generated as one padded batch."""
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return ids[:, batch.input_ids.shape[1]:].tolist()


def test_export_takes_the_standard_transformers_calls_and_has_a_hub_model_card(tmp_path: Path) -> None:
    """generate(**tok(...)) with no token_type_ids, left-padded batches equal to one prompt at a time
    (the test tokenizer has no pad token: the export pads with </s>), a README.md with Hub metadata."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ominix.config import load_config, save_config

    run = make_run(tmp_path)
    cfg = load_config(run / "config.yaml")
    cfg.release.licenses.distribution.name = "Apache-2.0"
    cfg.data.sources = ["HuggingFaceFW/fineweb-edu", str(tmp_path / "data")]
    save_config(cfg, run / "config.yaml")
    save_config(cfg, run / "checkpoints/step_00000010/config.yaml")
    (run / "eval").mkdir()
    (run / "eval" / "eval_results.json").write_text(json.dumps(
        {"perplexity": {"loss": 5.25, "perplexity": 190.57, "tokens": 4096}, "data": {"path": "d", "split": "val"}}))
    out = tmp_path / "hf"
    result = run_cli("checkpoint", "export", str(run), "--out", str(out), "--dtype", "fp32", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pad_token"] == {"token": "</s>", "id": 1, "from": "eos"}

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert tok.model_input_names == ["input_ids", "attention_mask"] and tok.padding_side == "left"
    assert tok.pad_token == "</s>" == tok.eos_token
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] == tok.pad_token_id == model.generation_config.pad_token_id
    encoded = tok("def", return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        assert model.generate(**encoded, max_new_tokens=4, do_sample=False).shape[1] <= encoded.input_ids.shape[1] + 4
    prompts = ["a", "longer prompt here"]
    batched = _greedy(model, tok, prompts)
    assert batched == [_greedy(model, tok, [p])[0] for p in prompts]

    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and "license_name" not in meta  # the Hub's own id
    assert tok.model_max_length == config["max_position_embeddings"]  # the model's context, not the data's blocks
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"] and "language" not in meta
    assert meta["tags"] == ["ominix", "llama", "pretraining", "text-generation"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"loss": 5.25, "perplexity": 190.57}
    assert "## Intended use" in text and cfg.release.limitations in text and "AutoTokenizer" in text

    # A license the Hub has no id for is `other`, named and linked, as the Hub reads it.
    cfg.release.licenses.distribution.name = "Python-2.0"
    save_config(cfg, run / "checkpoints/step_00000010/config.yaml")
    assert run_cli("checkpoint", "export", str(run), "--out", str(out), "--force", "--no-verify").returncode == 0
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "python-2.0", "https://spdx.org/licenses/Python-2.0.html")


def test_bf16_export_is_half_the_bytes_and_default_out_is_run_export(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    result = run_cli("checkpoint", "export", str(run), "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    out = run / "export"
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["LlamaForCausalLM"]
    fp32 = (run / "checkpoints/step_00000010/model/model.safetensors").stat().st_size
    assert abs((out / "model.safetensors").stat().st_size - fp32 / 2) < 0.01 * fp32
    again = run_cli("checkpoint", "export", str(run))
    _fail(again, "already exists")
    assert run_cli("checkpoint", "export", str(run), "--force", "--no-verify").returncode == 0


@pytest.mark.parametrize("case", ["not-a-checkpoint", "shape", "tokenizer", "dtype"])
def test_bad_input_is_one_line_exit_2_nothing_written(case: str, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    source, flags, expect = run, [], ""
    if case == "not-a-checkpoint":
        (tmp_path / "empty").mkdir()
        source, expect = tmp_path / "empty", "is not an OminiX run, checkpoint or Hugging Face export"
    elif case == "shape":  # the run config now says 6 layers; the weights have 4
        text = (run / "checkpoints/step_00000010/config.yaml").read_text()
        (run / "checkpoints/step_00000010/config.yaml").write_text(
            text.replace("num_hidden_layers: 4", "num_hidden_layers: 6"))
        expect = "do not fit the model config"
    elif case == "tokenizer":
        for f in (tmp_path / "data" / "tokenizer").iterdir():
            f.unlink()
        expect = "no tokenizer files"
    else:
        flags, expect = ["--dtype", "int8"], "unknown dtype 'int8'"
    out = tmp_path / "out"
    result = run_cli("checkpoint", "export", str(source), "--out", str(out), *flags)
    _fail(result, expect)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_checkpoint_list_shows_steps_tokens_loss_and_retention(tmp_path: Path) -> None:
    run = make_run(tmp_path, steps=(50, 100, 150))  # tiny preset: keep_last 2, keep_every 100
    result = run_cli("checkpoint", "list", str(run), "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["step"] for e in entries] == [50, 100, 150]
    assert [e["tokens_seen"] for e in entries] == [50 * 2048, 100 * 2048, 150 * 2048]
    assert entries[2]["kept"] == "latest, last 2"
    assert entries[1]["kept"] == "last 2, every 100"
    assert entries[0]["kept"] == ""
    assert all(e["bytes"] > 0 for e in entries)
    table = run_cli("checkpoint", "list", str(run))
    assert "step_00000150" in table.stdout and "removed at next save" in table.stdout
    _fail(run_cli("checkpoint", "list", str(tmp_path / "data")), "is not a run directory")


def test_real_pipeline_prepare_train_export_infer_eval(private_netns: None, tmp_path: Path) -> None:
    """The real producers: `ominix data prepare` (embedded corpus, trained tokenizer) and two steps
    of `ominix train launch tiny`, then export, greedy infer equal to transformers, and eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ominix.config import load_config
    from ominix.data.prepare import prepare
    from ominix.data.store import manifest_sha256

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    mask = os.umask(0o022)  # the files' modes are checked against it below
    prepare(load_config("tiny").data, data, progress=False)
    sets = ["checkpoint.every=2", "schedule.eval_every=2", "schedule.eval_blocks=8", "schedule.warmup_steps=1"]
    train = run_cli("train", "launch", "tiny", "--data", str(data), "--run-dir", str(run), "--max-steps", "2",
                    "--nproc-per-node", "1", *[a for s in sets for a in ("--set", s)], env={"OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]

    listed = json.loads(run_cli("checkpoint", "list", str(run), "--json").stdout)
    assert [(e["step"], e["tokens_seen"], e["kept"]) for e in listed] == [(2, 2 * 2048, "latest, last 2")]
    assert listed[0]["loss"] > 0

    exported = run_cli("checkpoint", "export", str(run), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    written = [p for d in (run / "checkpoints", out) for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written)
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in written}
    os.umask(mask)
    assert {p: oct(m) for p, m in modes.items() if m != 0o644} == {}
    # the tokenizer `data prepare` trained goes into a GGUF whose tokens are the trained ones
    import gguf

    gguf_meta = json.loads(run_cli("checkpoint", "export", str(run), "--format", "gguf", "--json").stdout)
    assert gguf_meta["tokenizer"] == {"model": "gpt2", "pre": "gpt-2", "add_bos_token": False}
    reader = gguf.GGUFReader(run / "export-gguf" / "model.gguf")
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert reader.fields["tokenizer.ggml.tokens"].contents()[:len(vocab)] == sorted(vocab, key=vocab.get)
    record = json.loads(run_cli("infer", "--model", str(out), "--prompt", "The function", "--temperature", "0",
                                "--max-new-tokens", "12", "--json").stdout)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The function", return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(out).generate(ids, max_new_tokens=12, do_sample=False)
    assert record["completion_ids"] == theirs[0, ids.shape[1]:].tolist()

    evaluated = run_cli("eval", "--model", str(run), "--max-blocks", "16", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert results["data"]["manifest_sha256"] == manifest_sha256(data)
    assert results["model"]["step"] == 2 and 0 < results["perplexity"]["loss"] < 10
    # the trainer's evaluation (eval_blocks 8) and `ominix eval` read the same blocks, whatever the batch
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val_loss = next(r["val_loss"] for r in val if r.get("step") == 2 and "val_loss" in r)
    same = run_cli("eval", "--model", str(run), "--batch-size", "3", "--max-blocks", "8", "--json")
    assert json.loads(same.stdout)["perplexity"]["loss"] == pytest.approx(val_loss, rel=1e-4)


def test_sharded_writer_hashes_what_it_writes(tmp_path: Path) -> None:
    """write_sharded returns each shard's sha256 as written (no second read), equal to the file's."""
    from ominix.checkpoint.weights import TensorSpec, read_weights, write_sharded
    from ominix.hashing import sha256_file

    tensors = {"a": torch.randn(100, 10), "b": torch.randn(50, dtype=torch.bfloat16), "c": torch.randn(300)}
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    for limit, count in ((10**9, 1), (2000, 2)):
        out = tmp_path / str(limit)
        out.mkdir()
        digests = write_sharded(specs, tensors.__getitem__, out, limit)
        assert len(digests) == count and digests == {name: sha256_file(out / name) for name in digests}
        back = read_weights(out)
        assert all(torch.equal(back[k], v) for k, v in tensors.items())
