"""Spatial mixers behind one interface: (B, C, H, W) -> (B, C_out, H', W'), built by name.

`create_mixer(name, dim, **options)` builds any of them; every builder takes `out_dim` (default dim)
and `stride` (1 or more: the output is ceil(H / stride) × ceil(W / stride), by the conv's own stride or
by average pooling after attention, as SASA does). `list_mixers()` names them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.dynamic import image_dwconv2d, pixel_dwconv2d
from convattn.layers.geometry import BORDERS
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.layers.neighborhood import neighborhood_attention2d, neighborhood_attention2d_qkv
from convattn.layers.pointwise import pointwise_conv2d
from convattn.layers.window import window_attention2d, window_attention2d_qkv
from convattn.utils.checks import (
    check_heads_divide,
    check_odd,
    check_positive,
    check_positive_int,
    check_tensor,
)

__all__ = [
    "SASA",
    "DynamicDWConv",
    "LocalMLP",
    "SASAStem",
    "WindowAttention",
    "create_mixer",
    "list_mixers",
    "register_mixer",
]

_MIXERS: dict[str, Callable[..., nn.Module]] = {}
_Builder = TypeVar("_Builder", bound=Callable[..., nn.Module])


def register_mixer(name: str) -> Callable[[_Builder], _Builder]:
    """Decorator: make a builder `fn(dim, **options) -> nn.Module` (or a module class) available as `name`."""

    def add(fn: _Builder) -> _Builder:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is registered twice")
        _MIXERS[name] = fn
        return fn

    return add


def list_mixers() -> list[str]:
    """Names accepted by `create_mixer`, sorted."""
    return sorted(_MIXERS)


def create_mixer(name: str, dim: int, **options: object) -> nn.Module:
    """Build the mixer `name` for `dim` input channels; `options` go to its constructor."""
    if name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {', '.join(list_mixers())}")
    return _MIXERS[name](check_positive_int("dim", dim), **options)


def _same_dims(name: str, dim: int, out_dim: int | None) -> int:
    if out_dim is not None and out_dim != dim:
        raise ValueError(
            f"{name} keeps the channels: out_dim must equal dim, got dim={dim}, out_dim={out_dim}"
        )
    return dim


def _pool(x: Tensor, stride: int) -> Tensor:
    """SASA's spatial down-sampling: stride×stride average pooling, ceil(H / stride) outputs."""
    return x if stride == 1 else F.avg_pool2d(x, stride, stride, ceil_mode=True)


def _add_bias(x: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, C, H, W) plus a per-channel bias, if any."""
    return x if bias is None else x + bias[None, :, None, None]


def _to_heads(x: Tensor, heads: int) -> Tensor:
    """(B, h·d, H, W) -> (B, H, W, h, d)."""
    B, C, H, W = x.shape
    return x.reshape(B, heads, C // heads, H, W).permute(0, 3, 4, 1, 2)


def _from_heads(x: Tensor) -> Tensor:
    """(B, H, W, h, d) -> (B, h·d, H, W)."""
    B, H, W, h, d = x.shape
    return x.permute(0, 3, 4, 1, 2).reshape(B, h * d, H, W)


@register_mixer("conv")
def _conv(
    dim: int, *, out_dim: int | None = None, kernel_size: int = 3, stride: int = 1, bias: bool = False
) -> nn.Module:
    """Dense k×k convolution, 'same' padding."""
    k = check_odd("kernel_size", kernel_size)
    return nn.Conv2d(
        dim, out_dim or dim, k, stride=check_positive_int("stride", stride), padding=k // 2, bias=bias
    )


class DepthwiseConv2d(nn.Conv2d):
    """A depth-wise nn.Conv2d that runs in channels_last, where torch's depth-wise kernels are 2-4x
    faster (forward and backward) than in NCHW; the output keeps that layout. Same parameters and
    state_dict as nn.Conv2d."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight.data = self.weight.data.contiguous(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


