"""``ominix mof report``: gather a run's artifacts into a MOF release bundle and classify it.

```
BUNDLE/
  mof.yaml                 MOF model file (official schema): each component present, license, path
  MOF_REPORT.md            class, progress per class, components, what the next class needs
  mof_classification.json  the same for programs (MOT's shape + per-component detail)
  MODEL_CARD.md  DATA_CARD.md  LICENSE-code  LICENSE-data  LICENSE-document  LICENSE (distribution)
  code/ominix/             the OminiX source that trained the model (architecture, train, data, infer, eval)
  code/requirements.txt    every installed package ==version (supporting libraries and tools)
  code/PROVENANCE.json     OminiX version, git commit + dirty flag, data preprocessing command, ...
  model/final/ model/intermediate/step_*/      weights, with --copy-checkpoints
  model/final.json model/intermediate.json     otherwise: their paths and the sha256 of every file
  model/metadata/          resolved config.yaml, final state.json, metrics.jsonl, optimizer state
  data/                    manifest.json, tokenizer/, validation.json (the evaluation split)
  eval/eval_results.json  samples/samples.jsonl  docs/ (technical report, research paper)
  SHA256SUMS               every file above (`sha256sum -c SHA256SUMS`)
  EXTERNAL_SHA256SUMS      referenced files outside the bundle, by absolute path
```

Checkpoints are referenced by default: a 7B run's checkpoints are tens of GB each, and the run
directory already holds them; the bundle pins them by sha256. ``--copy-checkpoints`` copies them.
The dataset shards are always referenced, pinned by the sha256 of each file as it is now (a shard that
no longer matches its data manifest is refused). ``ominix mof check BUNDLE`` verifies SHA256SUMS.
The bundle is written under a temporary name and renamed, so it never exists half-written.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from ominix.atomic import check_replaceable, staged
from ominix.checkpoint import checksums, files_under
from ominix.errors import OminixError
from ominix.hashing import sha256_file
from ominix.release import cards, mof, provenance
from ominix.release.artifacts import RunArtifacts, collect, read_json

FRAMEWORK = {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"}
OMINIX_CODE_LICENSE = "Apache-2.0"  # OminiX's own license: the code components are OminiX source
APACHE_TEXT = Path(__file__).parent / "data" / "Apache-2.0.txt"
LICENSE_FILES = {"distribution": "LICENSE", "code": "LICENSE-code", "data": "LICENSE-data",
                 "document": "LICENSE-document"}


def load_release(path: Path | None, fallback: Any) -> Any:
    """A ReleaseConfig from ``path`` (a release.yaml), else ``fallback`` (the run's release section)."""
    from pydantic import ValidationError

    from ominix.config import ReleaseConfig, format_validation, read_yaml

    if path is None:
        return fallback.model_copy(deep=True)
    if not path.is_file():
        raise OminixError(f"release file {path} does not exist", "write one with `ominix mof init --out release.yaml`")
    mof.read_text(path, "a release file")  # a binary file is refused before YAML sees it
    try:
        return ReleaseConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise format_validation(exc, str(path), hint="see the template `ominix mof init` writes") from exc


def _doc_path(value: str | None, base: Path, field: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise OminixError(f"release {field} {path} does not exist", f"fix {field} in the release file")
    return path


class _Builder:
    def __init__(self, art: RunArtifacts, release: Any, base: Path, copy_checkpoints: bool) -> None:
        self.art, self.release, self.base, self.copy = art, release, base, copy_checkpoints
        self.licenses = release.licenses.model_dump()
        if not self.licenses["code"]["name"]:
            self.licenses["code"]["name"] = OMINIX_CODE_LICENSE
        for kind, ref in self.licenses.items():
            if ref["name"]:
                mof.check_license_id(ref["name"], f"release licenses.{kind}.name")
            if ref["path"]:
                _doc_path(ref["path"], base, f"licenses.{kind}.path")
        self.docs = {"Technical report": _doc_path(release.technical_report, base, "technical_report"),
                     "Research paper": _doc_path(release.research_paper, base, "research_paper")}
        self.external: dict[str, str] = {}
        self.eval_results = read_json(art.eval_results) if art.eval_results else None

    def components(self) -> dict[str, str]:
        """``{component name: path in the bundle}`` for every component this run provides."""
        art = self.art
        found = {name: f"code/ominix/{part}" for name, part in provenance.CODE_PARTS.items()}
        found["Supporting libraries and tools"] = "code/requirements.txt"
        found["Model parameters (Final)"] = "model/final" if self.copy else "model/final.json"
        if art.intermediate:
            found["Model parameters (Intermediate)"] = "model/intermediate" if self.copy else "model/intermediate.json"
        found["Model metadata"] = "model/metadata"
        if art.manifest:
            found["Datasets"] = "data"
            if art.validation_split():
                found["Evaluation data"] = "data/validation.json"
            if (art.data_dir / "DATA_CARD.md").is_file():
                found["Data card"] = "DATA_CARD.md"
        if self.eval_results is not None:
            found["Evaluation results"] = "eval/eval_results.json"
        if art.samples:
            found["Sample model outputs"] = "samples/samples.jsonl"
        found["Model card"] = "MODEL_CARD.md"
        for name, path in self.docs.items():
            if path:
                found[name] = self._doc_name(name, path)
        return found

    @staticmethod
    def _doc_name(component: str, path: Path) -> str:
        return f"docs/{component.lower().replace(' ', '_')}{''.join(path.suffixes)}"

    def mof_document(self) -> dict[str, Any]:
        r = self.release
        license_block = {kind: {"name": ref["name"], "path": LICENSE_FILES[kind]}
                         for kind, ref in self.licenses.items() if ref["name"]}
        entries = []
        found = self.components()
        for comp in mof.components():
            if comp.name not in found:
                continue
            entry = {"name": comp.name, "description": comp.description, "component_path": found[comp.name]}
            kind = comp.content_type if self.licenses[comp.content_type]["name"] else "distribution"
            if self.licenses[kind]["name"]:  # else the component stays unlicensed, and the report says so
                entry.update(license=self.licenses[kind]["name"], license_path=LICENSE_FILES[kind])
            entries.append(entry)
        release = {
            "name": r.name, "version": r.version, "date": r.date, "type": r.type,
            "architecture": r.architecture, "treatment": "pre-trained", "origin": r.origin,
            "producer": r.producer, "contact": r.contact, "repository": r.repository,
            "huggingface": r.huggingface, "license": license_block, "components": entries,
        }
        document = {"framework": dict(FRAMEWORK), "release": release}
        return mof.validate(document, "the release metadata")

    # -- writing ---------------------------------------------------------------------------------

    def _reference(self, src: Path, base: Path) -> dict[str, Any]:
        files = checksums(src, base)
        for rel, digest in files.items():
            self.external[str(base / rel)] = digest
        return {"path": str(src), "files": files}

    def _weights(self, tmp: Path) -> None:
        art, model = self.art, tmp / "model"
        final = art.export_dir or art.final.model_dir
        if self.copy:
            shutil.copytree(final, model / "final")
            for ckpt in art.intermediate:
                shutil.copytree(ckpt.model_dir, model / "intermediate" / ckpt.path.name / "model")
        else:
            model.mkdir()
            info = {"step": art.final.step, "format": "huggingface export" if art.export_dir else "checkpoint",
                    **self._reference(final, final)}
            _write_json(model / "final.json", info)
            if art.intermediate:
                _write_json(model / "intermediate.json", [
                    {"step": c.step, "tokens": c.state.get("tokens"), **self._reference(c.model_dir, c.model_dir)}
                    for c in art.intermediate])
        meta = model / "metadata"
        meta.mkdir()
        (meta / "config.yaml").write_text(art.config_text)
        shutil.copyfile(art.final.state_file, meta / art.final.state_file.name)
        if (art.run_dir / "metrics.jsonl").is_file():
            shutil.copyfile(art.run_dir / "metrics.jsonl", meta / "metrics.jsonl")
        optim = [p for p in (art.final.optimizer_dir, art.final.scheduler_file) if p.exists()]
        if self.copy:
            for p in optim:
                (shutil.copytree if p.is_dir() else shutil.copyfile)(p, meta / p.name)
        elif optim:
            _write_json(meta / "optimizer.json",
                        [{"step": art.final.step, **self._reference(p, art.final.path)} for p in optim])

    def _data(self, tmp: Path) -> None:
        art = self.art
        if not art.manifest:
            return
        data = tmp / "data"
        data.mkdir()
        shutil.copyfile(art.data_dir / "manifest.json", data / "manifest.json")
        tok = art.data_dir / art.manifest.get("tokenizer", {}).get("dir", "tokenizer")
        if tok.is_dir():
            shutil.copytree(tok, data / "tokenizer")
        for split in art.manifest["splits"].values():
            for shard in split.get("shards", []):
                self._shard(shard["file"], shard["sha256"])
                if "sources_file" in shard:
                    self._shard(shard["sources_file"], shard["sources_sha256"])
        if art.validation_split():
            _write_json(data / "validation.json", {"path": str(art.data_dir / "validation"),
                                                   "manifest_sha256": sha256_file(art.data_dir / "manifest.json"),
                                                   **art.validation_split()})
        if (art.data_dir / "DATA_CARD.md").is_file():
            shutil.copyfile(art.data_dir / "DATA_CARD.md", tmp / "DATA_CARD.md")

    def _shard(self, rel: str, listed: str) -> None:
        """Pin a data shard by the sha256 of the file itself; one that no longer matches its
        manifest is refused rather than published."""
        path = self.art.data_dir / rel
        if not path.is_file():
            raise OminixError(f"{path} is missing: the prepared data is incomplete",
                              f"run `ominix data inspect {self.art.data_dir} --verify`, or prepare the data again")
        digest = sha256_file(path)
        if digest != listed:
            raise OminixError(f"{path}: sha256 does not match the data manifest (the shard changed after "
                              "`ominix data prepare`)", "prepare the data again, or pass --data with the original")
        self.external[str(path)] = digest

    def _licenses(self, tmp: Path) -> None:
        for kind, ref in self.licenses.items():
            if not ref["name"]:
                continue
            dest = tmp / LICENSE_FILES[kind]
            if ref["path"]:
                shutil.copyfile(_doc_path(ref["path"], self.base, f"licenses.{kind}.path"), dest)
            elif ref["name"] == "Apache-2.0":
                shutil.copyfile(APACHE_TEXT, dest)
            else:
                dest.write_text(f"SPDX-License-Identifier: {ref['name']}\n\nThe {kind} of this release is "
                                f"licensed under {ref['name']}: https://spdx.org/licenses/{ref['name']}.html\n")

    def write(self, tmp: Path, command: str | None) -> mof.Classification:
        art, release = self.art, self.release
        document = self.mof_document()  # validated before anything is written
        (tmp / "code").mkdir(parents=True)
        provenance.copy_source(tmp / "code")
        (tmp / "code" / "requirements.txt").write_text(provenance.requirements_txt(provenance.package_versions()))
        _write_json(tmp / "code" / "PROVENANCE.json",
                    {**provenance.provenance(art, command), "resolved_config": "model/metadata/config.yaml"})
        self._weights(tmp)
        self._data(tmp)
        if self.eval_results is not None:
            (tmp / "eval").mkdir()
            shutil.copyfile(art.eval_results, tmp / "eval" / "eval_results.json")
        if art.samples:
            (tmp / "samples").mkdir()
            shutil.copyfile(art.samples, tmp / "samples" / "samples.jsonl")
        for name, path in self.docs.items():
            if path:
                (tmp / "docs").mkdir(exist_ok=True)
                shutil.copyfile(path, tmp / self._doc_name(name, path))
        self._licenses(tmp)
        (tmp / "MODEL_CARD.md").write_text(cards.model_card(art, release, self.eval_results))
        (tmp / "mof.yaml").write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        result = mof.classify(document["release"])
        result.hints = _hints(art)
        (tmp / "MOF_REPORT.md").write_text(cards.report_markdown(result, f"{release.name} {release.version}"))
        _write_json(tmp / "mof_classification.json", result.to_json())
        (tmp / "EXTERNAL_SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sorted(self.external.items())))
        sums = checksums(tmp, tmp)
        (tmp / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
        return result


def _hints(art: RunArtifacts) -> dict[str, str]:
    """How to provide each component a run can lack."""
    data = ("the prepared data directory (config data.path) was not found: pass --data DIR"
            if art.manifest is None else "the prepared data has no DATA_CARD.md or no validation split")
    return {
        "Evaluation results": f"run `ominix eval --model {art.run_dir}`",
        "Sample model outputs": f"run `ominix infer --model {art.run_dir} --prompts-file PROMPTS.jsonl`",
        "Model parameters (Intermediate)": "only one checkpoint is left: keep more with checkpoint.keep_every",
        "Datasets": data, "Data card": data, "Evaluation data": data,
        "Technical report": "set technical_report in the release file",
        "Research paper": "set research_paper in the release file",
    }



def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def make_bundle(run_dir: str | Path, out: str | Path | None = None, release_file: str | Path | None = None,
                name: str | None = None, producer: str | None = None, data_dir: str | Path | None = None,
                copy_checkpoints: bool = False, force: bool = False,
                command: str | None = None) -> tuple[mof.Classification, Path]:
    """Write the MOF release bundle of ``run_dir`` to ``out`` (default RUN_DIR/release)."""
    art = collect(run_dir, Path(data_dir) if data_dir else None)
    out = Path(out).expanduser().absolute() if out else art.run_dir / "release"
    release_path = Path(release_file).expanduser().absolute() if release_file else None
    inputs = [p for p in (art.run_dir, art.data_dir, release_path) if p is not None]
    check_replaceable(out, "bundle", force, inputs)
    release = load_release(release_path, art.config.release)
    release.name = name or release.name or art.run_dir.name
    release.producer = producer if producer is not None else release.producer
    release.date = release.date or date.today().isoformat()
    base = release_path.parent if release_path else Path.cwd()
    builder = _Builder(art, release, base, copy_checkpoints)
    with staged(out, kind="bundle") as tmp:
        result = builder.write(tmp, command)
    return result, out


def locate(path: Path) -> tuple[Path, Path | None]:
    """``(MOF file, its bundle directory or None)`` for a bundle directory, a bundle's mof.yaml
    (it sits beside SHA256SUMS) or a lone MOF model file."""
    if path.is_dir():
        if not (path / "mof.yaml").is_file():
            raise OminixError(f"{path} is a directory without mof.yaml, not a release bundle",
                              "pass a bundle written by `ominix mof report`, or a MOF model file")
        return path / "mof.yaml", path
    return path, path.parent if (path.parent / "SHA256SUMS").is_file() else None


def verify_bundle(bundle: Path) -> list[str]:
    """Check every line of ``bundle/SHA256SUMS``; return the problems (empty = OK): files missing,
    changed or not listed."""
    sums = bundle / "SHA256SUMS"
    if not sums.is_file():
        return ["SHA256SUMS: missing (not a bundle written by `ominix mof report`)"]
    problems, listed = [], set()
    for number, line in enumerate(mof.read_text(sums, "a checksum list").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"SHA256SUMS line {number}: not `SHA256  PATH`")
            continue
        listed.add(rel)
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch (changed since the bundle was written)")
    problems += [f"{p.relative_to(bundle)}: not listed" for p in files_under(bundle)
                 if p.name != "SHA256SUMS" and str(p.relative_to(bundle)) not in listed]
    return problems
