"""`ominix infer`: greedy decoding equals transformers generate token for token; sampling, files, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli
from tests.test_export import make_run

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a wider init than training's makes the random model's logits far apart: no near-ties in argmax
    return make_run(tmp_path_factory.mktemp("infer"), initializer_range=0.3)


@pytest.fixture(scope="module")
def export_dir(run_dir: Path) -> Path:
    out = run_dir.parent / "export"
    result = run_cli("checkpoint", "export", str(run_dir), "--out", str(out), "--dtype", "fp32", "--no-verify")
    assert result.returncode == 0, result.stderr
    return out


def _infer(model: Path, *flags: str) -> dict:
    result = run_cli("infer", "--model", str(model), "--prompt", PROMPT, "--json", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_greedy_matches_transformers_generate_token_for_token(export_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = _infer(export_dir, "--temperature", "0", "--max-new-tokens", "40")
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1]:].tolist()
    assert record["completion_ids"] == theirs
    assert record["completion"] == tokenizer.decode(theirs, skip_special_tokens=True)
    assert record["prompt_tokens"] == ids.shape[1]


def test_run_checkpoint_and_export_give_the_same_greedy_text(run_dir: Path, export_dir: Path) -> None:
    a = _infer(run_dir, "--temperature", "0", "--max-new-tokens", "12")
    b = _infer(run_dir / "checkpoints" / "step_00000010", "--temperature", "0", "--max-new-tokens", "12")
    c = _infer(export_dir, "--temperature", "0", "--max-new-tokens", "12")
    assert a["completion_ids"] == b["completion_ids"] == c["completion_ids"]
    assert a["model"]["step"] == 10 and a["model"]["kind"] == "checkpoint"


def test_a_session_keeps_its_decoder_for_prompts_that_fit_it(run_dir: Path) -> None:
    """Calls whose prompt and completion fit the last decoder's power-of-two cache reuse it (its
    compiled step and graphs); a longer one gets a new decoder, and its text equals a fresh session's."""
    from ominix.infer.generate import Sampling, generate
    from ominix.infer.load import resolve
    from ominix.infer.session import cache_length, complete, open_session

    assert [cache_length(n, 4096) for n in (1, 64, 65, 200, 5000)] == [64, 64, 128, 256, 4096]
    session = open_session(resolve(run_dir), "cpu", "fp32", compile=False, kernels=False)
    sampling = Sampling(max_new_tokens=20, temperature=0)
    first = session.decoder(5, sampling)
    assert first.max_len == 64 and session.decoder(40, sampling) is first
    longer = session.decoder(50, sampling)
    assert longer is not first and longer.max_len == 128
    record = complete(session, PROMPT, sampling, lambda text: None)
    fresh = open_session(resolve(run_dir), "cpu", "fp32", compile=False, kernels=False)
    ids = fresh.encode(PROMPT)
    alone = generate(fresh.decoder(len(ids), sampling), ids, sampling, fresh.tokenizer.eos_token_id).tokens
    assert record["completion_ids"] == alone and len(alone) == 20


def test_sampling_is_reproducible_per_seed() -> None:
    from ominix.config import ModelConfig
    from ominix.infer.generate import Sampling, StaticDecoder, generate
    from ominix.model import build_model

    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attn="sdpa")
    decoder = StaticDecoder(build_model(cfg, seed=0).eval(), 64)

    def run(**kw) -> list[int]:
        return generate(decoder, [1, 2, 3], Sampling(max_new_tokens=20, **kw)).tokens

    sampled = dict(temperature=1.0, top_p=0.9, repetition_penalty=1.2)
    assert run(seed=1, **sampled) == run(seed=1, **sampled)
    assert run(seed=1, **sampled) != run(seed=2, **sampled)
    assert run(temperature=1.0, top_k=1, seed=5) == run(temperature=0)
    assert len(run(temperature=0.7, top_k=5)) == 20


