"""Config keys that were renamed. An old name is still read wherever a config comes from (a YAML
file, ``--set``, a flag, the config.yaml and state.json of runs and checkpoints written before the
rename), as the new key, with one notice per old key that says to rename it.

``load_config`` renames each layer before it merges (so precedence holds: ``--set`` with an old
name overrides a file's new name), and the section's own validator renames what is validated
without ``load_config`` (a checkpoint's state.json).
"""

from __future__ import annotations

from typing import Any

from ominix.errors import OminixError
from ominix.plugins import Refusal

# old dotted key -> new dotted key (same section); activation recompute is not checkpoint saving
RENAMED = {
    "model.gradient_checkpointing": "model.recompute_activations",
    "model.checkpoint_policy": "model.recompute_policy",
}


def _in_section(section: str) -> dict[str, str]:
    """The old key -> new key of one section, without the section's name."""
    prefix = f"{section}."
    return {old.removeprefix(prefix): new.removeprefix(prefix)
            for old, new in RENAMED.items() if old.startswith(prefix)}


def notice(old: str, origin: str) -> str:
    return (f"note: {old} is now {RENAMED[old]}: {origin} uses the old name, read as the new one; "
            "rename it")


def _both_set(old: str, origin: str | None = None) -> OminixError:
    prefix = f"{origin}: " if origin else ""
    return OminixError(f"{prefix}{old} and {RENAMED[old]} are both set",
                       f"keep {RENAMED[old]} only ({old} is its old name)")


def rename_section(section: str, data: Any) -> Any:
    """``data`` (one section's mapping) with old keys under their new names; other values as given.
    Both names of one key are refused (a ``Refusal``: the config's error formatter keeps its hint)."""
    renames = _in_section(section)
    if not isinstance(data, dict) or not renames.keys() & data.keys():
        return data
    data = dict(data)
    for old, new in renames.items():
        if old in data:
            if new in data:
                error = _both_set(f"{section}.{old}")
                raise Refusal(error.message, error.hint)
            data[new] = data.pop(old)
    return data


def rename_tree(tree: dict[str, Any], origin: str, notices: dict[str, str]) -> None:
    """Rename the old keys of a whole config ``tree`` (a YAML file's) in place; ``notices`` gets
    one line per old key found (keyed by it, so a key met again adds none)."""
    for old in RENAMED:
        section, key = old.split(".", 1)
        node = tree.get(section)
        if isinstance(node, dict) and key in node:
            new = _in_section(section)[key]
            if new in node:
                raise _both_set(old, origin)
            node[new] = node.pop(key)
            notices.setdefault(old, notice(old, origin))


def rename_key(parts: list[str], origin: str, notices: dict[str, str]) -> list[str]:
    """The dotted key ``parts`` of one override under its new name (with a notice if it was old)."""
    old = ".".join(parts)
    if old not in RENAMED:
        return parts
    notices.setdefault(old, notice(old, origin))
    return RENAMED[old].split(".")


def schema_extra(section: str):
    """A ``json_schema_extra`` that lists the section's old names as deprecated properties, so an
    editor validating an older config file against ``ominix config schema`` accepts them."""
    renames = _in_section(section)

    def extra(schema: dict[str, Any], model: Any) -> None:
        props = schema.get("properties", {})
        for old, new in renames.items():
            props[old] = {**props[new], "deprecated": True,
                          "description": f"Old name of {section}.{new}, read as it (with a notice)."}

    return extra
