"""convattn: self-attention and convolution in vision, executable and measurable.

Importing the package is cheap: torch-backed submodules and the names below load on first use, so
the command line answers `--help` without importing torch.
"""

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

# The faces (attention, convert, functional) and the packages, in the order imports flow.
_SUBMODULES = (
    "utils",
    "layers",
    "attention",
    "functional",
    "convert",
    "models",
    "ssl",
    "data",
    "train",
    "analysis",
    "study",
    "cli",
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


def __getattr__(name: str) -> _Any:
    if name in _SUBMODULES:
        return _importlib.import_module(f"convattn.{name}")
    if name in _NAMES:
        return getattr(_importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'convattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    public = [n for n in globals() if not n.startswith("_") or n == "__version__"]
    return sorted([*public, *_SUBMODULES, *_NAMES])