@pytest.mark.parametrize("attention", ["sdpa", "dot"])
def test_static_decode_steps_equal_the_full_forward(attention: str) -> None:
    from ominix.config import ModelConfig
    from ominix.infer.generate import StaticDecoder
    from ominix.model import build_model

    cfg = ModelConfig(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32, attn="sdpa")
    model = build_model(cfg, seed=1).eval()
    ids = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(0))
    decoder = StaticDecoder(model, 20, attention=attention)
    steps = [decoder.prefill(ids[:, :5])] + [decoder.step(int(ids[0, i]), i) for i in range(5, 12)]
    with torch.no_grad():
        full = model(ids).logits[0, 4:]
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-5, atol=1e-5)


def test_a_prompt_padded_to_its_prefill_size_gives_the_same_logits_and_decoding() -> None:
    """The prefill graph's padding (tests/gpu runs the graph itself): the prompt padded with zeros to
    a power of two gives the last real position's logits, and decoding over the pads' cache rows
    gives the full forward's. Without a CUDA device there are no graphs: prefill runs eagerly."""
    from ominix.config import ModelConfig
    from ominix.infer.generate import StaticDecoder, prefill_size
    from ominix.model import build_model

    assert [prefill_size(n, 40) for n in (1, 16, 17, 33)] == [16, 16, 32, 40]
    cfg = ModelConfig(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=48, attn="sdpa")
    model = build_model(cfg, seed=1).eval()
    ids = torch.randint(1, 61, (1, 12), generator=torch.Generator().manual_seed(0))
    decoder = StaticDecoder(model, 40, prefill_graphs=True)
    assert not decoder.prefill_graphs  # no CUDA graphs on a CPU
    padded = torch.zeros(1, prefill_size(5, 40), dtype=torch.long)
    padded[:, :5] = ids[:, :5]
    with torch.no_grad():
        first = decoder._prompt_logits(padded, torch.tensor([4]))
    decoder.cache.pos = 5
    steps = [first] + [decoder.step(int(ids[0, i]), i) for i in range(5, 12)]
    with torch.no_grad():
        full = model(ids).logits[0, 4:]
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-5, atol=1e-5)


