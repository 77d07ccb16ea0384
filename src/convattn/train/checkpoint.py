"""Atomic checkpoints: write a temporary file, fsync it, rename it over the old one, fsync the folder.

A process killed at any moment (even mid-save) leaves either the previous checkpoint or the new one,
never a torn file. Loading uses `torch.load(weights_only=True)` only, and checks that the file is a
convattn checkpoint before anything is restored.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convattn.utils.records import atomic_write_bytes

__all__ = ["FORMAT", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT = "convattn-checkpoint-1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` (tensors, numbers, strings, lists, dicts) to `path` atomically."""
    import io

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`; a ValueError naming the file if it is corrupt or not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a torn, truncated or foreign file
        raise ValueError(
            f"{path} is not a readable convattn checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a convattn checkpoint (format {FORMAT!r} expected)")
    return state


def rng_state() -> dict[str, Any]:
    """Every random state a training step draws from (torch CPU and CUDA, Python, NumPy)."""
    state: tuple[Any, ...] = tuple(np.random.get_state())  # noqa: NPY002 (user code draws from it)
    kind, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
