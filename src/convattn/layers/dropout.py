"""Dropout with a counter-based mask: no per-element generator draws, no mask saved for the backward.

torch's CPU dropout draws its mask with `bernoulli_`, one double-precision draw per element from a
sequential generator, then divides the mask and multiplies: on the digits attention net's (64, 8, 8, 64)
activations that took 1.6-1.8 ms a call, forward and backward, a tenth of a training step. Here each
call draws one 63-bit seed from torch's default generator (so `torch.manual_seed` makes calls
repeatable), and element i of x (in row-major order) keeps its value where

    draw(i) = mix(mix(lo32(i) ^ s0) ^ hi32(i) ^ s1) >= round(p · 2³²)

with (s0, s1) the seed's two 32-bit words and mix a 32-bit integer hash (xor-shift-multiply, the
"lowbias32" constants). An element survives with probability 1 - p to within 2⁻³², and the kept
elements are scaled by 1 / (1 - p), as `F.dropout` does (its masks differ, its distribution does not).
The mask is a function of the seed and the index, so the backward recomputes it: the C++ kernel
(`csrc/dropout.cpp`) runs one pass forward and one backward, in any number of threads with the same bits.
The PyTorch path computes the same draws with exact int64 tensor arithmetic (slower: it is the path for
other devices and dtypes), and `convattn.layers.reference.dropout_draw` with Python integers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convattn.layers.kernels import choose_backend, dropout_kernel
from convattn.utils.checks import check_probability

__all__ = ["Dropout", "dropout", "dropout_draws"]

_WORD = 0xFFFF_FFFF
_MIX = (0x7FEB352D, 0x846CA68B)  # the hash's two multipliers (lowbias32)


def _mul32(a: Tensor, c: int) -> Tensor:
    """(a * c) mod 2³² for a in [0, 2³²), in int64 without overflow: c split into 16-bit halves."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & _WORD


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _MIX[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _MIX[1])
    return x ^ (x >> 16)


def dropout_draws(numel: int, seed: int, device: torch.device | str = "cpu", start: int = 0) -> Tensor:
    """The 32-bit draws of elements start .. start+numel-1 for `seed` (int64, values in [0, 2³²))."""
    index = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    s0, s1 = seed & _WORD, (seed >> 32) & _WORD
    return _mix(_mix((index & _WORD) ^ s0) ^ (index >> 32) ^ s1)


def _threshold(p: float) -> int:
    return min(round(p * 2**32), _WORD)  # draws at or above it keep their element: P = 1 - p to 2⁻³²


def dropout(x: Tensor, p: float, training: bool = True, backend: str = "auto") -> Tensor:
    """Zero each element of `x` with probability `p` and scale the rest by 1 / (1 - p) (in training).

    `backend` is 'auto' (the C++ kernel for float32/float64 CPU tensors where it builds), 'kernel' or
    'torch'; both compute the same bits.

    Raises:
        ValueError: for p outside [0, 1) or an unknown backend.
        TypeError: for an x that is not a floating-point tensor.
    """
    check_probability("p", p)
    if not x.is_floating_point():
        raise TypeError(f"dropout needs a floating-point tensor, got x.dtype={x.dtype}")
    if not training or p == 0:
        return x
    path = choose_backend(backend, x, "dropout")
    seed = int(torch.empty((), dtype=torch.int64).random_())  # [0, 2⁶³) from the default generator
    threshold, scale = _threshold(p), 1.0 / (1.0 - p)
    if path == "kernel":
        return dropout_kernel(x, seed, threshold, scale)
    keep = dropout_draws(x.numel(), seed, x.device).view(x.shape) >= threshold
    return x * keep.to(x.dtype).mul_(scale)  # autograd keeps the scaled mask for backward


class Dropout(nn.Module):
    """`dropout` as a module: active in training mode only."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_probability("p", p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
