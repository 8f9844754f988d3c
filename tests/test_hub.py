"""Hugging Face Hub ids and `ominix release push`, tested up to the network (there is none here).

Hub ids resolve through a real huggingface_hub cache written on disk in the library's own layout
(models--ORG--NAME/refs/main, snapshots/COMMIT/ -> ../../blobs/); the Hub itself is either absent
(HF_HUB_OFFLINE=1, or a private network namespace with no route) or a local HTTP server that answers
the way the Hub does for an unknown repository or a refused token.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_export import CORPUS, make_run

REPO_ID = "ominix-test/tiny-llama"
BUNDLE_ID = "ominix-test/tiny-release"  # the same model as a pushed bundle: model/final/
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_TESTtokenVALUEthatMUSTneverBEprinted"
OFFLINE = {"HF_HUB_OFFLINE": "1"}
NO_ROUTE = {"HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_DOWNLOAD_TIMEOUT": "3"}
FAST = ("--device", "cpu", "--dtype", "fp32", "--no-compile", "--no-kernels")


def write_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Put ``files`` ({path in the repo: local file}) into HF_HOME's hub cache the way huggingface_hub
    stores a download: blobs named by git sha1 (LFS files by sha256), snapshot entries linking to
    them, refs/main holding the commit. Returns the snapshot directory."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for rel, src in files.items():
        data = src.read_bytes()
        lfs = rel.endswith(".safetensors")
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny export (wide init: a loss far above ln(vocab)), cached as REPO_ID, and a corpus."""
    root = tmp_path_factory.mktemp("hub")
    run = make_run(root, initializer_range=0.3)
    export = root / "export"
    result = run_cli("checkpoint", "export", str(run), "--out", str(export), "--dtype", "fp32", "--no-verify")
    assert result.returncode == 0, result.stderr
    files = {p.name: p for p in export.iterdir() if p.is_file() and not p.name.startswith(".")}
    write_hub_cache(root / "hf", REPO_ID, files)
    write_hub_cache(root / "hf", BUNDLE_ID, {f"model/final/{rel}": path for rel, path in files.items()})
    corpus = root / "c.jsonl"
    words = CORPUS.split()
    corpus.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(120)))
    return {"export": export, "hf_home": root / "hf", "corpus": corpus, "root": root}


def _env(hub: dict[str, Path], **extra: str) -> dict[str, str]:
    home = extra.pop("HF_HOME", str(hub["hf_home"]))
    return {"HF_HOME": home, "HF_HUB_CACHE": f"{home}/hub", "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "",
            "COLUMNS": "200", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def prepared(hub: dict[str, Path]) -> Path:
    """The corpus prepared offline with the tokenizer of the cached Hub id."""
    prep = hub["root"] / "prep"
    result = run_cli("data", "prepare", str(hub["corpus"]), "--tokenizer", REPO_ID, "--seq-len", "64",
                     "--val-fraction", "0.2", "--out", str(prep), env=_env(hub, **OFFLINE))
    assert result.returncode == 0, result.stderr
    return prep


def _one_clear_line(result, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "hint"], result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_the_cache_written_here_is_one_huggingface_hub_reads(hub: dict[str, Path]) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub["hf_home"] / "hub")
    assert not info.warnings
    repo = next(r for r in info.repos if r.repo_id == REPO_ID)
    assert repo.repo_id == REPO_ID and [r.commit_hash for r in repo.revisions] == [COMMIT]
    assert {f.file_name for f in next(iter(repo.revisions)).files} >= {"config.json", "model.safetensors"}


