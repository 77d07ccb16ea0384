"""Swin window attention (Liu et al. 2021), for any H and W.

Pixels are grouped into non-overlapping w_h×w_w windows; each pixel attends to the pixels of its own
window, with a learned relative position bias per head indexed by the (2w_h-1)×(2w_w-1) offsets.
Shifted windows (the alternate Swin blocks) roll the map by -shift first, so windows straddle the
previous ones, and a mask keeps pixels that were not neighbours in the image from attending to each
other; the output is rolled back.

Unlike the reference implementation, the map need not be divisible by the window: it is padded to a
multiple, and padded pixels are masked out as keys (so they never dilute the softmax) and cropped
from the output. The bias table is indexed by offset, so it is the same at every resolution.

Rolled, padded and masked, every window is a product of one segment per axis in image coordinates:
pixel i lies in segment floor((i - s) / w), cut by the image border. The C++ kernel (CPU) attends
within those segments directly, with no padding, roll or mask; the PyTorch path (the oracle, and the
path on other devices) follows Swin's roll-and-mask recipe.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.kernels import load_kernel
from convattn.utils.checks import check_pair, check_tensor

__all__ = ["window_attention2d", "window_keep_mask", "window_segments"]

BACKENDS = ("auto", "kernel", "torch", "sdpa")


@lru_cache(maxsize=256)
def window_segments(n: int, window: int, shift: int) -> Tensor:
    """(m, 2) [start, length] of the windows on an axis of n pixels: boundaries at shift + j·window."""
    cuts = sorted({0, n} | set(range(shift if shift else window, n, window)))
    return torch.tensor([[a, b - a] for a, b in pairwise(cuts)], dtype=torch.long)


class _KernelWindow(torch.autograd.Function):
    """The C++ kernel with its hand-written backward (probabilities saved per window)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor,
        window: tuple[int, int],
        shift: tuple[int, int],
        scale: float,
    ) -> Tensor:
        out, probs, segs = _kernel_forward(q, k, v, bias, window, shift, scale, save=True)
        ctx.save_for_backward(q, k, v, bias, probs)
        ctx.geometry = (segs, window, scale)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, bias, probs = ctx.saved_tensors
        segs, window, scale = ctx.geometry
        want_bias = bool(bias.numel()) and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _kernel().backward(
            dout.contiguous(), q, k, v, bias, probs, *segs, *window, scale, want_bias
        )
        return dq, dk, dv, dbias if want_bias else None, None, None, None


def _kernel_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    window: tuple[int, int],
    shift: tuple[int, int],
    scale: float,
    *,
    save: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """(output, probabilities, segments); with save=False the probabilities are not kept (inference)."""
    H, W = q.shape[1:3]
    segs = (window_segments(H, window[0], shift[0]), window_segments(W, window[1], shift[1]))
    out, probs = _kernel().forward(q, k, v, bias, *segs, *window, scale, save)
    return out, probs, segs


def _kernel() -> Any:
    ext = load_kernel("window")
    if ext is None:
        raise RuntimeError("the window-attention C++ kernel is not available")
    return ext


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


