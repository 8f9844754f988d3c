"""``ominix mof report``: gather a run's artifacts into a MOF release bundle that stands on its own,
and classify it by what it holds.

```
BUNDLE/
  mof.yml                  MOF model file (official schema): each component present, license, path
  MOF_REPORT.md            class, progress per class, components, what the next class needs
  mof_classification.json  the same for programs (MOT's shape + per-component detail)
  MODEL_CARD.md  DATA_CARD.md  LICENSE-code  LICENSE-data  LICENSE-document  LICENSE (distribution)
  code/ominix/             the OminiX source that trained the model (architecture, train, data, infer, eval)
  code/requirements.txt    every installed package ==version (supporting libraries and tools)
  code/PROVENANCE.json     OminiX version, git commit + dirty flag, data preprocessing command, ...
  model/final/             the final model in Hugging Face format with its tokenizer (the run's export
                           of the final checkpoint, or exported now): AutoModelForCausalLM loads it
  model/intermediate/step_N/   each declared checkpoint in Hugging Face format, as model/final/, and
                           its state.json (+ optimizer/ and scheduler.pt with release.optimizer_state)
  model/checkpoints.json   the checkpoint table (see ominix.release.checkpoints)
  model/metadata/          resolved config.yaml, final state.json (+ optimizer state, as above),
                           training_run.json (throughput, MFU, restarts, wall time, GPU-hours, devices)
  logs/                    metrics.jsonl, train.log, tb/ (TensorBoard) as the run wrote them
  data/                    the prepared data, or a reference to it (see ominix.release.bundle_data)
  data_order/              the run's data-order ledger: the training blocks of every step
                           (ominix.data.ledger; DATA_CARD.md says how to rebuild a batch)
  eval/eval_results.json  samples/samples.jsonl  docs/ (technical report, research paper)
  BUNDLE.json              the size of every file, the data mode, bytes linked and copied
  SHA256SUMS               every file above (`sha256sum -c SHA256SUMS` from inside the bundle)
```

Weights, data shards and optimizer state come in as hard links where the run lies on the same
filesystem (no space taken), every other file and those elsewhere as copies (see
``ominix.release.bundle_files``); nothing points outside the bundle. A component is
declared in mof.yml only when its files are in the bundle (or, for referenced data, the reference is
complete), so the class is that of what is handed over. The bundle is written under a temporary
name and renamed, so it never exists half-written.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any, get_args

import yaml

from ominix.atomic import check_replaceable, staged
from ominix.checkpoint.layout import SCHEDULER, STATE
from ominix.errors import OminixError
from ominix.eval.results import run_results
from ominix.infer.load import EXPORT_META
from ominix.release import bundle_data, cards, checkpoints, mof, provenance
from ominix.release.artifacts import RunArtifacts, collect, read_json
from ominix.release.bundle_files import (MOF_FILE, SUMS, BundleCheck, Placer, Progress, bundle_mof_file,
                                         verify_bundle)
from ominix.release.run_record import training_record

__all__ = ["BundleCheck", "locate", "make_bundle", "verify_bundle"]

FRAMEWORK = {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"}
OMINIX_CODE_LICENSE = "Apache-2.0"  # OminiX's own license: the code components are OminiX source
APACHE_TEXT = Path(__file__).parent / "data" / "Apache-2.0.txt"
LICENSE_FILES = {"distribution": "LICENSE", "code": "LICENSE-code", "data": "LICENSE-data",
                 "document": "LICENSE-document"}
NOT_DECLARED = ("no release metadata was declared (licenses, technical report, research paper): write "
                "a release.yaml with `ominix mof init` and pass it with `--release release.yaml`")


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


def _declared(art: RunArtifacts, steps: list[int] | None) -> list[Any]:
    """The intermediate checkpoints ``release.intermediate`` names (None: all the run kept)."""
    if steps is None:
        return art.intermediate
    kept = {c.step: c for c in art.intermediate}
    unknown = [s for s in steps if s not in kept]
    if unknown:
        raise OminixError(f"release intermediate: step {unknown[0]} is not an intermediate checkpoint of "
                          f"{art.run_dir}", f"choose among {sorted(kept) or 'none (only the final one is left)'}")
    return [kept[s] for s in sorted(set(steps))]


class _Builder:
    def __init__(self, art: RunArtifacts, release: Any, base: Path, out: Path) -> None:
        self.art, self.release, self.base = art, release, base
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
        self.intermediate = _declared(art, release.intermediate)
        self.data_mode = bundle_data.resolve_mode(release.data, art.data_dir, out) if art.manifest else None
        self.data_plan: bundle_data.DataPlan | None = None
        self.eval_results = run_results(art.run_dir)

    def planned(self) -> dict[str, str]:
        """``{component name: path in the bundle}`` for every component this run can provide."""
        art = self.art
        found = {name: f"code/ominix/{part}" for name, part in provenance.CODE_PARTS.items()}
        found["Supporting libraries and tools"] = "code/requirements.txt"
        found["Model parameters (Final)"] = "model/final"
        if self.intermediate:
            found["Model parameters (Intermediate)"] = "model/intermediate"
        found["Model metadata"] = "model/metadata"
        if art.manifest:
            found["Datasets"] = bundle_data.DATA
            split = art.validation_split()
            if split:
                found["Evaluation data"] = (f"data/{Path(split['shards'][0]['file']).parent}"
                                            if self.data_mode != "reference" else "data/reference.json")
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

    def contained(self, tmp: Path) -> dict[str, str]:
        """The planned components whose files are in the bundle staged at ``tmp`` (referenced data:
        whose reference is complete)."""
        def there(rel: str) -> bool:
            path = tmp / rel
            return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))

        found = {name: rel for name, rel in self.planned().items() if there(rel)}
        if self.data_plan is not None and not self.data_plan.complete:
            found.pop("Datasets", None)
            found.pop("Evaluation data", None)
        return found

    @staticmethod
    def _doc_name(component: str, path: Path) -> str:
        return f"docs/{component.lower().replace(' ', '_')}{''.join(path.suffixes)}"

    def mof_document(self, found: dict[str, str]) -> dict[str, Any]:
        r = self.release
        license_block = {kind: {"name": ref["name"], "path": LICENSE_FILES[kind]}
                         for kind, ref in self.licenses.items() if ref["name"]}
        entries = []
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

    def _weights(self, tmp: Path, placer: Placer, command: str | None) -> None:
        from ominix.infer.export import export

        art, optimizer = self.art, self.release.optimizer_state
        (tmp / "model").mkdir()
        if art.export_dir:
            placer.add(art.export_dir, "model/final")
        else:  # the run was not exported (or only an older checkpoint was): export the final one now
            export(art.final.path, out=tmp / "model" / "final", verify=True,
                   command=f"{command or 'ominix mof report'} (export of {art.final.path.name})")
        entries = []
        for ckpt in self.intermediate:
            rel = f"model/intermediate/{ckpt.path.name}"
            meta = checkpoints.export_intermediate(ckpt, tmp / rel, command)
            entries.append((ckpt.state, meta, rel))
            placer.add(ckpt.state_file, f"{rel}/{STATE}", link=False)
            if optimizer:
                self._optimizer(ckpt, rel, placer)
        final = read_json((art.export_dir or tmp / "model" / "final") / EXPORT_META)
        self.checkpoint_rows = checkpoints.rows([*entries, (art.final.state, final, "model/final")], art.metrics)
        meta = tmp / "model" / "metadata"
        meta.mkdir(parents=True)
        (meta / "config.yaml").write_text(art.config_text)
        _write_json(meta / "training_run.json", training_record(art.metrics))  # what a technical report cites
        placer.add(art.final.state_file, f"model/metadata/{STATE}", link=False)
        if optimizer:
            self._optimizer(art.final, "model/metadata", placer)

    def _final_card(self, tmp: Path, placer: Placer, table: list[str]) -> None:
        """The final model's README.md (its Hub card) written for this release: its licenses, the
        run's evaluation as it is now and the checkpoint table."""
        from ominix.infer.load import resolve
        from ominix.infer.model_card import model_card

        final = tmp / "model" / "final"
        text = model_card(resolve(self.art.final.path), read_json(final / EXPORT_META), self.release.name,
                          self.release, table)
        placer.write_text("model/final/README.md", text)

    @staticmethod
    def _optimizer(ckpt: Any, rel: str, placer: Placer) -> None:
        for path in (ckpt.optimizer_dir, ckpt.scheduler_file):
            if path.exists():
                placer.add(path, f"{rel}/{path.name}")

    def _logs(self, placer: Placer) -> None:
        for name in ("metrics.jsonl", "train.log", "tb"):
            path = self.art.run_dir / name
            if path.exists():  # copied: train.log grows when the run is resumed, a link would follow it
                placer.add(path, f"logs/{name}", link=False)

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

    def write(self, tmp: Path, command: str | None, progress: Progress | None,
              declared: bool) -> mof.Classification:
        art, release = self.art, self.release
        self.mof_document(self.planned())  # the release metadata is validated before anything is written
        placer = Placer(tmp, progress)
        (tmp / "code").mkdir(parents=True)
        provenance.copy_source(tmp / "code")
        (tmp / "code" / "requirements.txt").write_text(provenance.requirements_txt(provenance.package_versions()))
        _write_json(tmp / "code" / "PROVENANCE.json",
                    {**provenance.provenance(art, command), "resolved_config": "model/metadata/config.yaml"})
        if art.manifest:  # the ledger is checked before the weights are exported or placed
            bundle_data.place_card_and_order(art, tmp, placer)
        self._weights(tmp, placer, command)
        self._logs(placer)
        if art.manifest:
            self.data_plan = bundle_data.place(art, self.data_mode, placer, tmp)
        if self.eval_results is not None and "downstream" in self.eval_results:
            (tmp / "eval").mkdir()
            _write_json(tmp / "eval" / "eval_results.json", self.eval_results)  # with training's tasks
        elif self.eval_results is not None:
            placer.add(art.eval_results, "eval/eval_results.json", link=False)
        if art.samples:
            placer.add(art.samples, "samples/samples.jsonl", link=False)
        for name, path in self.docs.items():
            if path:
                placer.add(path, self._doc_name(name, path), link=False)
                for image in _linked_images(path):  # a report's figures travel with it
                    placer.add(path.parent / image, f"docs/{image}", link=False)
        placer.place()
        self._licenses(tmp)
        checkpoints.write_table(tmp, self.checkpoint_rows)
        table = checkpoints.markdown(self.checkpoint_rows)
        (tmp / "MODEL_CARD.md").write_text(cards.model_card(art, release, self.eval_results) + "\n"
                                           + "\n".join(table) + "\n")
        self._final_card(tmp, placer, table)
        document = self.mof_document(self.contained(tmp))
        (tmp / MOF_FILE).write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        result = mof.classify(document["release"])
        result.hints = _hints(art, self.data_plan)
        result.notes = [] if declared else [NOT_DECLARED]
        (tmp / "MOF_REPORT.md").write_text(cards.report_markdown(result, f"{release.name} {release.version}"))
        _write_json(tmp / "mof_classification.json", result.to_json())
        placer.seal({"data": self.data_plan.mode if self.data_plan else None,
                     "data_reference_complete": self.data_plan.complete if self.data_plan else None,
                     "linked_bytes": placer.linked, "copied_bytes": placer.copied})
        return result


