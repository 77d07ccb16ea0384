"""Training: a frozen config, a resumable run with atomic checkpoints, DDP under torchrun, evaluation.

`config` (TrainConfig) and `schedule` (the learning rate) are plain Python; `engine` (one epoch, one
evaluation), `loop` (the run) and `export` (the exported weights) load torch, and their names below
load on first use, so the command line can build its flags from TrainConfig without importing torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from convattn.train.config import TrainConfig
from convattn.train.schedule import lr_at, warmup_cosine
from convattn.utils.lazy import lazy_submodules

if TYPE_CHECKING:
    from convattn.train.engine import Diverged, evaluate, train_one_epoch
    from convattn.train.export import evaluate_weights, load_weights
    from convattn.train.loop import Interrupted, RunResult, build_model, read_history, train

_TORCH_MODULES = ("engine", "export", "loop")  # searched in this order by name

__all__ = [
    "Diverged",
    "Interrupted",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate",
    "evaluate_weights",
    "load_weights",
    "lr_at",
    "read_history",
    "train",
    "train_one_epoch",
    "warmup_cosine",
]


_submodule, _ = lazy_submodules(__name__, __path__, globals())


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _TORCH_MODULES:
            found = importlib.import_module(f"convattn.train.{module}")
            if name in found.__all__:
                return getattr(found, name)
    return _submodule(name)  # convattn.train.loop and the others, on first use


def __dir__() -> list[str]:
    return sorted({*__all__, *(m.name for m in pkgutil.iter_modules(__path__))})