def test_prepare_infer_and_eval_take_a_cached_hub_id_offline(hub: dict[str, Path], prepared: Path) -> None:
    from tokenizers import Tokenizer

    from ominix.checkpoint import model_checksum

    env = _env(hub, **OFFLINE)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["tokenizer"]["origin"] == f"{REPO_ID}@{COMMIT}"  # pinned to the commit it read
    exported = Tokenizer.from_file(str(hub["export"] / "tokenizer.json"))
    assert manifest["tokenizer"]["vocab_size"] == exported.get_vocab_size(with_added_tokens=True)

    prompt = ("--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "6", "--json", *FAST)
    by_id = run_cli("infer", "-m", REPO_ID, *prompt, env=env)
    by_path = run_cli("infer", "-m", str(hub["export"]), *prompt, env=env)
    assert by_id.returncode == 0 and by_path.returncode == 0, by_id.stderr + by_path.stderr
    assert json.loads(by_id.stdout)["completion"] == json.loads(by_path.stdout)["completion"]

    out = hub["root"] / "eval.json"  # a pushed bundle at a pinned commit: its model/final is the model
    result = run_cli("eval", "-m", f"{BUNDLE_ID}@{COMMIT}", "--data", str(prepared), "--out", str(out), "--max-batches",
                     "2", *FAST[:4], env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["model"]["sha256"] == model_checksum(hub["export"])


@pytest.mark.parametrize("argv", [
    ("infer", "-m", "ominix-test/not-cached", "--prompt", "hi"),
    ("data", "prepare", "c.jsonl", "--tokenizer", "ominix-test/not-cached", "--out", "never"),
])
def test_an_uncached_hub_id_offline_is_one_line_naming_it(argv: tuple[str, ...], hub: dict[str, Path],
                                                          tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"text": "hello"}\n')
    result = run_cli(*argv, cwd=tmp_path, env=_env(hub, **OFFLINE))
    _one_clear_line(result, "ominix-test/not-cached", "HF_HUB_OFFLINE", "huggingface-cli download")
    assert not (tmp_path / "never").exists()


@pytest.mark.usefixtures("private_netns")
def test_an_uncached_hub_id_without_a_route_is_one_line(hub: dict[str, Path]) -> None:
    result = run_cli("infer", "-m", "ominix-test/not-cached", "--prompt", "hi", env=_env(hub, **NO_ROUTE))
    _one_clear_line(result, "ominix-test/not-cached", "cannot be reached", "https://huggingface.co")


@pytest.mark.usefixtures("private_netns")
def test_init_from_takes_a_hub_id(hub: dict[str, Path], prepared: Path, tmp_path: Path) -> None:
    """A 1-step run initialised from the cached Hub model starts at that model's (wide-init, high)
    loss, not at a fresh model's ln(vocab)."""
    run = tmp_path / "run"
    sets = ["model.vocab_size=384", "data.seq_len=64", f"model.init_from={REPO_ID}", "schedule.warmup_steps=0",
            "schedule.eval_every=0", "logging.log_every=1", "schedule.global_batch_size=2",
            "schedule.micro_batch_size=2", "checkpoint.every=0"]
    result = run_cli("train", "launch", "tiny", "--data", str(prepared), "--run-dir", str(run), "--max-steps", "1",
                     "--nproc-per-node", "1", *[a for s in sets for a in ("--set", s)], env=_env(hub, **OFFLINE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"initialised from {REPO_ID}" in result.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in rows if r["kind"] == "train")
    assert first > 7.0  # ln(384) = 5.95 for a fresh model


# --- a local server in the Hub's place: what it answers, and the headers it was sent -------------------


class _FakeHub(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(self.headers.get("authorization", ""))
        dataset = self.path.startswith("/api/datasets/")
        if self.path.startswith("/api/models/") or (dataset and "no-such" in self.path):  # no such repository
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
        elif dataset and "gated" in self.path:
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to this dataset is restricted")
        elif dataset and "busy" in self.path:
            self.send_response(503)
            self.send_header("X-Error-Message", "Service unavailable\nretry later")
        else:  # create_repo and the rest: the token is refused
            self.send_response(401)
            self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    _FakeHub.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_unknown_hub_id_online_is_one_line(hub: dict[str, Path], fake_hub: str) -> None:
    result = run_cli("infer", "-m", "ominix-test/no-such-model", "--prompt", "hi",
                     env=_env(hub, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub))
    _one_clear_line(result, "ominix-test/no-such-model", "does not exist (or is private)", "huggingface-cli login")


@pytest.mark.parametrize("repo, needles", [
    ("ominix-test/no-such-data", ("no dataset 'ominix-test/no-such-data' on the Hugging Face Hub", "check the id")),
    ("ominix-test/gated-data", ("ominix-test/gated-data is gated on the Hub", "accept its terms")),
    ("ominix-test/busy-data", ("the Hub refused to list ominix-test/busy-data: HTTP 503 Service unavailable",
                               "try again later")),
    ("ominix-test/some-data", ("the Hub refused the token listing ominix-test/some-data (HTTP 401)", "HF_TOKEN")),
])
def test_a_hub_dataset_the_hub_refuses_is_one_line(repo: str, needles: tuple[str, ...], hub: dict[str, Path],
                                                   fake_hub: str, tmp_path: Path) -> None:
    """The Hub's answers to a dataset listing, read by the classifier the model fetch and push share."""
    result = run_cli("data", "prepare", repo, "--split", "train[:1%]", "--out", str(tmp_path / "out"),
                     env=_env(hub, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub, HF_TOKEN=TOKEN))
    _one_clear_line(result, *needles)
    assert TOKEN not in result.stdout + result.stderr and not (tmp_path / "out").exists()


def test_the_hub_failures_are_read_in_one_place() -> None:
    """Every caller gets the same reading of huggingface_hub's and requests' exceptions."""
    import requests
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from ominix.hubref import HubFailure, classify

    def answer(status: int) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        return response

    assert classify(requests.exceptions.SSLError("bad certificate")) == HubFailure("unreachable", None, "SSLError")
    assert classify(OfflineModeIsEnabled("offline")).kind == "unreachable"
    assert classify(LocalEntryNotFoundError("not cached")) == HubFailure("uncached")
    assert classify(GatedRepoError("gated", response=answer(403))).kind == "gated"
    assert classify(HfHubHTTPError("no", response=answer(401))) == HubFailure("token", 401, "")
    assert classify(HfHubHTTPError("no", response=answer(403))).kind == "forbidden"
    assert classify(HfHubHTTPError("no", response=answer(500))) == HubFailure("http", 500, "")
    assert classify(ValueError("not the Hub's")) is None


# --- release push ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(hub: dict[str, Path]) -> Path:
    """A bundle in `ominix mof report`'s layout with the export as its final model and a SHA256SUMS."""
    import shutil

    from ominix.checkpoint import checksums

    out = hub["root"] / "bundle"
    shutil.copytree(hub["export"], out / "model" / "final")
    (out / "model" / "final" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (out / "mof.yaml").write_text("framework: {name: Model Openness Framework}\n")
    (out / "MODEL_CARD.md").write_text("# tiny\n")
    (out / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in checksums(out, out).items()))
    (out / "stray.txt").write_text("not listed: not uploaded\n")
    return out


def test_dry_run_lists_the_listed_files_and_the_card_without_a_token(bundle: Path, hub: dict[str, Path]) -> None:
    result = run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", "--revision", "v1",
                     "--dry-run", "--json", env=_env(hub, **OFFLINE))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    listed = [line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()]
    assert sorted(plan["files"]) == sorted([*listed, "SHA256SUMS", "README.md"])
    assert "stray.txt" not in plan["files"] and plan["readme_from"] == "model/final/README.md"
    assert plan["total_bytes"] == sum(plan["files"].values()) and plan["revision"] == "v1"
    assert plan["repo_id"] == "my-org/tiny" and plan["private"] is False

    text = run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", "--dry-run", env=_env(hub))
    assert text.returncode == 0 and "would upload" in text.stdout and "model/final/model.safetensors" in text.stdout


def test_checkpoint_branches_of_a_bundle_without_a_checkpoint_table_is_one_line(bundle: Path,
                                                                                hub: dict[str, Path]) -> None:
    result = run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", "--checkpoint-branches",
                     "--dry-run", env=_env(hub))
    _one_clear_line(result, "has no model/checkpoints.json", "ominix mof report")


def test_push_refuses_a_bundle_missing_a_listed_file(bundle: Path, hub: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    (broken / "model" / "final" / "config.json").unlink()
    result = run_cli("release", "push", str(broken), "--repo-id", "my-org/tiny", "--dry-run", env=_env(hub))
    _one_clear_line(result, "model/final/config.json", "ominix mof check")


def test_push_refuses_a_bundle_whose_sha256sums_no_longer_hold(bundle: Path, hub: dict[str, Path], tmp_path: Path,
                                                                fake_hub: str) -> None:
    """A listed file changed after `mof report` (same size, so only hashing tells): the dry run and
    the real push both refuse it before the Hub hears a word."""
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    card = broken / "MODEL_CARD.md"
    card.write_text(card.read_text().replace("tiny", "TINY"))
    dry = run_cli("release", "push", str(broken), "--repo-id", "my-org/tiny", "--dry-run", env=_env(hub))
    _one_clear_line(dry, "MODEL_CARD.md: sha256 mismatch", "SHA256SUMS no longer holds", "ominix mof check")
    seen = len(_FakeHub.seen)
    env = _env(hub, HF_HOME=str(tmp_path), HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub)
    real = run_cli("release", "push", str(broken), "--repo-id", "my-org/tiny", env=env)
    _one_clear_line(real, "MODEL_CARD.md: sha256 mismatch", "SHA256SUMS no longer holds", "ominix mof report")
    assert len(_FakeHub.seen) == seen  # refused before any request


@pytest.mark.parametrize("env, needles", [
    ({"HF_TOKEN": ""}, ("no Hugging Face token", "huggingface-cli login")),
    ({"HF_TOKEN": TOKEN, **OFFLINE}, ("HF_HUB_OFFLINE", "--dry-run")),
])
def test_push_without_token_or_offline_is_one_line(env: dict[str, str], needles: tuple[str, ...], bundle: Path,
                                                   hub: dict[str, Path], tmp_path: Path) -> None:
    env = _env(hub, **{"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0", **env})  # HF_HOME: no saved login
    result = run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", env=env)
    _one_clear_line(result, *needles)
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.usefixtures("private_netns")
def test_push_to_an_unreachable_hub_never_shows_the_token(bundle: Path, hub: dict[str, Path],
                                                          tmp_path: Path) -> None:
    env = _env(hub, HF_HOME=str(tmp_path), HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    for debug in ((), ("--debug",)):
        result = run_cli(*debug, "release", "push", str(bundle), "--repo-id", "my-org/tiny", env=env)
        assert result.returncode != 0 and TOKEN not in result.stdout + result.stderr
    _one_clear_line(run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", env=env),
                    "cannot push to my-org/tiny (http://127.0.0.1:9)", "cannot be reached")


def test_push_with_a_refused_token_is_one_line_without_the_token(bundle: Path, hub: dict[str, Path],
                                                                 tmp_path: Path, fake_hub: str) -> None:
    env = _env(hub, HF_HOME=str(tmp_path), HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub)
    result = run_cli("release", "push", str(bundle), "--repo-id", "my-org/tiny", env=env)
    _one_clear_line(result, "refused the token (HTTP 401)", "huggingface-cli login")
    assert TOKEN not in result.stdout + result.stderr
    assert f"Bearer {TOKEN}" in _FakeHub.seen  # the token of HF_TOKEN was the one sent
