"""Document framing and the tokenizer a checkpoint carries: a LLaMA-style tokenizer (a BPE whose
post-processor prepends ``<s>``, built here with `tokenizers`), real `data prepare`, real training in
process (ColossalAI's booster on CPU), real export, infer and eval."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ominix.config import load_config
from ominix.errors import OminixError

DOCS = [f"Document {i} tells of a fox that jumps over {i % 7} lazy dogs and {i % 5} cats."
        for i in range(240)]
SEQ = 32
TRAIN = ["schedule.max_steps=2", "schedule.warmup_steps=1", "schedule.eval_every=2",
         "schedule.eval_blocks=4", "checkpoint.every=2", "logging.log_every=1", f"data.seq_len={SEQ}",
         "model.vocab_size=320"]


def llama_style_tokenizer(out: Path, cls: str = "PreTrainedTokenizerFast") -> Path:
    """A byte-level BPE whose post-processor prepends ``<s>`` (as LLaMA-2's and LLaMA-3's do),
    saved as a transformers tokenizer directory of class ``cls``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    getattr(transformers, cls)(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(out)
    return out


@pytest.mark.parametrize("cls", ["PreTrainedTokenizerFast", "LlamaTokenizerFast"])
def test_a_tokenizer_set_to_a_framing_keeps_it_through_save_and_reload(cls: str, tmp_path: Path) -> None:
    """LlamaTokenizerFast rebuilds its post-processor from add_bos_token when loaded; the framing
    set on it survives an export's save_pretrained either way, both ways round."""
    from transformers import AutoTokenizer

    from ominix.data.store import PLAIN, WITH_BOS
    from ominix.data.tokenizer import framing_of, set_framing
    from ominix.infer.export import save_tokenizer

    tok = AutoTokenizer.from_pretrained(llama_style_tokenizer(tmp_path / "tok", cls))
    assert type(tok).__name__ == cls and framing_of(tok) == WITH_BOS
    bare = tok("a fox", add_special_tokens=False).input_ids
    for framing, ids in ((PLAIN, bare), (WITH_BOS, [tok.bos_token_id, *bare])):
        set_framing(tok, framing)
        save_tokenizer(tok, tmp_path / framing)
        tok = AutoTokenizer.from_pretrained(tmp_path / framing)
        assert framing_of(tok) == framing and tok("a fox").input_ids == ids


def _prepare(root: Path) -> tuple[Path, Path]:
    from ominix.data.prepare import prepare

    tok = llama_style_tokenizer(root / "llama-tokenizer")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    cfg = load_config("tiny", [f"data.sources=[{corpus}]", f"data.tokenizer={tok}",
                               "data.train_tokenizer=false", f"data.seq_len={SEQ}",
                               "data.val_fraction=0.1"]).data
    prepare(cfg, root / "data", progress=False)
    return root / "data", tok


def _train(data: Path, run: Path) -> Path:
    import torch.distributed as dist

    from ominix.config import save_config
    from ominix.train import loop

    cfg = load_config("tiny", [*TRAIN, f"data.path={data}", f"logging.run_dir={run}"])
    save_config(cfg, run / "config.yaml")  # as the launcher does
    try:
        assert loop.train(cfg, run) == 0
    finally:  # train leaves its process group behind (the worker's main tears it down)
        if dist.is_initialized():
            dist.destroy_process_group()
    return run


def _train_docs(manifest: dict) -> list[str]:
    from ominix.data.pack import is_validation

    return [d for d in DOCS if not is_validation(d, manifest["seed"], manifest["val_fraction"])]


def _stream(data: Path, split: str = "train") -> np.ndarray:
    """The split's tokens in the order they were packed (one source set: blocks follow each other)."""
    from ominix.data.store import PackedDataset

    ds = PackedDataset(data, split, verify=False)
    return np.concatenate([ds[i] for i in range(len(ds))])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(prepared data, the LLaMA-style tokenizer, a run of 2 steps on the data)."""
    from tests.conftest import in_private_netns

    if not in_private_netns():
        pytest.fail("this test trains in process: run it in a private network namespace (see Makefile)")
    root = tmp_path_factory.mktemp("framing")
    data, tok = _prepare(root)
    yield data, tok, _train(data, root / "run")


def test_llama_style_tokenizer_frames_documents_bos_doc_eos_from_prepare_to_export(
        trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from ominix.data.summary import summarize
    from ominix.data.store import WITH_BOS, read_manifest
    from ominix.infer.export import export

    data, tok_dir, run = trained
    manifest = read_manifest(data)
    assert manifest["framing"] == summarize(data, samples=0)["framing"] == WITH_BOS
    bos, eos = manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["eos_id"]
    stream = _stream(data)
    # every document starts with <s> and ends with </s>: each </s> is followed by the next <s>
    assert stream[0] == bos
    ends = np.flatnonzero(stream == eos)
    assert len(ends) > 50 and (stream[ends[:-1] + 1] == bos).all()
    assert (stream == bos).sum() == len(ends) + (ends[-1] != len(stream) - 1)
    # the training tokens are, id for id, what the original tokenizer gives each document + EOS
    original = AutoTokenizer.from_pretrained(tok_dir)
    expected = np.concatenate([original(d).input_ids + [eos] for d in _train_docs(manifest)])
    assert stream.tolist() == expected[: len(stream)].tolist()

    log = (run / "train.log").read_text()
    assert f"documents framed {WITH_BOS};" in log
    ckpt = run / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "state.json").read_text())["framing"] == WITH_BOS
    record = json.loads((ckpt / "integrity.json").read_text())["files"]
    assert "tokenizer/tokenizer.json" in record and "tokenizer/tokenizer_config.json" in record

    meta = export(run, tmp_path / "hf")
    assert meta["framing"] == WITH_BOS
    exported = AutoTokenizer.from_pretrained(tmp_path / "hf")
    again = np.concatenate([exported(d).input_ids + [eos] for d in _train_docs(manifest)])
    assert again.tolist() == expected.tolist()


def test_a_run_copied_without_its_data_still_exports_infers_and_evals(
        trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The checkpoint carries its tokenizer: the run's data directory is gone (only a copy of the
    data elsewhere, for eval's --data), and the copied run still serves."""
    from transformers import AutoTokenizer

    from ominix.data.store import WITH_BOS, read_manifest
    from ominix.eval.run import run_eval
    from ominix.infer.export import export
    from ominix.infer.session import complete, open_session, settings

    data, tok_dir, run = trained
    copy, data_copy = tmp_path / "elsewhere" / "run", tmp_path / "elsewhere" / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data, data_copy)
    hidden = data.with_name("data-hidden")
    data.rename(hidden)  # the run's config.yaml names data.path; nothing is there now
    try:
        meta = export(copy, tmp_path / "hf")
        assert AutoTokenizer.from_pretrained(tmp_path / "hf")("a fox").input_ids == \
            AutoTokenizer.from_pretrained(tok_dir)("a fox").input_ids
        source, sampling, _ = settings(copy, {"temperature": 0.0, "max_new_tokens": 4})
        session = open_session(source, device="cpu", dtype="fp32", compile=False)
        record = complete(session, "Document 3 tells", sampling, lambda _text: None)
        prompt = session.encode("Document 3 tells")
        assert record["prompt_tokens"] == len(prompt) and record["completion_tokens"] == 4
        assert prompt[0] == read_manifest(hidden)["tokenizer"]["bos_id"] and meta["framing"] == WITH_BOS
        results = run_eval(copy, data=data_copy, max_blocks=8, device="cpu", dtype="fp32",
                           out=tmp_path / "eval.json")
        assert results["data"]["framing"] == results["model"]["framing"] == WITH_BOS
        assert 0 < results["perplexity"]["loss"] < 10
        # the carried tokenizer is checked against the checkpoint's integrity record before use
        config = copy / "checkpoints" / "step_00000002" / "tokenizer" / "tokenizer_config.json"
        config.write_text(config.read_text().replace('"</s>"', '"<s>"'))
        with pytest.raises(OminixError, match=r"tokenizer_config.json: (sha256 differs from integrity.json|size \d+ != \d+)"):
            export(copy, tmp_path / "hf2")
        assert not (tmp_path / "hf2").exists()
    finally:
        hidden.rename(data)


