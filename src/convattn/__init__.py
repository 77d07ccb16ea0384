"""convattn: self-attention and convolution in vision, executable and measurable.

Importing the package is cheap: torch-backed submodules load on first use, so the command line
answers `--help` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("attention", "demos", "layers", "metrics", "models", "plotting", "study")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"convattn.{name}")
    raise AttributeError(f"module 'convattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