def test_decode_kernels_equal_the_full_forward() -> None:
    """OminiX's Triton decode kernels (run here by Triton's interpreter on the CPU, which must be
    chosen before Triton is imported: a fresh process; on a GPU by tests/gpu) give the decode step
    the logits of the full forward, eager and compiled."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = "from tests.test_infer import _decode_with_kernels as d; d(compile=False); d(compile=True)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _decode_with_kernels(compile: bool) -> None:
    from ominix.config import ModelConfig
    from ominix.infer.generate import StaticDecoder
    from ominix.model import build_model

    cfg = ModelConfig(vocab_size=61, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32, attn="sdpa")
    model = build_model(cfg, seed=1).eval()
    ids = torch.randint(0, 61, (1, 7), generator=torch.Generator().manual_seed(0))
    decoder = StaticDecoder(model, 8, compile=compile, kernels=True)  # 100: a partial block of columns
    steps = [decoder.prefill(ids[:, :5])] + [decoder.step(int(ids[0, i]), i) for i in range(5, 7)]
    with torch.no_grad():
        full = model(ids).logits[0, 4:]
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-5, atol=1e-5)


def test_decode_kernels_refused_where_they_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from ominix.config import ModelConfig
    from ominix.errors import OminixError
    from ominix.infer.generate import StaticDecoder
    from ominix.model import build_model

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = ModelConfig(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32)
    with pytest.raises(OminixError, match="need Triton and a CUDA device"):
        StaticDecoder(build_model(cfg, seed=1).eval(), 8, kernels=True)


def test_decode_kernels_refuse_a_head_size_they_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    from ominix.config import ModelConfig
    from ominix.errors import OminixError
    from ominix.infer import kernels
    from ominix.infer.generate import StaticDecoder
    from ominix.model import build_model

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # where the kernels could run, a head of 12 is refused
    cfg = ModelConfig(vocab_size=61, hidden_size=72, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32)
    assert [kernels.supports(d) for d in (12, 64, 128)] == [False, True, True]
    with pytest.raises(OminixError, match="power-of-two head sizes, this model's is 12"):
        StaticDecoder(build_model(cfg, seed=1).eval(), 8, kernels=True)


def test_streamed_prompt_and_completion_on_stdout(run_dir: Path) -> None:
    result = run_cli("infer", "--model", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", "8", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PROMPT)
    assert "tokens in" in result.stderr


def test_prompts_file_writes_samples_with_settings_and_checksum(run_dir: Path, tmp_path: Path) -> None:
    from ominix.checkpoint import model_checksum

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(["The", "It read"])))
    result = run_cli("infer", "--model", str(run_dir), "--prompts-file", str(prompts), "--max-new-tokens", "6",
                     "--temperature", "0.7", "--top-k", "20")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 1] and [r["prompt"] for r in records] == ["The", "It read"]
    checksum = model_checksum(run_dir / "checkpoints" / "step_00000010" / "model")
    for r in records:
        assert r["model"]["sha256"] == checksum
        assert r["settings"]["temperature"] == 0.7 and r["settings"]["top_k"] == 20
        assert r["settings"]["max_new_tokens"] == 6 and 1 <= r["completion_tokens"] <= 6
        assert r["settings"]["kernels"] is False  # the CPU decodes without OminiX's Triton kernels


def test_samples_never_replace_the_prompts_file_or_the_run_and_replace_their_own(run_dir: Path,
                                                                                tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "The"}) + "\n")
    config = (run_dir / "config.yaml").read_bytes()
    for out, needle in ((prompts, "is or contains the input"),
                        (run_dir / "config.yaml", "is one of the files of the training run")):
        result = run_cli("infer", "--model", str(run_dir), "--prompts-file", str(prompts), "--out", str(out), "--force")
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert prompts.read_text() == json.dumps({"prompt": "The"}) + "\n" and (run_dir / "config.yaml").read_bytes() == config
    out = tmp_path / "samples.jsonl"
    for _ in range(2):  # the second run replaces the first one's samples without --force
        result = run_cli("infer", "--model", str(run_dir), "--prompts-file", str(prompts), "--out", str(out),
                         "--max-new-tokens", "2")
        assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["written_by"] == "ominix infer"


@pytest.mark.parametrize("case", ["too-long", "dtype", "top-p", "kernels", "max-new-tokens", "temperature"])
def test_bad_input_exit_2_nothing_written(case: str, run_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    out = tmp_path / "samples.jsonl"
    long = "fox " * 400  # tiny preset context: 256 tokens
    prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": long}) + "\n")
    flags = {"too-long": [], "dtype": ["--dtype", "fp8"], "top-p": ["--top-p", "0"],
             "kernels": ["--device", "cpu", "--kernels"], "max-new-tokens": ["--max-new-tokens", "0"],
             "temperature": ["--temperature", "-1"]}[case]
    expect = {"too-long": "the model's context is 256", "dtype": "unknown dtype 'fp8'", "top-p": "--top-p",
              "kernels": "--kernels needs Triton and a CUDA device", "max-new-tokens": "--max-new-tokens",
              "temperature": "--temperature"}[case]
    result = run_cli("infer", "--model", str(run_dir), "--prompts-file", str(prompts), "--out", str(out), *flags)
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "Usage:" not in result.stderr  # one line, no usage box
    assert not out.exists() and not list(tmp_path.glob(".samples*"))


def test_too_long_single_prompt_prints_nothing_on_stdout(run_dir: Path) -> None:
    result = run_cli("infer", "--model", str(run_dir), "--prompt", "fox " * 400)
    assert result.returncode == 2 and result.stdout == ""
    assert "the model's context is 256" in result.stderr
