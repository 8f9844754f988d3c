"""The bad-input sweep: every command fed what a hostile new user types, as data.

Each ``Case`` names a command, what is wrong with its input, the argv (``{tmp}``, ``{data}``,
``{run}`` and ``{export}`` are filled in), an optional ``setup`` that builds the bad input in the
case's own directory, and the outcome a user must get:

- ``clean-error``: exit 1 or 2, one ``error:`` line and one ``hint:`` line on stderr, no traceback;
- ``usage``: a mistyped command or option, or a value outside an option's range, refused by the
  command-line parser (exit 2, Typer's usage box); an ``error:``/``hint:`` pair is accepted too;
- ``ok``: the documented exit code (0 unless ``rc`` says otherwise) and ``check`` finds the result right;
- ``notice``: exit 0 and a warning line holding ``needle``.

``tests/test_sweep.py`` asserts these; ``scripts/bad_input_sweep.py`` writes ``docs/BAD_INPUTS.md``.
The shared inputs (``build_fixtures``) are a prepared dataset, a 3-step run with one checkpoint and
its export; a setup that damages one of them works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, run_cli

CLEAN, USAGE, OK, NOTICE = "clean-error", "usage", "ok", "notice"
OUTCOMES = ("clean", "usage", "correct", "notice", "traceback", "silent-wrong", "unclean", "hang")
ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


@dataclass(frozen=True)
class Paths:
    """Where one case runs: its own empty directory and the shared (read-only) inputs."""

    tmp: Path
    data: Path
    run: Path
    export: Path


@dataclass(frozen=True)
class Case:
    id: str
    command: str
    wrong: str
    argv: tuple[str, ...]
    expect: str = CLEAN
    needle: str = ""  # CLEAN: a piece of the error line; NOTICE: a piece of the warning line
    setup: Callable[[Paths], None] | None = None
    check: Callable[[Paths, subprocess.CompletedProcess], bool] | None = None
    rc: int = 0  # OK: the exit code that means success for this command
    xfail: str = ""  # "fixed by <part>" while another branch owns the fix
    timeout: float = 120


@dataclass(frozen=True)
class Observed:
    outcome: str
    code: int | None
    first_line: str
    seconds: float = 0.0


# --- outcome ------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def observe(case: Case, paths: Paths, result: subprocess.CompletedProcess | None) -> Observed:
    """Classify one run: what a user saw, in the sweep's outcome names."""
    if result is None:
        return Observed("hang", None, f"no exit after {case.timeout:.0f} s")
    out, err = _lines(result.stdout), _lines(result.stderr)
    errors = [line for line in err if line.startswith(("error:", "error (rank"))]
    hints = [line for line in err if line.startswith("hint:")]
    if any(line.startswith("Traceback") for line in out + err):
        last = next((line for line in reversed(err) if "Error" in line or "Exception" in line), err[-1])
        return Observed("traceback", result.returncode, last)
    if result.returncode in (1, 2) and len(errors) == 1 and len(hints) == 1:
        return Observed("clean", result.returncode, errors[0])
    if result.returncode == 2 and any(line.startswith("Usage:") for line in err):
        box = [line.strip("│ ") for line in err if line.startswith("│")]
        return Observed("usage", 2, " ".join(box))
    right = case.check is None or case.check(paths, result)
    if case.expect == OK and result.returncode == case.rc and right:
        return Observed("correct", result.returncode, (out or err or [""])[0])
    if case.expect == NOTICE and result.returncode == 0:
        notes = [line for line in err + out if case.needle in line]
        if notes and right:
            return Observed("notice", 0, notes[0])
    if result.returncode == 0:
        return Observed("silent-wrong", 0, (out or err or ["(no output)"])[0])
    return Observed("unclean", result.returncode, (err or out or ["(no output)"])[-1])


def as_expected(case: Case, seen: Observed) -> bool:
    """True when the observed outcome is the one the case asks for."""
    if case.expect == CLEAN:
        return seen.outcome == "clean" and case.needle in seen.first_line
    if case.expect == USAGE:
        return seen.outcome in ("usage", "clean")
    return seen.outcome == {OK: "correct", NOTICE: "notice"}[case.expect]


def run_case(case: Case, paths: Paths) -> Observed:
    if case.setup is not None:
        case.setup(paths)
    fill = {"tmp": paths.tmp, "data": paths.data, "run": paths.run, "export": paths.export}
    argv = [a.format(**fill) for a in case.argv]
    started = time.perf_counter()
    try:
        result = run_cli(*argv, cwd=paths.tmp, env=ENV, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        result = None
    seen = observe(case, paths, result)
    line = seen.first_line  # the same text on every machine: placeholders for the sweep's directories
    for path, name in ((paths.tmp, "{tmp}"), (paths.data, "{data}"), (paths.run, "{run}"),
                       (paths.export, "{export}"), (REPO, "{repo}")):
        line = line.replace(str(path), name)
    return Observed(seen.outcome, seen.code, line, time.perf_counter() - started)


def run_all(cases: list[Case], shared: Paths, root: Path, workers: int | None = None) -> dict[str, Observed]:
    """Run ``cases`` (each in ``root/ID``), a few at a time: most are one CLI start."""
    def one(case: Case) -> tuple[str, Observed]:
        tmp = root / case.id
        tmp.mkdir(parents=True)
        return case.id, run_case(case, Paths(tmp, shared.data, shared.run, shared.export))

    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, cases))


def build_fixtures(root: Path, data: Path | None = None) -> Paths:
    """The shared inputs, built once: the tiny preset's data (prepared here unless ``data`` is
    given), a 3-step run (1 process, one checkpoint) and its fp32 export."""
    prepare = [] if data else [("data", "prepare", "--config", "tiny", "--out", str(root / "data"))]
    data, run, export = data or root / "data", root / "run", root / "export"
    steps = ["--set", "schedule.warmup_steps=1", "--set", "checkpoint.every=3", "--set", "schedule.eval_every=3",
             "--set", "schedule.eval_blocks=8"]
    for argv in (*prepare,
                 ("train", "launch", "tiny", "--data", str(data), "--run-dir", str(run), "--max-steps", "3", *steps),
                 ("checkpoint", "export", str(run), "--out", str(export), "--dtype", "fp32", "--no-verify")):
        result = run_cli(*argv, env=ENV, timeout=600)
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
    return Paths(root, data, run, export)


# --- setups -------------------------------------------------------------------------------------


def write(name: str, text: str | bytes) -> Callable[[Paths], None]:
    """A setup writing ``text`` to ``{tmp}/name``."""
    def setup(p: Paths) -> None:
        path = p.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def copy(what: str, name: str, then: Callable[[Path], None] = lambda _: None) -> Callable[[Paths], None]:
    """A setup copying the shared ``what`` (data, run, export) to ``{tmp}/name``, then changing it."""
    def setup(p: Paths) -> None:
        dst = p.tmp / name
        shutil.copytree(getattr(p, what), dst, symlinks=True)
        then(dst)
    return setup


