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
path on other devices) follows Swin's roll-and-mask recipe. Both tables, segments and keep-mask, are
built in `convattn.layers.geometry`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.geometry import window_keep_mask, window_offsets, window_segments
from convattn.layers.kernels import choose_backend, window_kernel, window_packed_kernel
from convattn.utils.checks import check_pair, check_tensor

__all__ = ["window_attention2d", "window_attention2d_qkv"]


def _partition(x: Tensor, w_h: int, w_w: int) -> Tensor:
    """(B, Hp, Wp, heads, d) -> (B·nW, heads, w_h·w_w, d)."""
    B, Hp, Wp, h, d = x.shape
    x = x.reshape(B, Hp // w_h, w_h, Wp // w_w, w_w, h, d)  # (B, nH, w_h, nW, w_w, h, d)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, nH, nW, h, w_h, w_w, d)
    return x.reshape(B * (Hp // w_h) * (Wp // w_w), h, w_h * w_w, d)  # explicit: B may be 0


def _merge(x: Tensor, B: int, Hp: int, Wp: int, w_h: int, w_w: int) -> Tensor:
    """(B·nW, heads, w_h·w_w, d) -> (B, Hp, Wp, heads, d)."""
    h, d = x.shape[1], x.shape[-1]
    x = x.reshape(B, Hp // w_h, Wp // w_w, h, w_h, w_w, d)  # (B, nH, nW, h, w_h, w_w, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, nH, w_h, nW, w_w, h, d)
    return x.reshape(B, Hp, Wp, h, d)


def _bias_matrix(bias: Tensor, w_h: int, w_w: int) -> Tensor:
    """(heads, 2w_h-1, 2w_w-1) table -> (heads, w_h·w_w, w_h·w_w) bias of key - query offsets."""
    dr, dc = window_offsets(w_h, w_w, bias.device)  # (Q, K) each
    return bias[:, dr, dc]  # (heads, Q, K)


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | tuple[int, int],
    shift: int | tuple[int, int],
    bias: Tensor | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, shift) as pairs, raising for tensors, windows or shifts that do not fit together."""
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
    return (w_h, w_w), (s_h, s_w)


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
    return _window_attention(q, k, v, None, window, shift, bias, scale, backend)


def window_attention2d_qkv(
    qkv: Tensor,
    window: int | tuple[int, int],
    *,
    shift: int | tuple[int, int] = 0,
    bias: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """`window_attention2d` with q, k and v packed in one tensor, qkv (B, H, W, 3, heads, d) ->
    (B, H, W, heads, d): a 1×1 projection's channels-last output is such a tensor with no copy. The
    C++ kernel reads q, k and v in place and its backward writes one gradient for qkv, where separate
    q, k, v would each be copied forward and their gradients joined backward.

    Raises:
        ValueError: for a qkv that is not (B, H, W, 3, heads, d), and as `window_attention2d`.
    """
    check_tensor("qkv", qkv, 6)
    if qkv.shape[3] != 3:
        raise ValueError(f"qkv must be (B, H, W, 3, heads, d), got qkv.shape={tuple(qkv.shape)}")
    q, k, v = qkv.unbind(3)
    return _window_attention(q, k, v, qkv, window, shift, bias, scale, backend)


def _window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qkv: Tensor | None,
    window: int | tuple[int, int],
    shift: int | tuple[int, int],
    bias: Tensor | None,
    scale: float | None,
    backend: str,
) -> Tensor:
    """Check, choose the path and run it; the kernel reads `qkv` in place when q, k, v are its views."""
    win, shifts = _check_inputs(q, k, v, window, shift, bias)
    path = choose_backend(backend, q, "window", fused="sdpa")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if path == "kernel":
        # q·k and p·v for every (query, key) pair of a window: Σ_windows n² = Σ_rows l² · Σ_cols l².
        B, H, W, heads = q.shape[:4]
        pairs = int(window_segments(H, win[0], shifts[0])[:, 1].square().sum()) * int(
            window_segments(W, win[1], shifts[1])[:, 1].square().sum()
        )
        record(B * heads * pairs * (q.shape[-1] + v.shape[-1]))
        if qkv is not None:
            return window_packed_kernel(qkv, bias, win, shifts, scale)
        return window_kernel(q, k, v, bias, win, shifts, scale)
    return _window_attention_torch(q, k, v, bias, win, shifts, scale, fused=path == "sdpa")


def _window_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    window: tuple[int, int],
    shift: tuple[int, int],
    scale: float,
    *,
    fused: bool,
) -> Tensor:
    """Swin's roll-pad-partition recipe with a keep-mask; `fused` runs it through SDPA (accelerators)."""
    (w_h, w_w), (s_h, s_w) = window, shift
    B, H, W, heads = q.shape[:4]
    fused = fused and B > 0  # SDPA drops the graph of an empty batch: the matmuls keep it
    Hp, Wp = -(-H // w_h) * w_h, -(-W // w_w) * w_w

    def prepare(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H))  # (B, Hp, Wp, heads, ·)
        if s_h or s_w:
            x = torch.roll(x, shifts=(-s_h, -s_w), dims=(1, 2))
        return _partition(x, w_h, w_w)  # (B·nW, heads, w², ·)

    keep = window_keep_mask(H, W, window, shift).to(q.device)  # (nW, Q, K)
    nW, Q = keep.shape[0], w_h * w_w
    # Batched matmuls over (image, window, head): the additive mask broadcasts over images instead of
    # being copied per image, and the fused kernel's mask handling is skipped (it falls back to the same
    # matmuls here, with copies).
    d, dv = q.shape[-1], v.shape[-1]  # sizes spelt out: with B = 0 a -1 would be ambiguous
    qw = prepare(q).reshape(B, nW, heads, Q, d)  # (B, nW, h, Q, d)
    kw = prepare(k).reshape(B, nW, heads, Q, d)
    vw = prepare(v).reshape(B, nW, heads, Q, dv)
    if fused:
        # The fused path for accelerators: one additive mask (bias and -inf) per window and head.
        add = torch.zeros(nW, heads, Q, Q, dtype=q.dtype, device=q.device)  # (nW, h, Q, K)
        if bias is not None:
            add = add + _bias_matrix(bias, w_h, w_w).to(q.dtype)
        add = add.masked_fill(~keep[:, None], float("-inf"))
        out = F.scaled_dot_product_attention(
            qw.reshape(B * nW, heads, Q, d),
            kw.reshape(B * nW, heads, Q, d),
            vw.reshape(B * nW, heads, Q, dv),
            attn_mask=add.repeat(B, 1, 1, 1),  # (B·nW, h, Q, K)
            scale=scale,
        )  # (B·nW, h, Q, d_v)
    else:
        scores = (qw @ kw.transpose(-1, -2)) * scale  # (B, nW, h, Q, K)
        if bias is not None:
            scores = scores + _bias_matrix(bias, w_h, w_w).to(q.dtype)  # (h, Q, K)
        if not bool(keep.all()):
            scores = scores.masked_fill(~keep[:, None], float("-inf"))  # (nW, 1, Q, K)
        out = (scores.softmax(dim=-1) @ vw).reshape(B * nW, heads, Q, dv)  # (B·nW, h, Q, d_v)
    return _unpartition(out, B, H, W, Hp, Wp, window, shift)


def _unpartition(
    out: Tensor, B: int, H: int, W: int, Hp: int, Wp: int, window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """(B·nW, heads, Q, d_v) per window -> (B, H, W, heads, d_v): merge, roll back, crop the padding."""
    out = _merge(out, B, Hp, Wp, *window)  # (B, Hp, Wp, heads, d_v)
    if shift[0] or shift[1]:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :H, :W]
