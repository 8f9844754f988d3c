"""The shape of the house: no import cycles (imports inside functions count), modules stay small
and lines short, the library neither imports the CLI nor prints, and the checkpoint layout is
spelled in the checkpoint package alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ominix"
MAX_LINES = 450
MAX_LINE_LENGTH = 120  # the aim is ~100 (STYLE.md); this is the hard limit, as MAX_LINES is
ENTRY_POINT = "ominix.__main__"  # `python -m ominix`: the one module outside cli/ that starts it


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every ominix module that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ominix.x import y` imports ominix.x, or ominix.x.y when y is a module
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        # a package's __init__ importing its own submodules is not a cycle through the child
        graph[name] = _imports(path, modules) - {name} - parents
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_checker_sees_a_cycle_through_a_function_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_checkpoint_layout_is_spelled_in_one_package() -> None:
    # the step-directory name and its pattern: formatting or parsing `step_NNNNNNNN`
    spelled = re.compile(r"""step_\{|step_\(|["']step_\*["']|["']latest["']""")
    outside = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if "checkpoint" not in p.relative_to(PACKAGE).parts and spelled.search(p.read_text())]
    assert outside == []


def _library() -> dict[str, Path]:
    """Every module outside ``ominix/cli/`` and the entry point, by name."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: path for name, path in files.items()
            if name != ENTRY_POINT and not name.startswith("ominix.cli")}


def test_the_library_does_not_import_the_cli() -> None:
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    importing = {name: sorted(m for m in _imports(path, modules) if m.startswith("ominix.cli"))
                 for name, path in _library().items()}
    assert {name: found for name, found in importing.items() if found} == {}


def test_the_library_does_not_print() -> None:
    # the CLI renders what the library returns; a worker's own lines go through ominix.console
    printing = sorted(
        f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in _library().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print")
    assert printing == []


def test_lines_stay_short() -> None:
    long = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > MAX_LINE_LENGTH]
    assert long == []
def test_no_module_shares_a_name_with_the_standard_library() -> None:
    """A module named like a standard-library one (``inspect``, ``profile``) reads as that module
    and shadows it for a script run from the module's folder."""
    import sys

    shadowing = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                       if p.stem in sys.stdlib_module_names)
    assert shadowing == []
