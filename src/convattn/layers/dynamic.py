"""Dynamic depth-wise convolutions (Han et al. 2022, DWNet): kernels predicted from the input.

Homogeneous: one k×k kernel per image and channel, from global average pooling.
Inhomogeneous: one k×k kernel per pixel and channel group, from the pixel's own feature (the "centre
feature"), shared by the channels of a group; as in local attention, the weights change with position.
Both are pure functions of (input, kernels); the modules that predict the kernels are in `mixers.py`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.kernels import load_kernel
from convattn.layers.neighborhood import grid_windows, inverse_windows
from convattn.utils.checks import check_tensor

__all__ = ["image_dwconv2d", "pixel_dwconv2d"]


def _odd(kh: int, kw: int) -> None:
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel size must be odd (centred windows), got kernel_size={(kh, kw)}")


class _KernelImageDWConv(torch.autograd.Function):
    """The C++ per-image depth-wise conv (channels-last slabs) with its hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernels: Tensor, dilation: int) -> Tensor:
        xl = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): free for a channels_last x
        ctx.save_for_backward(xl, kernels)
        ctx.dilation = dilation
        out = load_kernel("dwconv").forward(xl, kernels, dilation)  # type: ignore[union-attr]
        return cast(Tensor, out).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        xl, kernels = ctx.saved_tensors
        dl = dout.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        dx, dk = load_kernel("dwconv").backward(dl, xl, kernels, ctx.dilation)  # type: ignore[union-attr]
        return dx.permute(0, 3, 1, 2), dk, None


