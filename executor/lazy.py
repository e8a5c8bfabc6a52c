"""Public names loaded on first use (PEP 562), for the packages whose ``__init__`` would
otherwise import every module at once: ``executor``, ``executor.tools``, ``personas`` and
``skills``. Each keeps its table (name -> defining module) and its ``TYPE_CHECKING``
imports; this gives it the module ``__getattr__`` and ``__dir__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__, __dir__ = attach(__name__, _EXPORTS, globals())``: a name in
    ``where`` is imported from its module the first time it is asked for, then kept in
    the package's namespace, so the next lookup is an ordinary one."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