def _old_style(data: Path, tok_dir: Path, out: Path) -> Path:
    """``data`` as `data prepare` wrote it before framing: each document ``doc EOS`` (no BOS, though
    the tokenizer prepends one at inference) and no ``framing`` in the manifest."""
    from transformers import AutoTokenizer

    from ominix.data.pack import is_validation
    from ominix.data.store import ShardWriter, read_manifest

    manifest = read_manifest(data)
    del manifest["framing"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    shutil.copytree(data / "tokenizer", out / "tokenizer")
    width = SEQ + 1
    for split in ("train", "validation"):
        held_out = split != "train"
        docs = [d for d in DOCS if is_validation(d, manifest["seed"], manifest["val_fraction"]) == held_out]
        ids = np.array([i for d in docs
                        for i in [*tok(d, add_special_tokens=False).input_ids, tok.eos_token_id]])
        writer = ShardWriter(out, split, SEQ, np.dtype(manifest["dtype"]))
        writer.write(ids[: len(ids) // width * width].reshape(-1, width), 0)
        manifest["splits"][split]["shards"] = writer.close()
        manifest["splits"][split]["blocks"] = len(ids) // width
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_data_prepared_before_framing_trains_and_serves_as_it_was_framed(
        trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """An old manifest (no framing) loads and trains as ``doc EOS``; the checkpoint, the session and
    the export then frame a prompt without the BOS the model never saw, though the tokenizer adds one."""
    from transformers import AutoTokenizer

    from ominix.data.summary import summarize
    from ominix.data.store import PLAIN, PackedDataset
    from ominix.eval.run import run_eval
    from ominix.infer.export import export
    from ominix.infer.load import load_tokenizer, resolve

    data, tok_dir, _ = trained
    old = _old_style(data, tok_dir, tmp_path / "old-data")
    assert PackedDataset(old, verify=False).framing == summarize(old, samples=0)["framing"] == PLAIN
    run = _train(old, tmp_path / "run")
    assert f"documents framed {PLAIN};" in (run / "train.log").read_text()
    state = json.loads((run / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["framing"] == PLAIN

    original = AutoTokenizer.from_pretrained(tok_dir)
    text = "Document 3 tells of a fox"
    bare = original(text, add_special_tokens=False).input_ids
    assert original(text).input_ids == [original.bos_token_id, *bare]  # the tokenizer itself adds <s>
    assert load_tokenizer(resolve(run))(text).input_ids == bare
    export(run, tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text).input_ids == bare
    # a model trained on <s> doc </s> is not evaluated on doc </s> blocks: the loss would not compare
    with pytest.raises(OminixError, match="framed bos\\+doc\\+eos, the data .* frames them doc\\+eos"):
        run_eval(trained[2], data=old, max_blocks=8, device="cpu", out=tmp_path / "eval.json")
    assert not (tmp_path / "eval.json").exists()