def _partition(x: Tensor, w_h: int, w_w: int) -> Tensor:
    """(B, Hp, Wp, heads, d) -> (B·nW, heads, w_h·w_w, d)."""
    B, Hp, Wp, h, d = x.shape
    x = x.reshape(B, Hp // w_h, w_h, Wp // w_w, w_w, h, d)  # (B, nH, w_h, nW, w_w, h, d)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, nH, nW, h, w_h, w_w, d)
    return x.reshape(-1, h, w_h * w_w, d)


def _merge(x: Tensor, B: int, Hp: int, Wp: int, w_h: int, w_w: int) -> Tensor:
    """(B·nW, heads, w_h·w_w, d) -> (B, Hp, Wp, heads, d)."""
    h, d = x.shape[1], x.shape[-1]
    x = x.reshape(B, Hp // w_h, Wp // w_w, h, w_h, w_w, d)  # (B, nH, nW, h, w_h, w_w, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, nH, w_h, nW, w_w, h, d)
    return x.reshape(B, Hp, Wp, h, d)


def _bias_matrix(bias: Tensor, w_h: int, w_w: int) -> Tensor:
    """(heads, 2w_h-1, 2w_w-1) table -> (heads, w_h·w_w, w_h·w_w) bias of key - query offsets."""
    r = torch.arange(w_h, device=bias.device).repeat_interleave(w_w)  # (Q,) row in window
    c = torch.arange(w_w, device=bias.device).repeat(w_h)  # (Q,) column
    dr = r[None, :] - r[:, None] + (w_h - 1)  # (Q, K)
    dc = c[None, :] - c[:, None] + (w_w - 1)
    return bias[:, dr, dc]  # (heads, Q, K)


def window_attention2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | tuple[int, int],
    *,
    shift: int | tuple[int, int] = 0,
    bias: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Window attention on heads-last tensors (B, H, W, heads, d) -> (B, H, W, heads, d_v).

    Args:
        q, k: (B, H, W, heads, d). v: (B, H, W, heads, d_v).
        window: w or (w_h, w_w).
        shift: s or (s_h, s_w), 0 <= s < w: shifted windows (Swin's odd blocks use w // 2).
        bias: optional (heads, 2w_h-1, 2w_w-1) relative position bias table.
        scale: multiplies q·k (default d^-0.5).
        backend: 'auto' (CPU: the C++ kernel when it builds, else PyTorch; CUDA: 'sdpa'), 'kernel',
            'torch' (batched matmuls, the oracle) or 'sdpa' (`scaled_dot_product_attention` with an
            additive mask: the fused path on accelerators).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 5)
    if q.shape != k.shape or q.shape[:4] != v.shape[:4]:
        raise ValueError(
            f"q, k must be (B, H, W, heads, d) and v (B, H, W, heads, d_v), got {tuple(q.shape)=}, "
            f"{tuple(k.shape)=}, {tuple(v.shape)=}"
        )
    w_h, w_w = check_pair("window", window)
    s_h, s_w = (shift, shift) if isinstance(shift, int) else shift
    if not (0 <= s_h < w_h and 0 <= s_w < w_w):
        raise ValueError(
            f"shift must satisfy 0 <= shift < window, got shift={(s_h, s_w)}, window={(w_h, w_w)}"
        )
    heads = q.shape[3]
    if bias is not None and tuple(bias.shape) != (heads, 2 * w_h - 1, 2 * w_w - 1):
        raise ValueError(
            f"bias must be (heads, 2w_h-1, 2w_w-1)={(heads, 2 * w_h - 1, 2 * w_w - 1)}, "
            f"got bias.shape={tuple(bias.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or (bias is not None and bias.dtype != q.dtype):
        raise TypeError(f"q, k, v and bias must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got backend={backend!r}")
    B, H, W = q.shape[:3]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend in ("auto", "kernel") and q.device.type == "cpu" and load_kernel("window") is not None:
        # q·k and p·v for every (query, key) pair of a window: Σ_windows n² = Σ_rows l² · Σ_cols l².
        pairs = int(window_segments(H, w_h, s_h)[:, 1].square().sum()) * int(
            window_segments(W, w_w, s_w)[:, 1].square().sum()
        )
        record(B * heads * pairs * (q.shape[-1] + v.shape[-1]))
        args = (
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            q.new_empty(0) if bias is None else bias.contiguous(),
            (w_h, w_w),
            (s_h, s_w),
            scale,
        )
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, bias)):
            return cast(Tensor, _KernelWindow.apply(*args))
        return _kernel_forward(*args, save=False)[0]  # inference: no probabilities kept
    if backend == "kernel":
        raise RuntimeError("backend='kernel' needs a CPU tensor and a built C++ kernel")
    Hp, Wp = -(-H // w_h) * w_h, -(-W // w_w) * w_w

    def prepare(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H))  # (B, Hp, Wp, heads, ·)
        if s_h or s_w:
            x = torch.roll(x, shifts=(-s_h, -s_w), dims=(1, 2))
        return _partition(x, w_h, w_w)  # (B·nW, heads, w², ·)

    keep = window_keep_mask(H, W, (w_h, w_w), (s_h, s_w)).to(q.device)  # (nW, Q, K)
    nW, Q = keep.shape[0], w_h * w_w
    # Batched matmuls over (image, window, head): the additive mask broadcasts over images instead of
    # being copied per image, and the fused kernel's mask handling is skipped (it falls back to the same
    # matmuls here, with copies).
    qw = prepare(q).reshape(B, nW, heads, Q, -1)  # (B, nW, h, Q, d)
    kw = prepare(k).reshape(B, nW, heads, Q, -1)
    vw = prepare(v).reshape(B, nW, heads, Q, -1)
    if backend == "sdpa" or (backend == "auto" and q.device.type == "cuda"):
        # The fused path for accelerators: one additive mask (bias and -inf) per window and head.
        add = torch.zeros(nW, heads, Q, Q, dtype=q.dtype, device=q.device)  # (nW, h, Q, K)
        if bias is not None:
            add = add + _bias_matrix(bias, w_h, w_w).to(q.dtype)
        add = add.masked_fill(~keep[:, None], float("-inf"))
        fused = F.scaled_dot_product_attention(
            qw.reshape(B * nW, heads, Q, -1),
            kw.reshape(B * nW, heads, Q, -1),
            vw.reshape(B * nW, heads, Q, -1),
            attn_mask=add.repeat(B, 1, 1, 1),  # (B·nW, h, Q, K)
            scale=scale,
        )  # (B·nW, h, Q, d_v)
        return _unpartition(fused, B, H, W, Hp, Wp, (w_h, w_w), (s_h, s_w))
    scores = (qw @ kw.transpose(-1, -2)) * scale  # (B, nW, h, Q, K)
    if bias is not None:
        scores = scores + _bias_matrix(bias, w_h, w_w).to(q.dtype)  # (h, Q, K)
    if not bool(keep.all()):
        scores = scores.masked_fill(~keep[:, None], float("-inf"))  # (nW, 1, Q, K)
    out = (scores.softmax(dim=-1) @ vw).reshape(B * nW, heads, Q, -1)  # (B·nW, h, Q, d_v)
    return _unpartition(out, B, H, W, Hp, Wp, (w_h, w_w), (s_h, s_w))


def _unpartition(
    out: Tensor, B: int, H: int, W: int, Hp: int, Wp: int, window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """(B·nW, heads, Q, d_v) per window -> (B, H, W, heads, d_v): merge, roll back, crop the padding."""
    out = _merge(out, B, Hp, Wp, *window)  # (B, Hp, Wp, heads, d_v)
    if shift[0] or shift[1]:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :H, :W]
