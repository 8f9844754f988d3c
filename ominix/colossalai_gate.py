"""The one gate before OminiX patches or mirrors a ColossalAI internal
(``ominix.train.colossalai_patches``, ``ominix.compiled_gemini``).

Each target is checked to exist with the signature the patch was written against (ColossalAI
``WRITTEN_FOR``) before it is replaced or called: under another ColossalAI (installed with
``--no-deps`` on a cluster image, say) a renamed target would otherwise turn the patch into a
no-op attribute nobody calls, and a changed one into a replacement called with other arguments.
A patch needed for correctness refuses with one ``OminixError`` (:func:`require`); an optional
speed-up is skipped with one notice line (:func:`skipped`).
"""

from __future__ import annotations

import inspect
from typing import Any

from ominix.errors import OminixError

WRITTEN_FOR = "0.5.0"  # the ColossalAI release whose internals the patches were written against

# (owner: a class or module, attribute name, its parameters as ``signature_text`` prints them)
Target = tuple[Any, str, str]


def signature_text(value: Any) -> str:
    """``value``'s parameters as ``inspect.signature`` prints them, without annotations (which
    releases spell differently without changing the call), e.g. ``(self, async_op=False)``."""
    sig = inspect.signature(value)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _owner_name(owner: Any) -> str:
    return owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"


def _problem(target: Target) -> str | None:
    """What is wrong with ``target`` (missing, another signature), or None when it is as expected."""
    owner, name, expected = target
    where = f"{_owner_name(owner)}.{name}"
    value = getattr(owner, name, None)
    if value is None or not callable(value):
        return f"{where} is missing"
    try:
        found = signature_text(value)
    except (TypeError, ValueError):  # a builtin without a signature: not what the patch was written for
        found = "(unknown)"
    return None if found == expected else f"{where} is {found}, not {expected}"


def _installed() -> str:
    from importlib.metadata import version

    return version("colossalai")


def require(what: str, *targets: Target, instead: str | None = None) -> None:
    """Raise an OminixError naming the first of ``targets`` that is missing or has another signature;
    ``what`` names the patch (why it is needed), ``instead`` what the user can do besides installing
    the ColossalAI release the patch was written for."""
    for target in targets:
        problem = _problem(target)
        if problem is not None:
            raise OminixError(
                f"{what} needs ColossalAI {WRITTEN_FOR}'s internals, and ColossalAI {_installed()}'s "
                f"{problem}",
                f"pip install 'colossalai=={WRITTEN_FOR}'" + (f", or {instead}" if instead else ""),
            )


def skipped(what: str, *targets: Target) -> str | None:
    """The notice line that the optional speed-up ``what`` is skipped because one of ``targets`` is
    missing or has another signature, or None when the patch can be applied."""
    for target in targets:
        problem = _problem(target)
        if problem is not None:
            return (f"note: {what} is skipped: it was written for ColossalAI {WRITTEN_FOR}, and "
                    f"ColossalAI {_installed()}'s {problem}")
    return None
