"""Sinusoidal positional encodings in 1-D (sequences) and 2-D (images).

Vaswani et al. 2017 §3.5; D2L 11.6.3: P[pos, 2j] = sin(pos / base^(2j/d)), P[pos, 2j+1] = cos(same).
The 2-D form gives the first half of the channels to the row index and the second half to the column
index (each half a 1-D encoding), so it is defined for any H, W without a fixed grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from convattn.utils.checks import check_positive_int, check_probability, check_tensor

__all__ = [
    "PositionalEncoding",
    "PositionalEncoding2d",
    "normalized_sine_2d",
    "sine_points",
    "sinusoidal_1d",
    "sinusoidal_2d",
]


def _check_even(name: str, dim: int, multiple: int) -> None:
    check_positive_int(name, dim)
    if dim % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple} for sinusoidal encoding, got {name}={dim}")


def sinusoidal_1d(
    num_positions: int,
    dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (num_positions, dim) table P with P[p, 2j] = sin(p·ω_j), P[p, 2j+1] = cos(p·ω_j).

    ω_j = base^(-2j/dim). Computed in float64 and cast, so long tables stay accurate in float32.
    """
    check_positive_int("num_positions", num_positions)
    _check_even("dim", dim, 2)
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]  # (T, 1)
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)  # (d/2,)
    angle = pos * freq  # (T, d/2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1)  # (T, d/2, 2): sin, cos interleaved
    return table.reshape(num_positions, dim).to(dtype)  # (T, d)


def sinusoidal_2d(
    height: int,
    width: int,
    dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (dim, height, width) image encoding: channels [0, dim/2) encode the row, the rest the column."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    _check_even("dim", dim, 4)
    rows = sinusoidal_1d(height, dim // 2, base=base, dtype=dtype, device=device)  # (H, d/2)
    cols = sinusoidal_1d(width, dim // 2, base=base, dtype=dtype, device=device)  # (W, d/2)
    rows = rows.T[:, :, None].expand(dim // 2, height, width)  # (d/2, H, W)
    cols = cols.T[:, None, :].expand(dim // 2, height, width)  # (d/2, H, W)
    return torch.cat([rows, cols], dim=0)  # (d, H, W)


class PositionalEncoding(nn.Module):
    """Add the 1-D sinusoidal encoding to (B, T, dim) inputs, then dropout (D2L 11.6.3).

    The table is computed on the fly for the length at hand, so no `max_len` limits the input.
    `offset` shifts the positions (incremental decoding feeds step t alone at position t).
    """

    def __init__(self, dim: int, dropout: float = 0.0, *, base: float = 10000.0) -> None:
        super().__init__()
        _check_even("dim", dim, 2)
        self.dim, self.base = dim, base
        self.dropout = nn.Dropout(check_probability("dropout", dropout))

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_tensor("x", x, 3)
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected (B, T, {self.dim}) input, got x.shape={tuple(x.shape)}")
        T = x.shape[1]
        table = sinusoidal_1d(offset + T, self.dim, base=self.base, dtype=x.dtype, device=x.device)
        return self.dropout(x + table[offset:])  # (B, T, d) + (T, d)


def normalized_sine_2d(
    height: int,
    width: int,
    dim: int,
    *,
    temperature: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """DETR's (dim, height, width) sine encoding: positions normalised to (0, 2π] before the frequencies.

    Row r (1-based) sits at angle 2π·r/H, column c at 2π·c/W, so the encoding of a map spans the same
    range whatever its size; channel 2j of each half is sin(a / T^(2j/(dim/2))), channel 2j+1 its cos,
    rows in the first half, columns in the second (Carion et al., their PositionEmbeddingSine).
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    _check_even("dim", dim, 4)
    half = dim // 2
    freq = temperature ** (-torch.arange(0, half, 2, dtype=torch.float64, device=device) / half)  # (d/4,)

    def axis(n: int) -> Tensor:
        angle = torch.arange(1, n + 1, dtype=torch.float64, device=device) / n * 2 * math.pi  # (n,)
        angle = angle[:, None] * freq  # (n, d/4)
        return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(n, half)  # (n, d/2), interleaved

    rows = axis(height).T[:, :, None].expand(half, height, width)  # (d/2, H, W)
    cols = axis(width).T[:, None, :].expand(half, height, width)  # (d/2, H, W)
    return torch.cat([rows, cols], dim=0).to(dtype)  # (d, H, W)


def sine_points(points: Tensor, dim: int, *, temperature: float = 10000.0) -> Tensor:
    """`normalized_sine_2d` of continuous points: (N, 2) as (x, y) in [0, 1] -> (N, dim).

    A point at y = r / H, x = c / W gets the encoding of row r, column c of an H×W map (rows in the
    first half, columns in the second), so a query placed at a point and the pixel there share one.
    """
    check_tensor("points", points, 2)
    if points.shape[-1] != 2:
        raise ValueError(f"points must be (N, 2) as (x, y), got points.shape={tuple(points.shape)}")
    _check_even("dim", dim, 4)
    half = dim // 2
    freq = temperature ** (-torch.arange(0, half, 2, dtype=points.dtype, device=points.device) / half)
    angle = points.flip(-1)[..., None] * (2 * math.pi) * freq  # (N, 2 = (y, x), d/4)
    enc = torch.stack([angle.sin(), angle.cos()], dim=-1)  # (N, 2, d/4, 2), sin and cos interleaved
    return enc.reshape(points.shape[0], dim)  # (N, d): y's half, then x's


class PositionalEncoding2d(nn.Module):
    """Add the 2-D sinusoidal encoding to (B, C, H, W) feature maps of any size."""

    def __init__(self, dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        _check_even("dim", dim, 4)
        self.dim, self.base = dim, base

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        if x.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, H, W) input, got x.shape={tuple(x.shape)}")
        H, W = x.shape[-2:]
        return x + sinusoidal_2d(H, W, self.dim, base=self.base, dtype=x.dtype, device=x.device)
