"""How a config is loaded, overridden and saved, and the one formatter of pydantic errors.

Precedence, lowest first: model defaults < YAML file (or preset) < ``--set a.b=c`` < command flags.
A resolved config is written once into the run directory (``config.yaml``); every later stage
(worker, checkpoints, export, infer, eval, MOF report) reads that file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ominix import atomic
from ominix.config.models import OminixConfig
from ominix.config.renamed import rename_key, rename_tree
from ominix.errors import OminixError

PRESETS_DIR = Path(__file__).parent.parent / "configs"
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _resolve_source(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if path.is_dir():
            raise OminixError(f"config file {path} is a directory", "pass a YAML file or a preset name")
        if not path.is_file():
            raise OminixError(f"config file not found: {path}", "check the path")
        return path
    preset = PRESETS_DIR / f"{source}.yaml"
    if preset.is_file():
        return preset
    raise OminixError(
        f"no config file or preset named {source!r}",
        f"use a YAML path or one of the presets: {', '.join(preset_names())}",
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:  # an unhashable key is PyYAML's own error
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise OminixError(f"{path} is not a text file", "pass a YAML config file or a preset name") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise OminixError(f"{path}:{where}: {problem}", "give each key once per section") from exc
        raise OminixError(f"{path}:{where} is not valid YAML", "fix the syntax") from exc
    if not isinstance(data, dict):
        raise OminixError(f"{path} must hold a mapping of sections", "see `ominix config show`")
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one ``a.b=c`` override; the value is typed by YAML (``1``, ``true``, ``[a, b]``)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise OminixError(f"--set {item!r} is not of the form section.key=value", "e.g. --set optim.lr=1e-4")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise OminixError(f"--set {item!r}: the value is not valid YAML", "quote strings") from exc
    return parts, value


def _apply(tree: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise OminixError(f"{origin}: {'.'.join(parts)} goes through a non-section", "check the key")
        node = child
    _merge(node, parts[-1], value)


def _merge(node: dict[str, Any], key: str, value: Any) -> None:
    """Set ``node[key]``; a mapping given for a section merges into it key by key, so
    ``--set 'model={hidden_size: 64}'`` changes one key and keeps the rest of the preset's model."""
    old = node.get(key)
    if isinstance(value, dict) and isinstance(old, dict):
        for sub, item in value.items():
            _merge(old, sub, item)
    else:
        node[key] = value


def format_validation(exc: ValidationError, origin: str | None = None, name: Callable[[str], str] = str,
                      where: str = "in the file or with --set", hint: str | None = None) -> OminixError:
    """The first error of ``exc`` as one ``OminixError`` (every pydantic error of OminiX goes through here).

    ``origin`` prefixes the message (a file, ``--set ...``); ``name`` turns a dotted location into what
    the user typed (a key, a flag); ``where`` says where to change it; ``hint`` replaces every hint."""
    err = exc.errors()[0]
    loc = name(".".join(str(p) for p in err["loc"]))
    prefix = f"{origin}: " if origin else ""
    if err["type"] == "extra_forbidden":
        return OminixError(f"{prefix}unknown setting {loc!r}", hint or "run `ominix config schema` for the valid keys")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # a cross-field rule: its message names the settings, its hint what to do
        rule_hint = getattr(err.get("ctx", {}).get("error"), "hint", None)
        return OminixError(f"{prefix}{msg}", hint or rule_hint or f"change one of the settings named, {where}")
    return OminixError(f"{prefix}{loc}: {msg}", hint or " ".join(filter(None, ("change", loc, where))))


def build_config(tree: dict[str, Any], origin: str = "config", renamed: list[str] = ()) -> OminixConfig:
    """Validate ``tree``; ``renamed`` are the notices of old key names met while building it."""
    try:
        cfg = OminixConfig.model_validate(tree)
    except ValidationError as exc:
        raise format_validation(exc, origin) from exc
    cfg._renamed = list(renamed)
    return cfg


def load_config(
    source: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> OminixConfig:
    """Resolve a config: defaults < ``source`` (YAML path or preset name) < ``sets`` < ``flags``.

    ``flags`` maps dotted keys to values; ``None`` values are ignored so unset CLI options
    leave lower layers alone. Old key names (``config.renamed``) are read as the new ones, each
    layer renamed before it merges, with one notice per old key (``cfg.notices()``).
    """
    tree: dict[str, Any] = {}
    origin = "defaults"
    renamed: dict[str, str] = {}
    if source is not None:
        path = _resolve_source(source)
        tree = read_yaml(path)
        origin = str(path)
        rename_tree(tree, origin, renamed)
    for item in sets or []:
        parts, value = parse_set(item)
        _apply(tree, rename_key(parts, f"--set {item}", renamed), value, f"--set {item}")
    for key, value in (flags or {}).items():
        if value is not None:
            _apply(tree, rename_key(key.split("."), f"flag for {key}", renamed), value, f"flag for {key}")
    if sets or flags:
        origin = f"{origin} with overrides"
    return build_config(tree, origin, list(renamed.values()))


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def dump_json(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2)


def save_config(cfg: OminixConfig, path: Path) -> None:
    """Write ``cfg`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, dump_yaml(cfg))


def schema() -> dict[str, Any]:
    return OminixConfig.model_json_schema()


def write_schema(out: Path, force: bool = False) -> Path:
    """Write the JSON Schema into the file ``out`` (marked as this command's, so it is replaced
    next time; another existing file only with ``force``); returns ``out``."""
    atomic.check_replaceable(out, "schema", force)
    try:
        atomic.write_text(out, json.dumps({**atomic.file_mark("schema"), **schema()}, indent=2) + "\n")
    except OSError as exc:
        raise OminixError(f"cannot write {out}: {exc.strerror}",
                          "give --out a writable file path in an existing directory") from exc
    return out