def both(*setups: Callable[[Paths], None]) -> Callable[[Paths], None]:
    def setup(p: Paths) -> None:
        for s in setups:
            s(p)
    return setup


def flip_byte(rel: str, value: int = 0xFF) -> Callable[[Path], None]:
    """Overwrite two bytes in the middle of a file (same size; a uint16 token of 65535)."""
    def change(root: Path) -> None:
        path = root / rel
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2 & ~1
        raw[middle:middle + 2] = bytes([value, value])
        path.write_bytes(bytes(raw))
    return change


def stage_half(ckpt: str, staging: str) -> Callable[[Path], None]:
    """What a write killed midway leaves: the staging directory with the first half of the
    checkpoint's weights, no record."""
    def change(root: Path) -> None:
        weights = root / staging / "model" / "model-00001.safetensors"
        weights.parent.mkdir(parents=True)
        raw = (root / ckpt / "model" / "model-00001.safetensors").read_bytes()
        weights.write_bytes(raw[: len(raw) // 2])
    return change


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / rel
        raw = path.read_bytes()
        path.write_bytes(raw[:int(len(raw) * keep)])
    return change


def remove(rel: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return change


def edit_json(rel: str, **values: object) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / rel
        doc = json.loads(path.read_text())
        doc.update(values)
        path.write_text(json.dumps(doc))
    return change


def _garble_header(path: Path) -> None:
    """A safetensors file whose header (length-prefixed JSON) is not JSON; its size unchanged."""
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"{garble!"
    path.write_bytes(bytes(raw))


def _drop_manifest_field(key: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        del manifest[key]
        (root / "manifest.json").write_text(json.dumps(manifest))
    return change


def relative_data(rel: str) -> Callable[[Path], None]:
    """A run's config.yaml and its checkpoints' with data.path ``rel``, relative (as a run launched
    before launches recorded it absolute)."""
    import yaml

    from ominix.hashing import sha256_file

    def change(root: Path) -> None:
        for config in [root / "config.yaml", *root.glob("checkpoints/step_*/config.yaml")]:
            doc = yaml.safe_load(config.read_text())
            doc["data"]["path"] = rel
            config.write_text(yaml.safe_dump(doc))
            record = config.parent / "integrity.json"  # the checkpoint recorded the config it wrote
            if record.is_file():
                entries = json.loads(record.read_text())
                entries["files"]["config.yaml"] = {"size": config.stat().st_size, "sha256": sha256_file(config)}
                record.write_text(json.dumps(entries))
    return change


def other_tokenizer(root: Path) -> None:
    """The prepared directory's tokenizer given other ids (two tokens swapped), its manifest updated
    to match: data as another tokenizer would have prepared it."""
    from ominix.hashing import sha256_file

    file = root / "tokenizer" / "tokenizer.json"
    doc = json.loads(file.read_text())
    vocab = doc["model"]["vocab"]
    first, second = list(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    file.write_text(json.dumps(doc))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = sha256_file(file)
    (root / "manifest.json").write_text(json.dumps(manifest))


def corpus(name: str, records: int = 60, field: str = "text") -> Callable[[Paths], None]:
    lines = [json.dumps({field: f"Record {i}: the quick brown fox jumps over the lazy dog {i * 7}."})
             for i in range(records)]
    return write(name, "\n".join(lines) + "\n")


# --- checks -------------------------------------------------------------------------------------


def stdout_has(*needles: str) -> Callable[[Paths, subprocess.CompletedProcess], bool]:
    return lambda p, r: all(n in r.stdout for n in needles)


def file_has(name: str, needle: str) -> Callable[[Paths, subprocess.CompletedProcess], bool]:
    return lambda p, r: (p.tmp / name).is_file() and needle in (p.tmp / name).read_text()


def json_out(test: Callable[[object], bool]) -> Callable[[Paths, subprocess.CompletedProcess], bool]:
    def check(p: Paths, r: subprocess.CompletedProcess) -> bool:
        try:
            return bool(test(json.loads(r.stdout)))
        except (ValueError, KeyError, TypeError):
            return False
    return check


def unchanged(name: str) -> Callable[[Paths, subprocess.CompletedProcess], bool]:
    return lambda p, r: (p.tmp / name / "keep.txt").read_text() == "mine"


KEEP = write("mine/keep.txt", "mine")
SEQ = ("--set", "schedule.warmup_steps=1")


# --- the cases ----------------------------------------------------------------------------------

D = ("{data}",)
HOSTS = "n1 slots=1\nn2 slots=1\n"
MOF_FILE_TEXT = ("framework:\n  name: Model Openness Framework\n  version: '1.0'\n  date: '2024-12-15'\n"
                 "release:\n  name: m\n  producer: p\n  license: {}\n  components:\n  - name: Model card\n")

CASES: list[Case] = [
    # config show / schema / presets
    Case("cfg-preset-typo", "config show", "preset name mistyped", ("config", "show", "tny"), needle="'tny'"),
    Case("cfg-key-typo", "config show", "--set key mistyped", ("config", "show", "tiny", "--set", "model.hiden_size=3"),
         needle="unknown setting 'model.hiden_size'"),
    Case("cfg-wrong-type", "config show", "--set integer given a word",
         ("config", "show", "tiny", "--set", "model.hidden_size=abc"), needle="model.hidden_size"),
    Case("cfg-set-no-value", "config show", "--set without =value", ("config", "show", "tiny", "--set", "optim.lr"),
         needle="section.key=value"),
    Case("cfg-set-section", "config show", "--set replaces a whole section with a number",
         ("config", "show", "tiny", "--set", "model=3"), needle="model"),
    Case("cfg-set-section-merge", "config show",
         "--set a whole section as a mapping (merges into the preset)",
         ("config", "show", "tiny", "--set", "model={{hidden_size: 96}}"), OK,
         check=stdout_has("hidden_size: 96", "vocab_size: 2048", "name: tiny")),
    Case("cfg-yaml-duplicate-key", "config show", "YAML with a key given twice in a section",
         ("config", "show", "dup.yaml"), setup=write("dup.yaml", "optim:\n  lr: 0.1\n  lr: 0.2\n"),
         needle="duplicate key 'lr'"),
    Case("cfg-inf-lr", "config show", "an infinite learning rate",
         ("config", "show", "tiny", "--set", "optim.lr=.inf"),
         needle="optim.lr: Input should be a finite number"),
    Case("cfg-negative-lr", "config show", "negative learning rate", ("config", "show", "tiny", "--set", "optim.lr=-1"),
         needle="optim.lr"),
    Case("cfg-zero-layers", "config show", "zero layers", ("config", "show", "tiny", "--set",
                                                                  "model.num_hidden_layers=0"),
         needle="model.num_hidden_layers"),
    Case("cfg-huge-steps", "config show", "max_steps 1e30 (a float)", ("config", "show", "tiny", "--set",
                                                                        "schedule.max_steps=1e30"),
         needle="schedule.max_steps"),
    Case("cfg-missing-file", "config show", "YAML file does not exist", ("config", "show", "nope.yaml"),
         needle="nope.yaml"),
    Case("cfg-directory", "config show", "a directory as the config file", ("config", "show", "{data}"),
         needle="is a directory"),
    Case("cfg-empty-yaml", "config show", "empty YAML file (means: the defaults)", ("config", "show", "empty.yaml"),
         OK, setup=write("empty.yaml", ""), check=stdout_has("model:", "optim:")),
    Case("cfg-yaml-list", "config show", "YAML holding a list", ("config", "show", "list.yaml"),
         setup=write("list.yaml", "- model\n- optim\n"), needle="mapping"),
    Case("cfg-yaml-syntax", "config show", "YAML syntax error", ("config", "show", "bad.yaml"),
         setup=write("bad.yaml", "model: [1, 2\n"), needle="not valid YAML"),
    Case("cfg-yaml-binary", "config show", "binary file named .yaml", ("config", "show", "bin.yaml"),
         setup=write("bin.yaml", bytes(range(256)) * 4), needle="bin.yaml"),
    Case("cfg-unknown-section", "config show", "unknown top-level section", ("config", "show", "sec.yaml"),
         setup=write("sec.yaml", "modle:\n  hidden_size: 64\n"), needle="modle"),
    Case("cfg-spaces", "config show", "config path with spaces", ("config", "show", "my configs/small.yaml"),
         OK, setup=write("my configs/small.yaml", "optim:\n  lr: 0.00123\n"), check=stdout_has("lr: 0.00123")),
    Case("cfg-manifest-as-config", "config show", "a data manifest.json passed as the config",
         ("config", "show", "{data}/manifest.json"), needle="unknown setting"),
    Case("cfg-set-empty-key", "config show", "--set =3", ("config", "show", "tiny", "--set", "=3"),
         needle="section.key=value"),
    Case("cfg-set-list-for-str", "config show", "--set run_dir to a list",
         ("config", "show", "tiny", "--set", "logging.run_dir=[1, 2]"), needle="logging.run_dir"),
    Case("cfg-json-out", "config show", "--json: output must be JSON", ("config", "show", "tiny", "--json"), OK,
         check=json_out(lambda d: d["model"]["vocab_size"] > 0)),
    Case("schema-no-dir", "config schema", "--out in a directory that does not exist",
         ("config", "schema", "--out", "no/such/dir/schema.json"), needle="schema.json"),
    Case("schema-out-dir", "config schema", "--out names a directory", ("config", "schema", "--out", "."),
         needle="directory"),
    Case("schema-spaces", "config schema", "--out path with spaces", ("config", "schema", "--out", "my schema.json"),
         OK, check=file_has("my schema.json", '"properties"')),
    Case("schema-out-foreign", "config schema", "--out an existing file another program wrote, no --force",
         ("config", "schema", "--out", "notes.json"), setup=write("notes.json", "mine"), needle="notes.json"),
    Case("schema-out-run-config", "config schema", "--out the config.yaml of a run, with --force",
         ("config", "schema", "--out", "r/config.yaml", "--force"), setup=copy("run", "r"),
         needle="one of the files of the training run"),
    Case("presets-json", "config presets", "--json", ("config", "presets", "--json"), OK,
         check=json_out(lambda d: "tiny" in d)),
    Case("cfg-cmd-typo", "config", "subcommand mistyped", ("config", "prsets"), USAGE),
    Case("top-cmd-typo", "ominix", "command mistyped", ("trian",), USAGE),
    # data prepare
    Case("prep-missing-source", "data prepare", "source file does not exist",
         ("data", "prepare", "nope.jsonl", "--train-tokenizer", "--vocab-size", "300", "--out", "out"), needle="nope"),
    Case("prep-empty-file", "data prepare", "empty .jsonl", ("data", "prepare", "empty.jsonl", "--train-tokenizer",
                                                              "--vocab-size", "300", "--out", "out"),
         setup=write("empty.jsonl", ""), needle="empty"),
    Case("prep-binary-jsonl", "data prepare", "binary bytes in a .jsonl",
         ("data", "prepare", "bin.jsonl", "--train-tokenizer", "--vocab-size", "300", "--out", "out"),
         setup=write("bin.jsonl", bytes(range(256)) * 8), needle="bin.jsonl"),
    Case("prep-jsonl-as-json", "data prepare", "JSON-lines file named .json (read as JSON lines)",
         ("data", "prepare", "c.json", "--train-tokenizer", "--vocab-size", "300", "--seq-len", "16", "--out", "out"),
         OK, setup=corpus("c.json"),
         check=lambda p, r: json.loads((p.tmp / "out" / "manifest.json").read_text())["splits"]["train"]["documents"]
         + json.loads((p.tmp / "out" / "manifest.json").read_text())["splits"]["validation"]["documents"] == 60),
    Case("prep-bad-meta", "data prepare", "a record's meta field is not an object",
         ("data", "prepare", "c.jsonl", "--train-tokenizer", "--vocab-size", "300", "--seq-len", "16", "--out", "out"),
         setup=write("c.jsonl", '{"text": "hello world", "meta": "{broken"}\n' * 40), needle="meta"),
    Case("prep-text-field", "data prepare", "--text-field names no field",
         ("data", "prepare", "c.jsonl", "--text-field", "content", "--train-tokenizer", "--vocab-size", "300",
          "--out", "out"), setup=corpus("c.jsonl"), needle="content"),
    Case("prep-seq-len-0", "data prepare", "--seq-len 0", ("data", "prepare", "@embedded", "--seq-len", "0",
                                                           "--out", "out"), needle="seq_len"),
    Case("prep-seq-len-neg", "data prepare", "--seq-len -5", ("data", "prepare", "@embedded", "--seq-len", "-5",
                                                              "--out", "out"), needle="seq_len"),
    Case("prep-val-fraction", "data prepare", "--val-fraction 1.5",
         ("data", "prepare", "@embedded", "--val-fraction", "1.5", "--out", "out"), needle="val_fraction"),
    Case("prep-vocab-huge", "data prepare", "--vocab-size 1000000000",
         ("data", "prepare", "c.jsonl", "--train-tokenizer", "--vocab-size", "1000000000", "--out", "out"),
         setup=corpus("c.jsonl"), needle="vocab"),
    Case("prep-vocab-tiny", "data prepare", "--vocab-size 10 (below the 256 bytes)",
         ("data", "prepare", "c.jsonl", "--train-tokenizer", "--vocab-size", "10", "--out", "out"),
         setup=corpus("c.jsonl"), needle="vocab"),
    Case("prep-no-tokenizer-dir", "data prepare", "--tokenizer directory does not exist",
         ("data", "prepare", "c.jsonl", "--tokenizer", "no-tok", "--out", "out"), setup=corpus("c.jsonl"),
         needle="no-tok"),
    Case("prep-tokenizer-garbage", "data prepare", "--tokenizer file is not a tokenizer",
         ("data", "prepare", "c.jsonl", "--tokenizer", "tok.json", "--out", "out"),
         setup=both(corpus("c.jsonl"), write("tok.json", "{\"not\": \"a tokenizer\"}")), needle="tok"),
    Case("prep-out-is-file", "data prepare", "--out names a file",
         ("data", "prepare", "c.jsonl", "--train-tokenizer", "--vocab-size", "300", "--out", "c.jsonl"),
         setup=corpus("c.jsonl"), needle="c.jsonl"),
    Case("prep-out-exists", "data prepare", "--out is a non-empty directory, no --force",
         ("data", "prepare", "@embedded", "--train-tokenizer", "--vocab-size", "300", "--out", "mine"),
         setup=KEEP, needle="mine"),
    Case("prep-force-other-dir", "data prepare", "--force on a directory that is not a dataset",
         ("data", "prepare", "@embedded", "--train-tokenizer", "--vocab-size", "300", "--out", "mine", "--force"),
         setup=KEEP, needle="mine"),
    Case("prep-force-user-manifest", "data prepare", "--force on a user directory that holds a manifest.json",
         ("data", "prepare", "@embedded", "--train-tokenizer", "--vocab-size", "300", "--out", "mine", "--force"),
         setup=both(KEEP, write("mine/manifest.json", '{"name": "my app"}')), needle="holds files no OminiX"),
    Case("prep-unsupported", "data prepare", "a source directory holding unsupported files",
         ("data", "prepare", "src", "--train-tokenizer", "--vocab-size", "300", "--seq-len", "16", "--out", "out"),
         NOTICE, needle="notes.pdf", setup=both(corpus("src/a.jsonl"), write("src/notes.pdf", b"%PDF-1.4")),
         check=lambda p, r: (p.tmp / "out" / "manifest.json").is_file()),
    Case("prep-truncated-zst", "data prepare", "truncated .jsonl.zst",
         ("data", "prepare", "cut.jsonl.zst", "--train-tokenizer", "--vocab-size", "300", "--out", "out"),
         setup=lambda p: (p.tmp / "cut.jsonl.zst").write_bytes(
             (REPO / "ominix/data/corpus/python-docs.jsonl.zst").read_bytes()[:5000]),
         needle="cut.jsonl.zst"),
    Case("prep-spaces", "data prepare", "source and --out paths with spaces",
         ("data", "prepare", "my corpus/c.jsonl", "--train-tokenizer", "--vocab-size", "300", "--seq-len", "16",
          "--out", "my data"), OK, setup=corpus("my corpus/c.jsonl", 200),
         check=lambda p, r: json.loads((p.tmp / "my data" / "manifest.json").read_text())["seq_len"] == 16),
    Case("prep-no-out", "data prepare", "--out and --tokenizer left out: data/embedded-train, LLaMA-2's tokenizer "
         "from the Hub (offline here)", ("data", "prepare", "@embedded"), needle="TinyLlama/TinyLlama-1.1B"),
    Case("prep-config-typo", "data prepare", "--config preset mistyped",
         ("data", "prepare", "--config", "tinny", "--out", "out"), needle="tinny"),
    # data inspect
    Case("insp-missing", "data inspect", "directory does not exist", ("data", "inspect", "nope"), needle="nope"),
    Case("insp-file", "data inspect", "a file instead of a directory", ("data", "inspect", "{data}/manifest.json"),
         needle="manifest.json"),
    Case("insp-run-dir", "data inspect", "a run directory instead of a dataset", ("data", "inspect", "{run}"),
         needle="run"),
    Case("insp-manifest-cut", "data inspect", "manifest.json cut short", ("data", "inspect", "d"),
         setup=copy("data", "d", truncate("manifest.json")), needle="manifest"),
    Case("insp-tampered-shard", "data inspect", "--verify on a shard changed in place (same size)",
         ("data", "inspect", "d", "--verify", "--sample", "0"), OK, rc=1,
         setup=copy("data", "d", flip_byte("train/00000.bin")), check=lambda p, r: "00000.bin" in r.stdout + r.stderr),
    Case("insp-missing-shard", "data inspect", "--verify with a shard deleted", ("data", "inspect", "d", "--verify"),
         OK, rc=1, setup=copy("data", "d", remove("validation/00000.bin")),
         check=lambda p, r: "00000.bin" in r.stdout + r.stderr),
    Case("insp-sample-neg", "data inspect", "--sample -1", ("data", "inspect", "{data}", "--sample", "-1"), CLEAN,
         needle="--sample"),
    Case("insp-ok-json", "data inspect", "--json on a good dataset (control)", ("data", "inspect", "{data}", "--json",
                                                                                "--sample", "0"), OK,
         check=json_out(lambda d: d["problems"] == [])),
    # data batch
    Case("batch-step-beyond", "data batch", "--step past the run's last step",
         ("data", "batch", "{run}", "--step", "9"), needle="holds steps 1-3"),
    Case("batch-step-zero", "data batch", "--step 0 (steps count from 1)",
         ("data", "batch", "{run}", "--step", "0"), needle="step 0"),
    Case("batch-data-dir", "data batch", "a dataset instead of a run or bundle",
         ("data", "batch", "{data}", "--step", "1"), needle="neither a run directory nor a release bundle"),
    Case("batch-other-data", "data batch", "--data of another prepared dataset (manifest changed)",
         ("data", "batch", "{run}", "--step", "1", "--data", "d"),
         setup=copy("data", "d", edit_json("manifest.json", seed=7)), needle="not the data the ledger indexes"),
    Case("batch-no-ledger", "data batch", "a run without its data_order.npy", ("data", "batch", "r", "--step", "1"),
         setup=copy("run", "r", remove("data_order.npy")), needle="holds no data-order ledger"),
    Case("batch-ok-json", "data batch", "--json on the shared run (control)",
         ("data", "batch", "{run}", "--step", "2", "--json"), OK,
         check=json_out(lambda d: d["step"] == 2 and len(d["sequences"]) == len(d["blocks"]) == d["global_batch"])),
    Case("mof-ledger-changed", "mof report", "the run's data-order ledger changed after training",
         ("mof", "report", "r", "--out", "b"), setup=copy("run", "r", flip_byte("data_order.npy")),
         needle="records other blocks than the loader's order gives"),
    # train launch (refused before anything starts, or dry runs)
    Case("launch-no-data", "train launch", "--data does not exist",
         ("train", "launch", "tiny", "--data", "nope", "--run-dir", "r", *SEQ), needle="nope"),
    Case("launch-run-as-data", "train launch", "a run directory passed as --data",
         ("train", "launch", "tiny", "--data", "{run}", "--run-dir", "r", *SEQ), needle="run"),
    Case("launch-export-as-data", "train launch", "an export passed as --data",
         ("train", "launch", "tiny", "--data", "{export}", "--run-dir", "r", *SEQ), needle="export"),
    Case("launch-task-file-missing", "train launch", "schedule.eval_tasks names a task file that does not exist",
         ("train", "launch", "tiny", "--data", *D, "--dry-run", "--set", "schedule.eval_tasks=[nope.yaml]"),
         needle="nope.yaml"),
    Case("launch-plugin-typo", "train launch", "--plugin zero3", ("train", "launch", "tiny", "--plugin", "zero3",
                                                                  "--data", *D, "--dry-run"), needle="parallel.plugin"),
    Case("launch-launcher-typo", "train launch", "--launcher slurmm",
         ("train", "launch", "tiny", "--launcher", "slurmm", "--data", *D, "--dry-run"), needle="launch.launcher"),
    Case("launch-max-steps-0", "train launch", "--max-steps 0", ("train", "launch", "tiny", "--max-steps", "0"),
         CLEAN, needle="max_steps"),
    Case("launch-nproc-0", "train launch", "--nproc-per-node 0", ("train", "launch", "tiny", "--nproc-per-node", "0"),
         CLEAN, needle="nproc_per_node"),
    Case("launch-port-range", "train launch", "--master-port 70000", ("train", "launch", "tiny", "--master-port",
                                                                      "70000"), CLEAN, needle="master_port"),
    Case("launch-vocab-mismatch", "train launch", "data vocabulary (2048) larger than model.vocab_size",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "2", *SEQ,
          "--set", "model.vocab_size=512"), needle="vocab"),
    Case("launch-seq-mismatch", "train launch", "model seq_len differs from the data's",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "2", *SEQ,
          "--set", "data.seq_len=64"), needle="seq_len"),
    Case("launch-resume-missing", "train launch", "--resume names no checkpoint",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "2", *SEQ,
          "--resume", "no/such/step_00000009"), needle="step_00000009"),
    Case("launch-resume-damaged", "train launch", "--resume auto; the only checkpoint's weights cut short",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "4", *SEQ, "--resume", "auto"),
         setup=copy("run", "r", truncate("checkpoints/step_00000003/model/model-00001.safetensors")),
         needle="step_00000003"),
    Case("launch-async-killed-write", "train launch",
         "async_save; a background write was killed (half a checkpoint staged, latest on the one before)",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "4", *SEQ, "--resume", "auto",
          "--set", "checkpoint.async_save=true"), OK,
         setup=copy("run", "r", stage_half("checkpoints/step_00000003", "checkpoints/.step_00000004.tmp-save")),
         check=lambda p, r: (p.tmp / "r/checkpoints/latest").read_text().strip() == "step_00000004"
         and not any((p.tmp / "r/checkpoints").glob(".*tmp-save"))),
    Case("launch-tampered-shard", "train launch", "a training shard changed in place (same size)",
         ("train", "launch", "tiny", "--data", "d", "--run-dir", "r", "--max-steps", "2", *SEQ),
         setup=copy("data", "d", flip_byte("train/00000.bin")), needle="00000.bin"),
    Case("launch-hang-timeout-short", "train launch",
         "launch.hang_timeout shorter than a step, two processes, one restart allowed (a hung run)",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "3", *SEQ, "--nproc-per-node",
          "2", "--set", "launch.hang_timeout=0.001", "--set", "launch.max_restarts=1",
          "--set", "launch.restart_backoff=0"), OK, rc=124,
         check=lambda p, r: "gave up after 1 restart" in r.stderr and (p.tmp / "r" / "hang" / "rank_00001.txt")
         .is_file() and sum('"kind": "fault"' in line for line in (p.tmp / "r" / "metrics.jsonl").open()) == 2,
         timeout=300),
    Case("launch-tokenizer-swapped", "train launch", "the prepared data's tokenizer.json replaced by another",
         ("train", "launch", "tiny", "--data", "d", "--run-dir", "r", "--max-steps", "2", *SEQ),
         setup=copy("data", "d", edit_json("tokenizer/tokenizer.json", version="another")),
         needle="tokenized with another tokenizer"),
    Case("launch-run-dir-file", "train launch", "--run-dir names a file",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "f.txt", "--max-steps", "2", *SEQ),
         setup=write("f.txt", "x"), needle="f.txt"),
    Case("launch-out-in-data", "train launch", "--run-dir inside the prepared data",
         ("train", "launch", "tiny", "--data", "d", "--run-dir", "d/run", "--max-steps", "2", *SEQ),
         setup=copy("data", "d"), needle="lies inside"),
    Case("launch-never-over-run", "train launch", "--resume never into a run directory that holds a run",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "2", *SEQ, "--resume", "never"),
         setup=copy("run", "r"), needle="already holds a run"),
    Case("launch-data-spaces", "train launch", "--data path with spaces (dry run)",
         ("train", "launch", "tiny", "--data", "my data", "--run-dir", "my run", "--dry-run"), OK,
         setup=copy("data", "my data"), check=stdout_has("my data")),
    Case("launch-hostfile-missing", "train launch", "--hostfile does not exist",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "2", "--dry-run"),
         needle="hosts.txt"),
    Case("launch-hostfile-empty", "train launch", "hostfile holds only comments",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "2", "--dry-run"),
         setup=write("hosts.txt", "# none yet\n\n"), needle="hosts.txt"),
    Case("launch-hostfile-binary", "train launch", "binary hostfile",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.bin", "--nodes", "2", "--dry-run"),
         setup=write("hosts.bin", bytes(range(256)) * 4), needle="hosts.bin"),
    Case("launch-hostfile-shell", "train launch", "shell syntax as a hostname",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "2", "--dry-run"),
         setup=write("hosts.txt", "n1;rm -rf ~\nn2\n"), needle="line 1"),
    Case("launch-nodes-too-many", "train launch", "--nodes 4 with 2 hosts",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "4", "--dry-run"),
         setup=write("hosts.txt", HOSTS), needle="4"),
    Case("launch-multinode-dry", "train launch", "two-node dry run (control)",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "2", "--dry-run"), OK,
         setup=write("hosts.txt", HOSTS), check=stdout_has("n1", "n2")),
    Case("launch-flag-underscore", "train launch", "--nproc_per_node as torchrun / colossalai run spell it",
         ("train", "launch", "tiny", "--data", *D, "--nproc_per_node", "2", "--dry-run"),
         needle="did you mean --nproc-per-node?"),
    Case("launch-nodes-no-hostfile", "train launch", "--nodes 2 without a hostfile",
         ("train", "launch", "tiny", "--data", *D, "--nodes", "2", "--dry-run"), needle="needs a hostfile"),
    Case("launch-two-configs", "train launch", "a preset positionally and another with --config",
         ("train", "launch", "tiny", "--config", "llama2-7b", "--dry-run"), needle="two configs"),
    Case("launch-openmpi-hostfile", "train launch", "OpenMPI hostfile with max_slots= (dry run)",
         ("train", "launch", "tiny", "--data", *D, "--hostfile", "hosts.txt", "--nodes", "2", "--dry-run",
          "--set", "schedule.global_batch_size=32"), OK,
         setup=write("hosts.txt", "n1 max_slots=2\nn2 slots=2 max_slots=4\n"), check=stdout_has("world 4")),
    # train check-hosts
    Case("hosts-no-hostfile", "train check-hosts", "no hostfile given", ("train", "check-hosts", "tiny"),
         needle="hostfile"),
    Case("hosts-missing", "train check-hosts", "--hostfile does not exist",
         ("train", "check-hosts", "tiny", "--hostfile", "hosts.txt"), needle="hosts.txt"),
    Case("hosts-bad-port", "train check-hosts", "port out of range in the hostfile",
         ("train", "check-hosts", "tiny", "--hostfile", "hosts.txt"), setup=write("hosts.txt", "n1:99999\n"),
         needle="port"),
    Case("hosts-nproc-0", "train check-hosts", "--nproc-per-node 0 for the collective",
         ("train", "check-hosts", "tiny", "--hostfile", "hosts.txt", "--nproc-per-node", "0"),
         setup=write("hosts.txt", HOSTS), needle="nproc_per_node"),
    Case("hosts-duplicate", "train check-hosts", "the same host twice",
         ("train", "check-hosts", "tiny", "--hostfile", "hosts.txt"), setup=write("hosts.txt", "n1\nn1\n"),
         needle="line 2"),
    Case("hosts-duplicate-default-port", "train check-hosts", "one host with and without the default SSH port",
         ("train", "check-hosts", "tiny", "--hostfile", "hosts.txt"), setup=write("hosts.txt", "n1\nn1:22\n"),
         needle="(the same host and SSH port 22)"),
    # checkpoint list / export
    Case("list-missing", "checkpoint list", "run directory does not exist", ("checkpoint", "list", "nope"),
         needle="nope"),
    Case("list-file", "checkpoint list", "a file instead of a run directory",
         ("checkpoint", "list", "{run}/config.yaml"), needle="config.yaml"),
    Case("list-data-dir", "checkpoint list", "a dataset instead of a run directory", ("checkpoint", "list", "{data}"),
         needle="data"),
    Case("list-no-checkpoints-dir", "checkpoint list", "a run that stopped before its first save",
         ("checkpoint", "list", "r"), setup=copy("run", "r", remove("checkpoints")), needle="checkpoints"),
    Case("list-no-checkpoints", "checkpoint list", "an empty checkpoints directory (says so)",
         ("checkpoint", "list", "r"), OK, setup=copy("run", "r", lambda d: [remove("checkpoints")(d),
                                                                           (d / "checkpoints").mkdir()]),
         check=stdout_has("no checkpoints yet")),
    Case("list-ok", "checkpoint list", "the shared run (control)", ("checkpoint", "list", "{run}", "--json"), OK,
         check=json_out(lambda d: [e["step"] for e in d] == [3])),
    Case("list-stray-step-dir", "checkpoint list", "an empty step directory newer than the checkpoint",
         ("checkpoint", "list", "r", "--json"), OK,
         setup=copy("run", "r", lambda d: (d / "checkpoints" / "step_00000099").mkdir()),
         check=json_out(lambda d: [(e["step"], bool(e["kept"])) for e in d] == [(3, True), (99, True)]
                        and d[1]["kept"].startswith("incomplete"))),
    Case("export-no-checkpoints", "checkpoint export", "a run directory without checkpoints",
         ("checkpoint", "export", "r", "--no-verify"), setup=copy("run", "r", remove("checkpoints")),
         needle="checkpoint"),
    Case("export-data-dir", "checkpoint export", "a dataset instead of a run", ("checkpoint", "export", "{data}",
                                                                               "--out", "o", "--no-verify"),
         needle="data"),
    Case("export-dtype", "checkpoint export", "--dtype fp8", ("checkpoint", "export", "{run}", "--out", "o",
                                                              "--dtype", "fp8"), needle="fp8"),
    Case("export-format", "checkpoint export", "--format onnx",
         ("checkpoint", "export", "{run}", "--out", "o", "--format", "onnx"), needle="onnx"),
    Case("export-gguf-dtype", "checkpoint export", "--format gguf --dtype q4",
         ("checkpoint", "export", "{run}", "--out", "o", "--format", "gguf", "--dtype", "q4"), needle="q4"),
    Case("export-gguf-out-run", "checkpoint export", "--format gguf --out RUN --force names the run itself",
         ("checkpoint", "export", "r", "--out", "r", "--format", "gguf", "--force"), setup=copy("run", "r"),
         needle="r"),
    Case("export-shard-size", "checkpoint export", "--max-shard-size lots",
         ("checkpoint", "export", "{run}", "--out", "o", "--max-shard-size", "lots"), needle="lots"),
    Case("export-out-exists", "checkpoint export", "--out non-empty, no --force",
         ("checkpoint", "export", "{run}", "--out", "mine", "--no-verify"), setup=KEEP, needle="mine"),
    Case("export-force-run", "checkpoint export", "--out RUN --force names the run itself",
         ("checkpoint", "export", "r", "--out", "r", "--force", "--no-verify"), setup=copy("run", "r"),
         needle="r"),
    Case("export-force-other", "checkpoint export", "--force on an unrelated non-empty directory",
         ("checkpoint", "export", "{run}", "--out", "mine", "--force", "--no-verify"), setup=KEEP,
         needle="mine"),
    Case("export-state-cut", "checkpoint export", "state.json of the latest checkpoint cut short",
         ("checkpoint", "export", "r", "--out", "o", "--no-verify"),
         setup=copy("run", "r", truncate("checkpoints/step_00000003/state.json")), needle="state.json"),
    Case("export-weights-missing", "checkpoint export", "weights file of the checkpoint deleted",
         ("checkpoint", "export", "r", "--out", "o", "--no-verify"),
         setup=copy("run", "r", remove("checkpoints/step_00000003/model/model-00001.safetensors")),
         needle="step_00000003"),
    Case("export-latest-dangling", "checkpoint export", "`latest` names a step that does not exist",
         ("checkpoint", "export", "r", "--out", "o", "--no-verify"),
         setup=copy("run", "r", lambda d: (d / "checkpoints/latest").write_text("step_00000009\n")),
         needle="step_00000009"),
    # infer
    Case("infer-missing", "infer", "--model does not exist", ("infer", "--model", "nope", "--prompt", "hi"),
         needle="nope"),
    Case("infer-data-dir", "infer", "a dataset as --model", ("infer", "--model", "{data}", "--prompt", "hi"),
         needle="data"),
    Case("infer-no-prompt", "infer", "neither --prompt nor --prompts-file", ("infer", "--model", "{export}"),
         needle="--prompt"),
    Case("infer-tokens-0", "infer", "--max-new-tokens 0",
         ("infer", "--model", "{export}", "--prompt", "hi", "--max-new-tokens", "0"), needle="max"),
    Case("infer-temp-neg", "infer", "--temperature -1",
         ("infer", "--model", "{export}", "--prompt", "hi", "--temperature", "-1"), needle="temperature"),
    Case("infer-temp-inf", "infer", "--temperature inf",
         ("infer", "--model", "{export}", "--prompt", "hi", "--temperature", "inf"), needle="--temperature"),
    Case("infer-top-p", "infer", "--top-p 1.5", ("infer", "--model", "{export}", "--prompt", "hi", "--top-p", "1.5"),
         needle="--top-p"),
    Case("infer-device-typo", "infer", "--device gpu", ("infer", "--model", "{export}", "--prompt", "hi",
                                                        "--device", "gpu"), needle="gpu"),
    Case("infer-no-cuda", "infer", "--device cuda on a machine without one",
         ("infer", "--model", "{export}", "--prompt", "hi", "--device", "cuda"), needle="cuda"),
    Case("infer-prompts-missing", "infer", "--prompts-file does not exist",
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl"), needle="p.jsonl"),
    Case("infer-prompts-bad-json", "infer", "a prompts line that is not JSON",
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl"),
         setup=write("p.jsonl", '{"prompt": "a"}\n{prompt: b}\n'), needle="p.jsonl:2"),
    Case("infer-prompts-no-key", "infer", 'a prompts line without "prompt"',
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl"), setup=write("p.jsonl", '{"text": "a"}\n'),
         needle="prompt"),
    Case("infer-prompts-dir", "infer", "--prompts-file names a directory",
         ("infer", "--model", "{export}", "--prompts-file", "{data}"), needle="directory"),
    Case("infer-prompts-binary", "infer", "a binary prompts file", ("infer", "--model", "{export}",
                                                                   "--prompts-file", "p.jsonl"),
         setup=write("p.jsonl", bytes(range(256)) * 4), needle="p.jsonl"),
    Case("infer-out-dir", "infer", "--out names a directory",
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl", "--out", "."),
         setup=write("p.jsonl", '{"prompt": "a"}\n'), needle="directory"),
    Case("infer-out-prompts", "infer", "--out the --prompts-file itself, with --force",
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl", "--out", "p.jsonl", "--force"),
         setup=write("p.jsonl", '{"prompt": "a"}\n'), needle="is or contains the input"),
    Case("infer-export-no-out", "infer", "--prompts-file on an export without --out (no run dir to write to)",
         ("infer", "--model", "{export}", "--prompts-file", "p.jsonl"), setup=write("p.jsonl", '{"prompt": "a"}\n'),
         needle="run directory"),
    Case("infer-checkpoints-dir", "infer", "RUN/checkpoints instead of a run or one checkpoint",
         ("infer", "--model", "{run}/checkpoints", "--prompt", "hi"), needle="checkpoints"),
    Case("infer-export-spaces", "infer", "export path with spaces, greedy (control)",
         ("infer", "--model", "my export", "--prompt", "def", "--max-new-tokens", "5", "--temperature", "0",
          "--json"), OK, setup=copy("export", "my export"),
         check=json_out(lambda d: d["completion_tokens"] == 5 or d["finish_reason"] == "eos")),
    # eval
    Case("eval-split-typo", "eval", "--split valid", ("eval", "--model", "{run}", "--split", "valid"),
         needle="valid"),
    Case("eval-batch-0", "eval", "--batch-size 0", ("eval", "--model", "{run}", "--batch-size", "0"), USAGE),
    Case("eval-data-missing", "eval", "--data does not exist", ("eval", "--model", "{export}", "--data", "nope"),
         needle="nope"),
    Case("eval-export-no-data", "eval", "an export without --data (no run to take data.path from)",
         ("eval", "--model", "{export}"), needle="no prepared data"),
    Case("eval-bad-token", "eval", "validation shard changed in place (a token beyond the vocabulary)",
         ("eval", "--model", "{export}", "--data", "d", "--out", "e.json"),
         setup=copy("data", "d", flip_byte("validation/00000.bin")), needle="00000.bin"),
    Case("eval-data-other-tokenizer", "eval", "--data prepared with another tokenizer than the model's",
         ("eval", "--model", "{export}", "--data", "d", "--out", "e.json"),
         setup=copy("data", "d", other_tokenizer), needle="prepared with another tokenizer"),
    Case("eval-data-elsewhere", "eval", "a run with a relative data.path, evaluated where ./data is another dataset",
         ("eval", "--model", "r", "--out", "e.json"),
         setup=both(copy("run", "r", relative_data("data")), copy("data", "data", edit_json("manifest.json", x=1))),
         needle="is not the data"),
    Case("eval-out-dir", "eval", "--out names a directory",
         ("eval", "--model", "{run}", "--max-blocks", "8", "--out", "."), needle="directory"),
    Case("eval-task-unknown", "eval", "--tasks names no lm-eval task (a local task meant, without its file)",
         ("eval", "--model", "{run}", "--tasks", "my_local_task", "--out", "e.json"), needle="my_local_task",
         timeout=300),
    Case("eval-task-file-missing", "eval", "--tasks names a task file that does not exist",
         ("eval", "--model", "{run}", "--tasks", "nope.yaml", "--out", "e.json"), needle="nope.yaml"),
    Case("eval-out-in-data", "eval", "--out a file inside the prepared data, with --force",
         ("eval", "--model", "{run}", "--data", "d", "--out", "d/manifest.json", "--force"), setup=copy("data", "d"),
         needle="lies inside"),
    Case("eval-ok", "eval", "one batch of the shared run (control)",
         ("eval", "--model", "{run}", "--max-blocks", "8", "--out", "e.json", "--json"), OK,
         check=json_out(lambda d: d["perplexity"]["loss"] > 0)),
    # mof
    Case("mof-check-missing", "mof check", "file does not exist", ("mof", "check", "nope.yml"), needle="nope.yml"),
    Case("mof-check-binary", "mof check", "binary file", ("mof", "check", "m.yml"),
         setup=write("m.yml", bytes(range(256)) * 4), needle="m.yml"),
    Case("mof-check-list", "mof check", "YAML that is a list", ("mof", "check", "m.yml"),
         setup=write("m.yml", "- a\n- b\n"), needle="m.yml"),
    Case("mof-check-no-release", "mof check", "a mapping without release:", ("mof", "check", "m.yml"),
         setup=write("m.yml", "framework:\n  name: MOF\n"), needle="release"),
    Case("mof-check-dir", "mof check", "a directory", ("mof", "check", "{data}"), needle="data"),
    Case("mof-check-unquoted-date", "mof check", "an unquoted date (MOT's schema wants a string)",
         ("mof", "check", "m.yml"), setup=write("m.yml", MOF_FILE_TEXT.replace("'2024-12-15'", "2024-12-15")),
         needle="unquoted date"),
    Case("mof-check-yaml-name", "mof check", "a lone model file named .yaml (MOT reads *.yml only)",
         ("mof", "check", "m.yaml"), setup=write("m.yaml", MOF_FILE_TEXT), needle="*.yml only"),
    Case("mof-init-exists", "mof init", "--out exists, no --force", ("mof", "init", "--out", "r.yaml"),
         setup=write("r.yaml", "mine"), needle="r.yaml"),
    Case("mof-init-dir", "mof init", "--out names a directory", ("mof", "init", "--out", "mine", "--force"),
         setup=KEEP, needle="mine"),
    Case("mof-init-checkpoint", "mof init", "--out a checkpoint's state.json, with --force",
         ("mof", "init", "--out", "r/checkpoints/step_00000003/state.json", "--force"), setup=copy("run", "r"),
         needle="a checkpoint"),
    Case("mof-init-spaces", "mof init", "--out in a new directory with spaces (control)",
         ("mof", "init", "--out", "my release/release.yaml"), OK, check=file_has("my release/release.yaml", "name")),
    Case("mof-report-missing", "mof report", "run directory does not exist", ("mof", "report", "nope"),
         needle="nope"),
    Case("mof-report-data", "mof report", "a dataset as the run", ("mof", "report", "{data}", "--out", "b"),
         needle="data"),
    Case("mof-report-release-missing", "mof report", "--release file does not exist",
         ("mof", "report", "{run}", "--out", "b", "--release", "nope.yaml"), needle="nope.yaml"),
    Case("mof-report-release-typo", "mof report", "release.yaml with a mistyped key",
         ("mof", "report", "{run}", "--out", "b", "--release", "rel.yaml"),
         setup=write("rel.yaml", "nmae: x\n"), needle="nmae"),
    Case("mof-report-closed-license", "mof report", "a data license MOT lists but rejects (C-UDA-1.0)",
         ("mof", "report", "{run}", "--out", "b", "--release", "rel.yaml", "--json"), OK,
         setup=write("rel.yaml", "name: x\nlicenses:\n  data:\n    name: C-UDA-1.0\n"),
         check=lambda p, r: {"name": "Model parameters (Final)", "status": "invalid"}.items()
         <= next(c for c in json.loads(r.stdout)["components"] if c["name"] == "Model parameters (Final)").items()),
    Case("mof-report-force-run", "mof report", "--out RUN --force names the run itself",
         ("mof", "report", "r", "--out", "r", "--force"), setup=copy("run", "r"), needle="r"),
    Case("mof-report-force-other", "mof report", "--force on an unrelated non-empty directory",
         ("mof", "report", "{run}", "--out", "mine", "--force"), setup=KEEP, needle="mine"),
    # release push (planned only: --dry-run needs no Hub)
    Case("push-branches-no-table", "release push", "--checkpoint-branches on a bundle without a checkpoint table",
         ("release", "push", "b", "--repo-id", "my-org/tiny", "--checkpoint-branches", "--dry-run"),
         setup=write("b/mof.yaml", "framework:\n  name: Model Openness Framework\n"), needle="checkpoints.json"),
    Case("mof-report-foreign-data", "mof report", "--data a dataset the run never trained on",
         ("mof", "report", "{run}", "--out", "b", "--data", "d"),
         setup=copy("data", "d", edit_json("manifest.json", x=1)), needle="is not the data"),
    # release push (the checks before any network call)
    Case("push-sums-changed", "release push", "a bundle file changed after SHA256SUMS was written (dry run)",
         ("release", "push", "b", "--repo-id", "me/tiny", "--dry-run"),
         setup=both(write("b/mof.yaml", "framework:\n  name: MOF\n"), write("b/MODEL_CARD.md", "# tiny\n"),
                    write("b/SHA256SUMS", f"{'0' * 64}  MODEL_CARD.md\n")), needle="no longer holds"),
    # quickstart (the --out guard only)
    Case("qs-out-exists", "quickstart", "--out non-empty, no --force", ("quickstart", "--out", "mine"),
         setup=KEEP, needle="mine"),
    Case("qs-force-other", "quickstart", "--force on a directory that is not a quickstart",
         ("quickstart", "--out", "mine", "--force"), setup=KEEP, needle="quickstart"),
    Case("qs-steps", "quickstart", "--steps 10 (below the minimum)", ("quickstart", "--steps", "10"), CLEAN,
         needle="--steps"),
    # operating-system errors and damaged files of every stage: one line naming the path
    Case("schema-name-too-long", "config schema", "--out a name of 300 characters",
         ("config", "schema", "--out", "a" * 300 + ".json"), needle="File name too long"),
    Case("launch-run-dir-under-file", "train launch", "--run-dir inside a file",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "f.txt/run", "--max-steps", "2", *SEQ),
         setup=write("f.txt", "x"), needle="Not a directory: f.txt/run"),
    Case("launch-lock-is-dir", "train launch", "the run directory's .ominix.lock is a directory",
         ("train", "launch", "tiny", "--data", *D, "--run-dir", "r", "--max-steps", "4", *SEQ),
         setup=copy("run", "r", lambda d: (d / ".ominix.lock").mkdir()), needle="is a directory, not the run"),
    Case("export-latest-garbage", "checkpoint export", "`latest` holds binary garbage",
         ("checkpoint", "export", "r", "--out", "o", "--no-verify"),
         setup=copy("run", "r", lambda d: (d / "checkpoints/latest").write_bytes(b"\xff\xfe\x00junk")),
         needle="not the name of a step_* directory"),
    Case("infer-safetensors-header", "infer", "the export's safetensors header is not JSON",
         ("infer", "--model", "e", "--prompt", "hi"),
         setup=copy("export", "e", lambda d: _garble_header(d / "model.safetensors")),
         needle="not a readable safetensors file"),
    Case("infer-seed-huge", "infer", "--seed 2**70", ("infer", "--model", "{export}", "--prompt", "hi",
                                                      "--seed", str(2**70)), needle="--seed"),
    Case("insp-manifest-no-field", "data inspect", "manifest.json without its splits field",
         ("data", "inspect", "d"), setup=copy("data", "d", _drop_manifest_field("splits")), needle="lacks splits"),
    Case("prep-lone-surrogate", "data prepare", "a record holding a lone surrogate (\\ud800)",
         ("data", "prepare", "s.jsonl", "--train-tokenizer", "--vocab-size", "300", "--out", "out"),
         setup=write("s.jsonl", '{"text": "half a pair \\ud800 here"}\n' * 60),
         needle="s.jsonl:1: field 'text' holds a lone surrogate"),
]