@register_mixer("dwconv")
def _dwconv(
    dim: int, *, out_dim: int | None = None, kernel_size: int = 7, stride: int = 1, bias: bool = True
) -> nn.Module:
    """Depth-wise k×k convolution (out_dim a multiple of dim), 'same' padding, run in channels_last."""
    k = check_odd("kernel_size", kernel_size)
    out = out_dim or dim
    if out % dim:
        raise ValueError(f"a depth-wise conv needs out_dim a multiple of dim, got dim={dim}, out_dim={out}")
    return DepthwiseConv2d(
        dim, out, k, stride=check_positive_int("stride", stride), padding=k // 2, groups=dim, bias=bias
    )


class _KernelMixer(nn.Module):
    """The forward of the width-keeping kernel mixers: `aggregate(x, x)`, a per-channel bias, the stride."""

    bias: nn.Parameter | None
    stride: int

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """Kernels from xw applied to xv, (B, C, H, W) -> (B, C, H, W) (no bias, no stride)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        return _pool(_add_bias(self.aggregate(x, x), self.bias), self.stride)


@register_mixer("dynamic_dwconv")
class DynamicDWConv(_KernelMixer):
    """Dynamic depth-wise convolution of DWNet (Han et al. 2022, §4; reference code `DynamicDWConv`).

    homogeneous: kernels per image, GAP -> 1×1 conv (C -> C/r, no bias) -> BN -> ReLU -> 1×1 conv
    (C/r -> C·k²). inhomogeneous: the same predictor on every pixel's own feature gives per-pixel
    kernels for `groups` channel groups (C/r -> groups·k²), shared by the channels of a group.

    Initialisation (`reset_kernel_predictor`): the kernel starts as a static depth-wise kernel drawn like
    nn.Conv2d(C, C, k, groups=C)'s taps (U(±1/k), std σ = 1/(k√3)), held by the bias of the last 1×1
    conv, plus a predicted part of std σ/2 (its weights, for an input of mean square 1/2: ReLU of
    batch-normalised features), so taps of std ≈ 1.1σ. torch's default init there, which DWNet's code
    keeps, predicts taps of std ≈ √(1/6) ≈ 0.41 whatever k: 5× a static 7×7 kernel's (2× at 3×3), and
    the spatial layers of `resnet_digits` start at 2-17× the conv ResNet's activations (the BN behind it
    hides the scale from the forward, but the predictor's effective step shrinks as its square). The
    predicted part starts small because it makes the output quadratic in the input: in training mode
    the predictor's BN hands the largest kernels to the images with the largest activations, and a
    kernel predicted in full at std σ still leaves layers at 3-4× the conv ResNet's at batch 32-64.
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        kernel_size: int = 7,
        mode: str = "homogeneous",
        reduction: int = 4,
        groups: int | None = None,
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _same_dims("dynamic_dwconv", dim, out_dim)
        self.k = check_odd("kernel_size", kernel_size)
        if mode not in ("homogeneous", "inhomogeneous"):
            raise ValueError(f"mode must be 'homogeneous' or 'inhomogeneous', got mode={mode!r}")
        self.mode, self.stride = mode, check_positive_int("stride", stride)
        hidden = max(1, dim // check_positive_int("reduction", reduction))
        self.groups = check_positive_int("groups", groups or max(1, dim // 16))
        if dim % self.groups:
            raise ValueError(f"groups must divide dim, got dim={dim}, groups={self.groups}")
        outputs = dim * self.k**2 if mode == "homogeneous" else self.groups * self.k**2
        self.reduce = nn.Conv2d(dim, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.expand = nn.Conv2d(hidden, outputs, 1)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.reset_kernel_predictor()

    def reset_kernel_predictor(self) -> None:
        """Taps at init: a default static depth-wise kernel (the bias) plus a predicted part of σ/2."""
        bound = 1 / self.k  # nn.Conv2d(C, C, k, groups=C) draws its taps from U(±1/k): std 1/(k√3)
        if self.expand.bias is not None:  # always: it holds the static part of the kernel
            nn.init.uniform_(self.expand.bias, -bound, bound)
        predicted = bound / math.sqrt(3) / 2
        nn.init.normal_(self.expand.weight, std=predicted * math.sqrt(2 / self.expand.in_channels))

    def kernels(self, x: Tensor) -> Tensor:
        """Predicted kernels: (B, C, k, k) per image, or (B, groups, k², H, W) per pixel."""
        B, C, H, W = x.shape
        if self.mode == "homogeneous":
            z = self.expand(F.relu(self.norm(self.reduce(x.mean((2, 3), keepdim=True)))))  # (B, C·k², 1, 1)
            return z.reshape(B, C, self.k, self.k)
        z = self.expand(F.relu(self.norm(self.reduce(x))))  # (B, G·k², H, W)
        return z.reshape(B, self.groups, self.k**2, H, W)

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """The spatial aggregation alone: kernels predicted from xw, applied to xv (no bias, no stride)."""
        kernels = self.kernels(xw)
        return image_dwconv2d(xv, kernels) if self.mode == "homogeneous" else pixel_dwconv2d(xv, kernels)


@register_mixer("local_mlp")
class LocalMLP(_KernelMixer):
    """Static per-offset weights in a k×k window, shared by the channels of each head (DWNet's Local MLP).

    Sparse like local attention, shared across a head's channels like attention, but static: a depth-wise
    convolution whose num_heads kernels are each reused by C / num_heads channels.
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        kernel_size: int = 7,
        num_heads: int = 8,
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _same_dims("local_mlp", dim, out_dim)
        self.k = check_odd("kernel_size", kernel_size)
        self.heads = num_heads
        check_heads_divide(dim, num_heads)
        self.stride = check_positive_int("stride", stride)
        self.weight = nn.Parameter(torch.randn(num_heads, self.k, self.k) / self.k)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """The spatial aggregation alone (static: xw is not used)."""
        C = xv.shape[1]
        kernel = self.weight.repeat_interleave(C // self.heads, dim=0)[:, None]  # (C, 1, k, k)
        cl = torch.channels_last  # torch's depth-wise kernels are 2-4x faster in this layout
        return F.conv2d(
            xv.contiguous(memory_format=cl),
            kernel.contiguous(memory_format=cl),
            padding=self.k // 2,
            groups=C,
        )


def _score_scale(scale: str | float | None, head_dim: int) -> float:
    """The factor on q·k: None -> 1 (SASA's eq. 2), "sqrt" -> 1/√head_dim, or a positive number."""
    if scale is None:
        return 1.0
    if isinstance(scale, str):
        if scale != "sqrt":
            raise ValueError(f"scale must be None, 'sqrt' or a positive number, got scale={scale!r}")
        return head_dim**-0.5
    return check_positive("scale", scale)


@register_mixer("sasa")
class SASA(nn.Module):
    """Stand-alone self-attention (Ramachandran et al. 2019, eq. 2-3): k×k neighbourhood attention,

        y_ij = Σ_{ab ∈ N_k(i,j)} softmax_ab(q_ij·k_ab + q_ij·r_{a-i,b-j}) v_ab.

    q, k, v are 1×1 projections (no bias); heads split the channels and q·k sums over a head's
    channels. The relative embedding of offset (δ_r, δ_c) is [row(δ_r), col(δ_c)], each out_dim/2 wide,
    split into heads like the keys; it adds q·r to the score. Stride s > 1 average-pools the output.
    The paper's score has no scale; `scale="sqrt"` multiplies q·k (not q·r) by the Transformer's
    1/√d, d = out_dim / num_heads (what this layer did before it followed the paper).

    Args:
        dim: input channels.
        out_dim: output channels (default dim); even, and a multiple of num_heads.
        kernel_size: odd window side k.
        num_heads: heads, each out_dim / num_heads channels wide.
        stride: average-pooling stride after the attention.
        border: "mask", "zeros" or "shift" (see `convattn.layers.geometry`).
        dilation: spacing of the window's keys.
        scale: factor on q·k: None (1, the paper's eq. 2), "sqrt" (1/√d) or a positive number.
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        kernel_size: int = 7,
        num_heads: int = 8,
        stride: int = 1,
        border: str = "mask",
        dilation: int = 1,
        scale: str | float | None = None,
    ) -> None:
        super().__init__()
        out = out_dim or dim
        self.k = check_odd("kernel_size", kernel_size)
        self.heads, self.d = num_heads, check_heads_divide(out, num_heads)
        self.scale = _score_scale(scale, self.d)
        if out % 2:
            raise ValueError(
                f"SASA splits out_dim between row and column embeddings: it must be even, got {out}"
            )
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got border={border!r}")
        self.border, self.stride = border, check_positive_int("stride", stride)
        self.dilation = check_positive_int("dilation", dilation)
        self.q = nn.Conv2d(dim, out, 1, bias=False)
        self.kv = nn.Conv2d(dim, 2 * out, 1, bias=False)
        # 'mask'/'zeros' windows see offsets -r..r; 'shift' windows up to ±(k-1).
        n = 2 * self.k - 1 if border == "shift" else self.k
        self.rel_row = nn.Parameter(torch.randn(n, out // 2) / math.sqrt(out))
        self.rel_col = nn.Parameter(torch.randn(n, out - out // 2) / math.sqrt(out))

    def rel_table(self) -> Tensor:
        """(2k-1, 2k-1, heads, d) table of [row(δ_r), col(δ_c)], zero at offsets the border never uses."""
        rel_h, rel_w = self.rel_hw()
        return rel_h[:, None] + rel_w[None, :]

    def rel_hw(self) -> tuple[Tensor, Tensor]:
        """The table's rows and columns, each (2k-1, heads, d): [row(δ_r), 0] and [0, col(δ_c)]: the
        decomposed form `neighborhood_attention2d` takes (k + k dot products per query, not k²)."""
        k, n = self.k, self.rel_row.shape[0]
        pad, half, rest = (2 * k - 1 - n) // 2, self.rel_row.shape[1], self.rel_col.shape[1]
        rows = F.pad(self.rel_row, (0, rest, pad, pad))  # (2k-1, out): the column half zero
        cols = F.pad(self.rel_col, (half, 0, pad, pad))  # (2k-1, out): the row half zero
        return rows.view(2 * k - 1, self.heads, self.d), cols.view(2 * k - 1, self.heads, self.d)

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """Attention weights from xw's queries and keys, applied to xv as the values."""
        return self._attend(self.q(xw), self.kv(xw)[:, : self.q.out_channels], xv)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = neighborhood_attention2d(
            _to_heads(q, self.heads),
            _to_heads(k, self.heads),
            _to_heads(v, self.heads),
            self.k,
            dilation=self.dilation,
            rel_hw=self.rel_hw(),
            border=self.border,
            scale=self.scale,
        )
        return _from_heads(out)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        weight = torch.cat([self.q.weight, self.kv.weight])  # (3 out, dim, 1, 1): q, k, v in one 1×1 conv
        # The conv keeps x's memory format (NCHW or channels_last) and the kernel reads either in place,
        # so the input is not converted: (B, 3 out, H, W) -> (B, 3, heads, d, H, W) -> (B, H, W, 3, heads, d)
        qkv = pointwise_conv2d(x, weight).unflatten(1, (3, self.heads, self.d)).permute(0, 4, 5, 1, 2, 3)
        out = neighborhood_attention2d_qkv(
            qkv,
            self.k,
            dilation=self.dilation,
            rel_hw=self.rel_hw(),
            border=self.border,
            scale=self.scale,
        )  # (B, H, W, heads, d)
        return _pool(_from_heads(out), self.stride)


@register_mixer("sasa_stem")
class SASAStem(nn.Module):
    """SASA's spatially-aware stem: attention in w×w blocks whose values depend on position.

    The value of a pixel at (a, b) inside its block is (Σ_m p(a, b, m) W_V^m) x with
    p(a, b, m) = softmax_m((row(a) + col(b))·ν^m) over m value matrices (Ramachandran et al. §3.3).
    """

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        window: int = 4,
        num_heads: int = 1,
        mixtures: int = 4,
        stride: int = 1,
    ) -> None:
        super().__init__()
        out = out_dim or dim
        self.w = check_positive_int("window", window)
        self.heads, self.d = num_heads, check_heads_divide(out, num_heads)
        self.m = check_positive_int("mixtures", mixtures)
        self.stride = check_positive_int("stride", stride)
        self.q = nn.Conv2d(dim, out, 1, bias=False)
        self.k = nn.Conv2d(dim, out, 1, bias=False)
        self.values = nn.Conv2d(dim, self.m * out, 1, bias=False)  # the m matrices W_V^m
        self.row = nn.Parameter(torch.randn(self.w, out) * 0.02)
        self.col = nn.Parameter(torch.randn(self.w, out) * 0.02)
        self.nu = nn.Parameter(torch.randn(self.m, out) * 0.02)

    def mixture(self, height: int, width: int) -> Tensor:
        """p(a, b, m) of every pixel: (m, H, W), from its position inside its block."""
        a = torch.arange(height, device=self.row.device) % self.w
        b = torch.arange(width, device=self.row.device) % self.w
        emb = self.row[a][:, None] + self.col[b][None, :]  # (H, W, out)
        return torch.softmax(emb @ self.nu.T, dim=-1).permute(2, 0, 1)  # (m, H, W)

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """Block attention weights from xw, applied to xv as the values."""
        q, k = _to_heads(self.q(xw), self.heads), _to_heads(self.k(xw), self.heads)
        return _from_heads(window_attention2d(q, k, _to_heads(xv, self.heads), self.w))

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        B, _, H, W = x.shape
        values = self.values(x)  # (B, m·out, H, W)
        per_matrix = values.reshape(B, self.m, values.shape[1] // self.m, H, W)  # (B, m, out, H, W)
        v = (per_matrix * self.mixture(H, W)[None, :, None]).sum(1)  # (B, out, H, W)
        return _pool(self.aggregate(x, v), self.stride)


@register_mixer("window")
class WindowAttention(nn.Module):
    """Swin window attention with relative position bias; `shift=window // 2` for the shifted blocks."""

    def __init__(
        self,
        dim: int,
        *,
        out_dim: int | None = None,
        window: int = 7,
        num_heads: int = 4,
        shift: int = 0,
        stride: int = 1,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.w = check_positive_int("window", window)
        if not 0 <= shift < window:
            raise ValueError(f"shift must satisfy 0 <= shift < window, got shift={shift}, window={window}")
        self.heads, self.d = num_heads, check_heads_divide(dim, num_heads)
        self.shift, self.stride = shift, check_positive_int("stride", stride)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(dim, out_dim or dim, 1)
        self.bias_table = nn.Parameter(torch.randn(num_heads, 2 * window - 1, 2 * window - 1) * 0.02)

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """Window attention weights from xw, applied to xv as the values (no projections)."""
        q, k, _ = self.qkv(xw).chunk(3, dim=1)
        return self._attend(q, k, xv)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (_to_heads(t, self.heads) for t in (q, k, v))
        return _from_heads(window_attention2d(q, k, v, self.w, shift=self.shift, bias=self.bias_table))

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        x = x.contiguous(memory_format=torch.channels_last)  # heads-last views of the projections: no copies
        B, _, H, W = x.shape
        qkv = self.qkv(x).permute(0, 2, 3, 1).reshape(B, H, W, 3, self.heads, self.d)  # a view: channels last
        out = window_attention2d_qkv(qkv, self.w, shift=self.shift, bias=self.bias_table)  # (B, H, W, h, d)
        return _pool(self.proj(_from_heads(out)), self.stride)


@register_mixer("mhsa")
class _GlobalMHSA(nn.Module):
    """`MultiHeadSelfAttention2d` with SASA-style stride (average pooling after attention)."""

    def __init__(self, dim: int, *, out_dim: int | None = None, stride: int = 1, **options: object) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention2d(dim, out_dim, **options)  # type: ignore[arg-type]
        self.stride = check_positive_int("stride", stride)

    def aggregate(self, xw: Tensor, xv: Tensor) -> Tensor:
        """Attention weights from xw (every query, explicitly: for small maps), applied to xv per head."""
        B, C, H, W = xv.shape
        heads = self.attn.num_heads
        probs = torch.stack(
            [self.attn.attention_probs(xw, (i, j)).flatten(2) for i in range(H) for j in range(W)], dim=2
        )  # (B, heads, T queries, T keys)
        v = xv.reshape(B, heads, C // heads, H * W)  # (B, heads, C/heads, T)
        return torch.einsum("bhqk,bhck->bhcq", probs, v).reshape(B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return _pool(self.attn(x), self.stride)
