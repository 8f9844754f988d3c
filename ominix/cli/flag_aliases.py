"""Flags spelled the way other launchers spell them (``colossalai run``, torchrun, DeepSpeed):
``--nproc_per_node``, ``--master_port``, ``--num_nodes``, ``--host-file`` get one line naming the
OminiX flag instead of a usage box. Typer only through ``typer.core.TyperGroup`` (``cls=``)."""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup

from ominix.errors import OminixError

# normalised (lower case, '_' -> '-') spellings of other tools -> the OminiX flag
ALIASES = {
    "--num-nodes": "--nodes", "--nnodes": "--nodes", "--nnode": "--nodes", "--node": "--nodes",
    "--host-file": "--hostfile", "--hosts": "--hostfile", "--host": "--hostfile", "--hosts-file": "--hostfile",
    "--nproc": "--nproc-per-node", "--nprocs": "--nproc-per-node", "--gpus-per-node": "--nproc-per-node",
    "--num-gpus": "--nproc-per-node", "--ngpus": "--nproc-per-node",
    "--output": "--out", "--output-dir": "--out", "--out-dir": "--out", "--outdir": "--out",
    "--preset": "--config", "--cfg": "--config", "--config-file": "--config",
    "--steps": "--max-steps", "--train-steps": "--max-steps",
}


def _leaf(group: Any, ctx: Any, args: list[str]) -> tuple[Any, list[str], list[str]]:
    """The command ``args`` name (following subcommands), its path and the arguments left to it."""
    command, path, rest = group, [], list(args)
    while rest and hasattr(command, "get_command"):
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            break
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    return command, path, rest


def suggestion(group: Any, ctx: Any, args: list[str]) -> OminixError | None:
    """An error naming the right flag for the first misspelled one in ``args``; None when every
    option is known or no spelling of ours is close (the parser's own message then stands)."""
    command, path, rest = _leaf(group, ctx, args)
    if hasattr(command, "get_command"):
        return None
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    for token in rest:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if not name.startswith("--") or name in known:
            continue
        normal = name.lower().replace("_", "-")
        right = normal if normal in known else ALIASES.get(normal)
        if right in known:
            where = " ".join(["ominix", *path])
            return OminixError(f"{where} has no option {name}: did you mean {right}?",
                               f"OminiX flags are spelled with dashes; `{where} -h` lists them")
    return None


class RootGroup(TyperGroup):
    """The root command group: a flag spelled as another launcher spells it is one clear line."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if not ctx.resilient_parsing:  # (shell completion parses resiliently: never refuse there)
            error = suggestion(self, ctx, args)
            if error is not None:
                raise error
        return super().resolve_command(ctx, args)