def _hints(art: RunArtifacts, data: bundle_data.DataPlan | None) -> dict[str, str]:
    """How to provide each component a run can lack."""
    why = ("the prepared data directory (config data.path) was not found: pass --data DIR"
           if art.manifest is None else "the prepared data has no DATA_CARD.md or no validation split")
    if data is not None and not data.complete:
        why = "the data reference is incomplete (" + "; ".join(data.missing) + "): set release.data: link or copy"
    return {
        "Evaluation results": f"run `ominix eval --model {art.run_dir}`",
        "Sample model outputs": f"run `ominix infer --model {art.run_dir} --prompts-file PROMPTS.jsonl`",
        "Model parameters (Intermediate)": "no intermediate checkpoint is declared or kept: keep more with "
                                           "checkpoint.keep_every, and list them in release.intermediate",
        "Datasets": why, "Data card": why, "Evaluation data": why,
        "Technical report": "set technical_report in the release file",
        "Research paper": "set research_paper in the release file",
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def make_bundle(run_dir: str | Path, out: str | Path | None = None, release_file: str | Path | None = None,
                name: str | None = None, producer: str | None = None, data_dir: str | Path | None = None,
                data_mode: str | None = None, optimizer_state: bool | None = None, force: bool = False,
                command: str | None = None,
                progress: Progress | None = None) -> tuple[mof.Classification, Path]:
    """Write the MOF release bundle of ``run_dir`` to ``out`` (default RUN_DIR/release).
    ``data_mode`` and ``optimizer_state`` override the release's ``data`` and ``optimizer_state``;
    ``progress`` hears how many bytes of the big files are placed and hashed."""
    from ominix.config import ReleaseConfig

    art = collect(run_dir, Path(data_dir) if data_dir else None)
    out = Path(out).expanduser().absolute() if out else art.run_dir / "release"
    release_path = Path(release_file).expanduser().absolute() if release_file else None
    inputs = [p for p in (art.run_dir, art.data_dir, release_path) if p is not None]
    check_replaceable(out, "bundle", force, inputs)
    release = load_release(release_path, art.config.release)
    declared = release_path is not None or art.config.release != ReleaseConfig()
    release.name = name or release.name or art.run_dir.name
    release.producer = producer if producer is not None else release.producer
    release.date = release.date or date.today().isoformat()
    if data_mode is not None:
        modes = get_args(ReleaseConfig.model_fields["data"].annotation)
        if data_mode not in modes:
            raise OminixError(f"--data-mode {data_mode!r} is not one of {', '.join(modes)}",
                              "pass --data-mode link (the default when on one filesystem), copy or reference")
        release.data = data_mode
    release.optimizer_state = release.optimizer_state if optimizer_state is None else optimizer_state
    base = release_path.parent if release_path else Path.cwd()
    builder = _Builder(art, release, base, out)
    with staged(out, kind="bundle") as tmp:
        result = builder.write(tmp, command, progress, declared)
    return result, out


def locate(path: Path) -> tuple[Path, Path | None]:
    """``(MOF file, its bundle directory or None)`` for a bundle directory, a bundle's mof.yml
    (it sits beside SHA256SUMS; mof.yaml in an older bundle) or a lone MOF model file (.yml, the
    only name MOT reads)."""
    if path.is_dir():
        found = bundle_mof_file(path)
        if found is None:
            raise OminixError(f"{path} is a directory without {MOF_FILE}, not a release bundle",
                              "pass a bundle written by `ominix mof report`, or a MOF model file")
        return found, path
    if (path.parent / SUMS).is_file() and path == bundle_mof_file(path.parent):
        return path, path.parent
    if path.is_file() and path.suffix != ".yml":
        raise OminixError(f"{path}: MOT reads MOF model files named *.yml only, so it would not read this one",
                          f"rename it: mv {path} {path.with_suffix('.yml')}")
    return path, None


def _linked_images(doc: Path) -> list[str]:
    """Relative image links of a markdown document that name files beside it (``![..](fig.png)``)."""
    if doc.suffix.lower() != ".md":
        return []
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text(errors="replace"))
    return sorted({link for link in links if "://" not in link and not Path(link).is_absolute()
                   and ".." not in Path(link).parts and (doc.parent / link).is_file()})
