"""The 1×1 convolution of the attention mixers' projections, (B, C, H, W) -> (B, O, H, W).

On CPU with an NCHW input, every image's projection is one matrix product, W (O × C) @ x_b (C × HW),
with a hand-written backward: dx_b = Wᵀ dy_b and dW = Σ_b dy_b x_bᵀ. mkldnn's 1×1 convolution of NCHW
inputs scaled poorly with threads: 64 -> 192 channels on 8×32×32, forward+backward, it took 4.4 ms
on one thread and 3.3 ms on two, the matrix products 4.3 ms and 2.0 ms (an Intel Xeon). autograd's own
backward of the broadcast product is slower than both (4.7 ms on two threads): it expands the
weight's gradient per image. Every other input (channels-last, where mkldnn's convolution is as fast
as the products, CUDA, half precision, empty batches) runs `F.conv2d`, which is also the reference the
tests hold this path to, forward and backward, in float64.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.utils.checks import check_like, check_tensor

__all__ = ["pointwise_conv2d"]


class _PointwiseFunction(torch.autograd.Function):
    """y_b = W x_b for NCHW x (B, C, H, W) and W (O, C), with the backward written out."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        B, C, H, W = x.shape
        ctx.save_for_backward(x, weight)
        w = weight.expand(B, *weight.shape)  # (B, O, C): one product per image, no copies of x or y
        return torch.bmm(w, x.view(B, C, H * W)).view(B, weight.shape[0], H, W)  # (B, O, H, W)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        B, C, H, W = x.shape
        dy3 = dy.reshape(B, weight.shape[0], H * W)  # (B, O, HW): a view of an NCHW gradient
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(weight.t().expand(B, C, weight.shape[0]), dy3).view(B, C, H, W)  # (B, C, H, W)
        if ctx.needs_input_grad[1]:
            dw = torch.bmm(dy3, x.view(B, C, H * W).transpose(1, 2)).sum(0)  # (B, O, C) -> (O, C)
        return dx, dw


def pointwise_conv2d(x: Tensor, weight: Tensor) -> Tensor:
    """The 1×1 convolution of x (B, C, H, W) with weight (O, C, 1, 1), no bias: (B, O, H, W), in x's
    memory format. The same function as `F.conv2d(x, weight)`.

    Raises:
        TypeError: for non-floating tensors, or tensors of different dtypes or devices.
        ValueError: for a weight that is not (O, C, 1, 1) with C the input's channels.
    """
    check_tensor("x", x, 4)
    check_tensor("weight", weight, 4)
    if weight.shape[1:] != (x.shape[1], 1, 1):
        raise ValueError(
            f"weight must be (out_channels, {x.shape[1]}, 1, 1) for x of shape {tuple(x.shape)}, "
            f"got weight.shape={tuple(weight.shape)}"
        )
    check_like("weight", weight, "x", x)
    fast = (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.numel() > 0
        and x.is_contiguous()  # NCHW (a 1×1 map is channels-last too: both paths agree there)
    )
    if not fast:
        return F.conv2d(x, weight)
    return cast(Tensor, _PointwiseFunction.apply(x, weight.view(weight.shape[0], weight.shape[1])))