def image_dwconv2d(
    x: Tensor, kernels: Tensor, bias: Tensor | None = None, *, dilation: int = 1, backend: str = "auto"
) -> Tensor:
    """Depth-wise conv with a kernel per image: x (B, C, H, W), kernels (B, C, k_h, k_w) -> (B, C, H, W).

    'Same' zero padding. backend: 'auto' (CPU: the C++ kernel when it builds), 'kernel' or 'torch'. The
    kernel works on channels-last slabs (a channels_last x is read without a copy); the PyTorch path runs
    one channels_last depth-wise conv per image, so nothing is transposed there either.
    """
    check_tensor("x", x, 4)
    check_tensor("kernels", kernels, 4)
    B, C = x.shape[:2]
    if kernels.shape[:2] != (B, C):
        raise ValueError(f"kernels must be (B, C, k_h, k_w) with (B, C)={(B, C)}, got {tuple(kernels.shape)}")
    if kernels.dtype != x.dtype:
        raise TypeError(f"x and kernels must share a dtype, got {x.dtype} and {kernels.dtype}")
    kh, kw = kernels.shape[-2:]
    _odd(kh, kw)
    if backend not in ("auto", "kernel", "torch"):
        raise ValueError(f"backend must be 'auto', 'kernel' or 'torch', got backend={backend!r}")
    if backend != "torch" and x.device.type == "cpu" and load_kernel("dwconv") is not None:
        record(x.numel() * kh * kw)
        out = cast(Tensor, _KernelImageDWConv.apply(x, kernels.contiguous(), dilation))
    elif backend == "kernel":
        raise RuntimeError("backend='kernel' needs a CPU tensor and a built C++ kernel")
    else:
        cl = torch.channels_last
        xc = x.contiguous(memory_format=cl)
        w = kernels.reshape(B * C, 1, kh, kw).contiguous(memory_format=cl)  # (B·C, 1, k_h, k_w)
        pad = (dilation * (kh // 2), dilation * (kw // 2))
        out = torch.cat(
            [
                F.conv2d(xc[b : b + 1], w[b * C : (b + 1) * C], padding=pad, dilation=dilation, groups=C)
                for b in range(B)
            ]
        )  # (B, C, H, W), channels_last
    return out if bias is None else out + bias[None, :, None, None]


class _KernelPixelDWConv(torch.autograd.Function):
    """The na2d kernel's weighted window sums with given weights: zero-padded k×k windows."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, w: Tensor, k: int, dilation: int) -> Tensor:
        rows, cols = grid_windows(v.shape[1], v.shape[2], (k, k), (dilation, dilation), "zeros")
        out = load_kernel("na2d").apply_forward(w, v, *rows.tensors(), *cols.tensors(), dilation)  # type: ignore[union-attr]
        ctx.save_for_backward(v, w)
        ctx.geometry = (k, dilation)
        return cast(Tensor, out)

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        v, w = ctx.saved_tensors
        k, dilation = ctx.geometry
        rows, cols = grid_windows(v.shape[1], v.shape[2], (k, k), (dilation, dilation), "zeros")
        inv = inverse_windows(v.shape[1], k, dilation, "zeros")
        dw, dv = load_kernel("na2d").apply_backward(  # type: ignore[union-attr]
            dout.contiguous(), w, v, *rows.tensors(), *cols.tensors(), inv, dilation
        )
        return dv, dw, None, None


def _pixel_dwconv2d_kernel(x: Tensor, kernels: Tensor, k: int, dilation: int) -> Tensor:
    """Lay x out heads-last (groups as heads) and the kernels like attention probabilities, then run."""
    B, C, H, W = x.shape
    G = kernels.shape[1]
    v = x.reshape(B, G, C // G, H, W).permute(0, 3, 4, 1, 2).contiguous()  # (B, H, W, G, C/G)
    pad = dilation * (k // 2)
    lanes = 64 // x.element_size()
    w = kernels.permute(0, 1, 3, 2, 4)  # (B, G, H, k², W)
    wq = -(-W // lanes) * lanes  # columns rounded up to whole vectors, as the kernel's rows
    w = F.pad(w, (pad, pad + wq - W)).contiguous()  # (B, G, H, k², pad + wq + pad)
    out = _KernelPixelDWConv.apply(v, w, k, dilation)  # (B, H, W, G, C/G)
    return out.permute(0, 3, 4, 1, 2).reshape(B, C, H, W)


def pixel_dwconv2d(x: Tensor, kernels: Tensor, *, dilation: int = 1, backend: str = "auto") -> Tensor:
    """Depth-wise conv with a kernel per pixel and channel group (zero padding).

    Args:
        x: (B, C, H, W).
        kernels: (B, G, k_h·k_w, H, W) with G dividing C; channel c uses group c // (C / G).
        dilation: spacing of the taps.
        backend: 'auto' (the C++ kernel on CPU when it builds), 'kernel' or 'torch'.

    Returns:
        (B, C, H, W): out[b, c, p] = Σ_t kernels[b, g(c), t, p] · x[b, c, p + offset_t].
    """
    check_tensor("x", x, 4)
    check_tensor("kernels", kernels, 5)
    B, C, H, W = x.shape
    G, K = kernels.shape[1], kernels.shape[2]
    if kernels.shape[0] != B or tuple(kernels.shape[3:]) != (H, W) or C % G:
        raise ValueError(
            f"kernels must be (B, G, k·k, H, W) with G dividing C={C} and (B, H, W)={(B, H, W)}, "
            f"got {tuple(kernels.shape)}"
        )
    k = round(K**0.5)
    if k * k != K:
        raise ValueError(f"kernels must hold k·k taps of a square window, got {K}")
    _odd(k, k)
    record(B * C * H * W * K)
    if backend not in ("auto", "kernel", "torch"):
        raise ValueError(f"backend must be 'auto', 'kernel' or 'torch', got backend={backend!r}")
    if backend != "torch" and x.device.type == "cpu" and load_kernel("na2d") is not None:
        return _pixel_dwconv2d_kernel(x, kernels, k, dilation)
    if backend == "kernel":
        raise RuntimeError("backend='kernel' needs a CPU tensor and a built C++ kernel")
    r = (k // 2) * dilation
    padded = F.pad(x, (r, r, r, r)).reshape(B, G, C // G, H + 2 * r, W + 2 * r)  # (B, G, C/G, H+2r, W+2r)
    out = torch.zeros(B, G, C // G, H, W, dtype=x.dtype, device=x.device)
    for t in range(K):
        a, b = (t // k) * dilation, (t % k) * dilation
        out = out + kernels[:, :, t, None] * padded[..., a : a + H, b : b + W]  # views: no k² copies
    return out.reshape(B, C, H, W)
