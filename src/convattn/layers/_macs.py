"""A tally of multiply-adds for operators that torch's FlopCounterMode cannot see.

FlopCounterMode counts matmuls and convolutions; neighbourhood attention (a C++ kernel or element-wise
PyTorch) and per-pixel convolutions are invisible to it, so these operators report their own
multiply-adds here while a count is open (see `convattn.analysis.flops.count_macs`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["record", "tally"]

_local = threading.local()


def record(macs: int) -> None:
    """Add `macs` multiply-adds to every open tally of this thread."""
    for counter in getattr(_local, "stack", ()):
        counter[0] += int(macs)


@contextmanager
def tally() -> Iterator[list[int]]:
    """Open a tally: yields a one-element list holding the multiply-adds recorded inside."""
    counter = [0]
    _local.stack = [*getattr(_local, "stack", ()), counter]
    try:
        yield counter
    finally:
        _local.stack = [c for c in _local.stack if c is not counter]
