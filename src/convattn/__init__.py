"""convattn: self-attention and convolution in vision, executable and measurable.

Importing the package is cheap: torch-backed submodules and the names below load on first use, so
the command line answers `--help` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "attention",
    "convert",
    "data",
    "demos",
    "functional",
    "layers",
    "metrics",
    "models",
    "plotting",
    "records",
    "study",
    "train",
    "viz",
)
_NAMES = {
    "MultiHeadSelfAttention2d": "convattn.layers.mhsa2d",
    "ConvAsAttention": "convattn.convert",
    "AttentionAsConv": "convattn.convert",
    "conv_to_attention": "convattn.convert",
    "attention_to_conv": "convattn.convert",
    "create_mixer": "convattn.layers.mixers",
    "list_mixers": "convattn.layers.mixers",
    "create_model": "convattn.models.registry",
    "list_models": "convattn.models.registry",
}

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"convattn.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'convattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_NAMES])
