"""Submodules of a package reachable as attributes, imported on first use (`convattn.analysis.flops`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType

__all__ = ["lazy_submodules"]


def lazy_submodules(
    package: str, path: list[str], names: dict[str, object]
) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for a package: every submodule in `path` loads on first access.

    Args:
        package: the package's `__name__`.
        path: its `__path__`.
        names: its `globals()`, for `__dir__`.
    """
    submodules = sorted(m.name for m in pkgutil.iter_modules(path))

    def getattr_(name: str) -> ModuleType:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*(n for n in names if not n.startswith("_")), *submodules})

    return getattr_, dir_
