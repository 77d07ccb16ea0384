"""Input checks shared by the public operators: each raises ValueError/TypeError naming the values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

_Size = TypeVar("_Size", int, tuple[int, int])


def check_tensor(name: str, x: object, ndim: int | Sequence[int] | None = None) -> Tensor:
    """Raise TypeError unless `x` is a floating tensor, ValueError unless it has one of `ndim` dims."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {name}.dtype={x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dims, got {name}.shape={tuple(x.shape)}")
    return x


def check_like(name: str, t: Tensor, like_name: str, like: Tensor) -> Tensor:
    """Raise TypeError unless tensor `t` has the dtype and device of `like`."""
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(
            f"{name} must match {like_name}'s dtype and device ({like.dtype}, {like.device}), "
            f"got {t.dtype}, {t.device}"
        )
    return t


def check_positive_int(name: str, value: object) -> int:
    """Raise unless `value` is an int >= 1 (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {name}={value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {name}={value}")
    return value


def check_pair(name: str, value: object) -> tuple[int, int]:
    """An int >= 1 or a pair of them, as a pair (kernel sizes, dilations, windows)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return check_positive_int(name, value), value
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {name}={value!r}")
    return check_positive_int(name, value[0]), check_positive_int(name, value[1])


def check_probability(name: str, value: object) -> float:
    """Raise unless `value` is a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {name}={value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {name}={value}")
    return float(value)


def check_heads_divide(dim: int, num_heads: int) -> int:
    """Return the per-head width, raising unless `num_heads` divides `dim`."""
    check_positive_int("num_heads", num_heads)
    check_positive_int("dim", dim)
    if dim % num_heads:
        raise ValueError(f"num_heads must divide the width, got dim={dim}, num_heads={num_heads}")
    return dim // num_heads


def check_valid_lens(valid_lens: object, batch: int, queries: int, keys: int) -> Tensor:
    """Validate per-sequence (B,) or per-query (B, Q) valid key counts, each in [0, keys]."""
    if not isinstance(valid_lens, Tensor):
        raise TypeError(f"valid_lens must be a torch.Tensor, got {type(valid_lens).__name__}")
    if valid_lens.is_floating_point() or valid_lens.is_complex() or valid_lens.dtype == torch.bool:
        raise TypeError(f"valid_lens must hold integers, got valid_lens.dtype={valid_lens.dtype}")
    shape = tuple(valid_lens.shape)
    if shape not in ((batch,), (batch, queries)):
        raise ValueError(
            f"valid_lens must have shape (B,)=({batch},) or (B, Q)=({batch}, {queries}), "
            f"got valid_lens.shape={shape}"
        )
    if valid_lens.numel():
        lo, hi = int(valid_lens.min()), int(valid_lens.max())
        if lo < 0 or hi > keys:
            raise ValueError(
                f"valid_lens must lie in [0, {keys}] (the number of keys), got min={lo}, max={hi}"
            )
    return valid_lens


def check_odd(name: str, value: _Size) -> _Size:
    """Return `value` (an int or a pair of ints, each >= 1), raising unless every side is odd.

    Odd windows are centred on their query: r = k // 2 keys on either side.
    """
    sides = check_pair(name, value)
    if sides[0] % 2 == 0 or sides[1] % 2 == 0:
        raise ValueError(f"{name} must be odd (the window is centred on its query), got {name}={value!r}")
    return value


def check_multiple_of(name: str, size: object, divisor_name: str, divisor: int) -> tuple[int, int]:
    """`size` (a side or an (H, W) pair) as (H, W), raising unless both sides are multiples of `divisor`.

    For image sides against a patch, a window or a space-to-depth block.
    """
    check_positive_int(divisor_name, divisor)
    height, width = check_pair(name, size)
    if height % divisor or width % divisor:
        raise ValueError(
            f"{name} must be a multiple of {divisor_name}, got {name}={size!r}, {divisor_name}={divisor}"
        )
    return height, width


def check_positive(name: str, value: object) -> float:
    """Raise unless `value` is a real number > 0 (ratios, scales)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {name}={value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {name}={value}")
    return float(value)


def check_device(device: object) -> str:
    """Raise unless torch can run on `device` here: "cpu", or "cuda" on a machine with a CUDA device."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got device={device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}, but torch {torch.__version__} finds no CUDA device on this machine; "
            "use device='cpu'"
        )
    return device
