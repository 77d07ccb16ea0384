"""Dynamic depth-wise convolutions (Han et al. 2022, DWNet): kernels predicted from the input.

Homogeneous: one k×k kernel per image and channel, from global average pooling.
Inhomogeneous: one k×k kernel per pixel and channel group, from the pixel's own feature (the "centre
feature"), shared by the channels of a group; as in local attention, the weights change with position.
Both are pure functions of (input, kernels); the modules that predict the kernels are in `mixers.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.kernels import choose_backend, image_dwconv_kernel, pixel_dwconv_kernel
from convattn.utils.checks import check_odd, check_tensor

__all__ = ["image_dwconv2d", "pixel_dwconv2d"]


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
    kh, kw = check_odd("kernel_size", (kernels.shape[-2], kernels.shape[-1]))
    if choose_backend(backend, x, "dwconv") == "kernel":
        record(x.numel() * kh * kw)
        out = image_dwconv_kernel(x, kernels, dilation)
    elif B == 0:  # an empty batch: an empty result, still a function of both inputs
        out = x * kernels.sum((2, 3))[:, :, None, None]  # (0, C, H, W)
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
    check_odd("kernel_size", k)
    record(B * C * H * W * K)
    if choose_backend(backend, x, "na2d") == "kernel":
        return pixel_dwconv_kernel(x, kernels, k, dilation)
    r = (k // 2) * dilation
    padded = F.pad(x, (r, r, r, r)).reshape(B, G, C // G, H + 2 * r, W + 2 * r)  # (B, G, C/G, H+2r, W+2r)
    out = torch.zeros(B, G, C // G, H, W, dtype=x.dtype, device=x.device)
    for t in range(K):
        a, b = (t // k) * dilation, (t % k) * dilation
        out = out + kernels[:, :, t, None] * padded[..., a : a + H, b : b + W]  # views: no k² copies
    return out.reshape(B, C, H, W)
