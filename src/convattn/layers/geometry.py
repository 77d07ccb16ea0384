"""Index tables of local windows: which keys each query sees, built once per size and cached.

Neighbourhood windows (`neighborhood.py`, and the per-pixel convolutions of `dynamic.py`) are products
of one window per axis. On an axis of length n with kernel k, dilation δ and r = k // 2, query i
uses the keys below; `border` decides what happens near the edges:
    'mask'   i + (t - r)·δ, t = 0..k-1; keys outside the image are left out of the softmax (default);
    'zeros'  the same keys; keys outside the image are zero vectors that still take part (score from
             rel/bias only, value 0), as the popular SASA port's zero padding does;
    'shift'  the window slides to stay inside the image, so every query sees k real keys (NATTEN).
             Pixels split into δ interleaved sub-grids; on a sub-grid of m pixels with index ii the
             window starts at clamp(ii - r, 0, m - k). If m < k the window holds all m pixels.
Relative tables are indexed by the key's offset from the query in (dilated) steps, from -(k-1) to
k-1, so tables of (2k_h-1)×(2k_w-1) entries serve every border mode.

Swin windows (`window.py`) tile the map: rolled by the shift, padded and masked, every window is a
product of one segment per axis in image coordinates, pixel i lying in segment floor((i - s) / w).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import torch
from torch import Tensor

__all__ = [
    "BORDERS",
    "AxisWindows",
    "axis_membership",
    "axis_windows",
    "grid_windows",
    "inverse_windows",
    "window_keep_mask",
    "window_offsets",
    "window_segments",
]

BORDERS = ("mask", "zeros", "shift")


@dataclass(frozen=True)
class AxisWindows:
    """Windows along one axis of length n with k slots.

    Attributes:
        index: (n, k) key position of each query's slot (clamped into range where invalid).
        valid: (n, k) whether that key lies inside the image.
        offset: (n, k) key minus query in dilated steps, plus k - 1: the rel/bias table index.
    """

    index: Tensor
    valid: Tensor
    offset: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """(index, valid, offset): the form the C++ kernel takes."""
        return self.index, self.valid, self.offset


@lru_cache(maxsize=256)
def axis_windows(n: int, k: int, dilation: int, border: str) -> AxisWindows:
    """The key positions of every query on an axis of length n (see the module docstring)."""
    r = k // 2
    i = torch.arange(n)[:, None]  # (n, 1)
    t = torch.arange(k)[None, :]  # (1, k)
    if border == "shift":
        group, ii = i % dilation, i // dilation
        m = (n - group + dilation - 1) // dilation  # pixels in this query's sub-grid
        start = torch.minimum(ii - r, m - k).clamp(min=0)
        steps = start + t  # (n, k) position within the sub-grid
        valid = steps < m
        key = steps * dilation + group
        offset = steps - ii + (k - 1)
    else:
        key = i + (t - r) * dilation
        valid = (key >= 0) & (key < n)
        offset = (t - r + (k - 1)).expand(n, k)
    return AxisWindows(key.clamp(0, n - 1).contiguous(), valid.contiguous(), offset.contiguous())


def grid_windows(
    height: int, width: int, kernel_size: tuple[int, int], dilation: tuple[int, int], border: str
) -> tuple[AxisWindows, AxisWindows]:
    """The row and column windows of an height×width map (each cached)."""
    return (
        axis_windows(height, kernel_size[0], dilation[0], border),
        axis_windows(width, kernel_size[1], dilation[1], border),
    )


@lru_cache(maxsize=256)
def inverse_windows(n: int, k: int, dilation: int, border: str) -> Tensor:
    """(n, m, 2) for each key position: the (query, slot) pairs whose window holds it; -1 pads."""
    w = axis_windows(n, k, dilation, border)
    pairs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, t in w.valid.nonzero().tolist():
        pairs[int(w.index[i, t])].append((i, t))
    m = max(1, *(len(p) for p in pairs))
    inv = torch.full((n, m, 2), -1, dtype=torch.long)
    for key, p in enumerate(pairs):
        if p:
            inv[key, : len(p)] = torch.tensor(p)
    return inv


def axis_membership(w: AxisWindows, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(n, n) per axis: key in the query's window; its slot; its rel/bias offset index (0 outside)."""
    inside = torch.zeros(n, n, dtype=torch.bool)
    slot = torch.zeros(n, n, dtype=torch.long)
    offset = torch.zeros(n, n, dtype=torch.long)
    for i, t in w.valid.nonzero().tolist():
        key = int(w.index[i, t])
        inside[i, key], slot[i, key], offset[i, key] = True, t, w.offset[i, t]
    return inside.to(device), slot.to(device), offset.to(device)


@lru_cache(maxsize=256)
def window_segments(n: int, window: int, shift: int) -> Tensor:
    """(m, 2) [start, length] of the windows on an axis of n pixels: boundaries at shift + j·window."""
    cuts = sorted({0, n} | set(range(shift if shift else window, n, window)))
    return torch.tensor([[a, b - a] for a, b in pairwise(cuts)], dtype=torch.long)


def _regions(n: int, w: int, shift: int) -> Tensor:
    """Region label of each padded position on one axis after rolling by -shift (Swin's mask)."""
    labels = torch.zeros(n, dtype=torch.long)
    if shift:
        labels[n - w : n - shift] = 1
        labels[n - shift :] = 2
    return labels


@lru_cache(maxsize=64)
def window_keep_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """(nW, w_h·w_w, w_h·w_w) True where a query may attend a key, in the rolled, padded frame.

    Keys are kept when they are real pixels (not padding) and, for shifted windows, come from the same
    region of the image as the query.
    """
    w_h, w_w = window
    Hp, Wp = -(-height // w_h) * w_h, -(-width // w_w) * w_w
    real = torch.zeros(Hp, Wp, dtype=torch.bool)
    real[:height, :width] = True
    real = torch.roll(real, shifts=(-shift[0], -shift[1]), dims=(0, 1))  # (Hp, Wp)
    region = _regions(Hp, w_h, shift[0])[:, None] * 3 + _regions(Wp, w_w, shift[1])[None, :]  # (Hp, Wp)

    def windows(x: Tensor) -> Tensor:  # (Hp, Wp) -> (nW, w_h·w_w)
        x = x.reshape(Hp // w_h, w_h, Wp // w_w, w_w).permute(0, 2, 1, 3)  # (nH, nW, w_h, w_w)
        return x.reshape(-1, w_h * w_w)

    reg, ok = windows(region), windows(real)
    keep = (reg[:, :, None] == reg[:, None, :]) & ok[:, None, :]  # (nW, Q, K)
    # A padded query may find no real key in its region: let it see itself (its output is cropped),
    # so no softmax row is empty and no NaN reaches the backward.
    keep |= torch.eye(w_h * w_w, dtype=torch.bool)
    return keep


def window_offsets(w_h: int, w_w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(Q, Q) row and column offsets, key - query + (w - 1), of the pixels of one w_h×w_w window."""
    r = torch.arange(w_h, device=device).repeat_interleave(w_w)  # (Q,) row in window
    c = torch.arange(w_w, device=device).repeat(w_h)  # (Q,) column
    return r[None, :] - r[:, None] + (w_h - 1), c[None, :] - c[:, None] + (w_w - 1)  # (Q, K) each
