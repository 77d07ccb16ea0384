"""Convolution ⇄ self-attention: Theorem 1 of Cordonnier et al. (2020) as a tool, and its way back.

`conv_to_attention(conv)` builds a quadratic multi-head self-attention layer whose output equals
`conv(x)` for every input; `attention_to_conv(attn)` reads a convolution back out of a position-only
attention layer, exactly where its heads are one-hot and approximately (with a measured error) where
they are soft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.utils.checks import check_tensor

__all__ = [
    "AttentionAsConv",
    "ConvAsAttention",
    "attention_to_conv",
    "conv_to_attention",
    "one_hot_spread",
]

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero-or-mode padding the conv applies, string forms included."""
    K, d = conv.kernel_size, conv.dilation
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # as torch: total d(K-1), the odd pixel on the bottom/right
        totals = [d[i] * (K[i] - 1) for i in range(2)]
        return (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
    p_h, p_w = cast(tuple[int, int], conv.padding)
    return (p_h, p_h, p_w, p_w)


def one_hot_spread(dtype: torch.dtype) -> float:
    """Spread s (α = s²/2) that makes a quadratic head one-hot to machine precision in `dtype`.

    A key one pixel from the head's target scores α lower than the target, so the softmax leaks about
    4·e^-α of the mass to neighbours. α = 2·ln(1/eps) puts that leak below eps² (≈ 1e-14 in float32,
    5e-32 in float64): the attention is one-hot to the last bit.
    """
    alpha = 2.0 * math.log(1.0 / torch.finfo(dtype).eps)
    return math.sqrt(2.0 * alpha)


class ConvAsAttention(nn.Module):
    """A Conv2d computed by quadratic multi-head self-attention; built by `conv_to_attention`.

    forward: pad the input as the conv would, run `attention` on the padded map, and read the output
    at the query pixels the conv's output grid lands on (every `stride`-th anchor pixel).

    Attributes:
        attention: the `MultiHeadSelfAttention2d` (quadratic, K_h·K_w heads, no value projection).
        kernel_size, stride, dilation, padding, padding_mode, groups: the converted conv's geometry.
        anchor: the tap (row, col) offset, in pixels, that a query pixel stands for.
    """

    def __init__(
        self,
        attention: MultiHeadSelfAttention2d,
        *,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        padding: tuple[int, int, int, int],
        padding_spec: str | tuple[int, int],
        padding_mode: PaddingMode,
        groups: int,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding, self.padding_spec, self.padding_mode, self.groups = (
            padding,
            padding_spec,
            padding_mode,
            groups,
        )
        self.anchor = tuple(dilation[i] * ((kernel_size[i] - 1) // 2) for i in range(2))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The conv's output size for an (height, width) input, as torch computes it."""
        top, bottom, left, right = self.padding
        sizes = []
        for n, lo, hi, k, d, s in zip(
            (height, width),
            (top, left),
            (bottom, right),
            self.kernel_size,
            self.dilation,
            self.stride,
            strict=True,
        ):
            sizes.append((n + lo + hi - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H_out, W_out), equal to the converted conv."""
        check_tensor("x", x, 4)
        H, W = x.shape[-2:]
        H_out, W_out = self.output_size(H, W)
        if H_out < 1 or W_out < 1:
            raise ValueError(
                f"input {H}x{W} is smaller than the {self.kernel_size} kernel (dilation {self.dilation}, "
                f"padding {self.padding}): the conv has no output"
            )
        top, bottom, left, right = self.padding
        if any(self.padding):
            try:
                x = F.pad(x, (left, right, top, bottom), mode=_PAD_MODES[self.padding_mode])
            except (RuntimeError, NotImplementedError) as err:
                raise ValueError(
                    f"cannot {self.padding_mode}-pad a {H}x{W} input by (top, bottom, left, right)="
                    f"{self.padding}: {str(err).splitlines()[0]}"
                ) from None
        y = self.attention(x)  # (B, C_out, H_padded, W_padded): the query at p sees taps p - anchor + m·d
        (a_h, a_w), (s_h, s_w) = self.anchor, self.stride
        return y[:, :, a_h : a_h + (H_out - 1) * s_h + 1 : s_h, a_w : a_w + (W_out - 1) * s_w + 1 : s_w]


def _dense_taps(conv: nn.Conv2d) -> Tensor:
    """The conv weight with its groups expanded to dense (C_out, C_in, K_h, K_w), zeros between groups."""
    w = conv.weight.detach()
    G = conv.groups
    out_g, in_g = conv.out_channels // G, conv.in_channels // G
    dense = w.new_zeros(conv.out_channels, conv.in_channels, *conv.kernel_size)
    for g in range(G):
        dense[g * out_g : (g + 1) * out_g, g * in_g : (g + 1) * in_g] = w[g * out_g : (g + 1) * out_g]
    return dense


def _check_geometry(conv: nn.Conv2d) -> None:
    """A ValueError naming the first setting of `conv` that describes no convolution (nn.Conv2d accepts
    a zero stride, for one, and fails only when called)."""
    for name in ("in_channels", "out_channels"):
        if getattr(conv, name) < 1:
            raise ValueError(f"the conv's {name} must be >= 1, got {name}={getattr(conv, name)}")
    for name in ("kernel_size", "stride", "dilation"):
        if min(getattr(conv, name)) < 1:
            raise ValueError(f"the conv's {name} must be >= 1, got {name}={getattr(conv, name)}")
    if not isinstance(conv.padding, str) and min(conv.padding) < 0:
        raise ValueError(f"the conv's padding must be >= 0, got padding={conv.padding}")


def conv_to_attention(conv: nn.Conv2d, *, num_heads: int | None = None) -> ConvAsAttention:
    """An exactly equivalent multi-head self-attention layer for any `nn.Conv2d` (Theorem 1).

    Construction (Cordonnier et al. 2020, Lemma 1 and its remarks):

    * Heads ↔ shifts. A K_h×K_w conv has K_h·K_w taps; head h = m·K_w + n serves tap (m, n). The
      query pixel p stands for the output whose kernel window starts at p - anchor, anchor =
      dilation·((K-1)//2) per axis, so head (m, n) must look at the shift Δ^h = (m·d_h - anchor_h,
      n·d_w - anchor_w): its centre. Dilation places the centres on the dilated grid.
    * One-hot softmax. The heads are quadratic and isotropic: score -α‖δ - Δ^h‖². Every other pixel is at
      least one pixel from the target and scores at least α lower, so with α = 2·ln(1/eps)
      (`one_hot_spread`) the softmax puts all but ~eps² of the mass on p + Δ^h.
    * W_val·W_out carries the tap. Each head pools the input itself (W_val = I, no value projection,
      head width C_in), and the output projection's block for head h is the tap W[:, :, m, n] as a
      dense (C_out, C_in) matrix: Σ_h W_out^h x_{p+Δ^h} + b is the conv's sum over taps. Groups become
      block-diagonal taps (zeros between groups); the conv bias is the output bias.
    * Padding. Attention cannot look outside the image, so the input is padded first, exactly as the
      conv pads (any of its four modes, integer, tuple, 'same' or 'valid').
    * Stride. A stride-s conv is the stride-1 conv sampled every s pixels: the layer attends on the
      whole padded map and returns the query pixels anchor + i·s.

    Args:
        conv: the convolution; its weights are copied (later changes to `conv` do not propagate).
        num_heads: must equal K_h·K_w if given (Theorem 1 uses one head per shift).

    Returns:
        A `ConvAsAttention` in the conv's dtype and device, in eval mode.

    Raises:
        TypeError: for anything but an `nn.Conv2d` (transposed, 1-D or 3-D convolutions included).
        ValueError: for a head count other than K_h·K_w, or a channel count, kernel size, stride or
            dilation below 1 or a negative padding (naming it).
    """
    if isinstance(conv, nn.ConvTranspose2d | nn.modules.conv._ConvTransposeNd):
        raise TypeError(
            "conv_to_attention cannot convert a transposed convolution: it scatters each input pixel "
            "over a window, and self-attention gathers every output from the input pixels"
        )
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv_to_attention takes an nn.Conv2d, got {type(conv).__name__}")
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        raise ValueError("the conv is lazy and not yet initialised: run it once before converting")
    _check_geometry(conv)
    K_h, K_w = conv.kernel_size
    shifts = K_h * K_w
    if num_heads is not None and num_heads != shifts:
        raise ValueError(
            f"a {K_h}x{K_w} conv has {shifts} shifts and Theorem 1 uses one head per shift, so "
            f"num_heads must be {shifts}, got num_heads={num_heads}"
        )
    dtype, device = conv.weight.dtype, conv.weight.device
    C_in, C_out = conv.in_channels, conv.out_channels
    attn = MultiHeadSelfAttention2d(
        C_in, C_out, num_heads=shifts, encoding="quadratic", value_proj=False, out_bias=conv.bias is not None
    ).to(dtype=dtype, device=device)
    d_h, d_w = conv.dilation
    a_h, a_w = d_h * ((K_h - 1) // 2), d_w * ((K_w - 1) // 2)
    taps = _dense_taps(conv)  # (C_out, C_in, K_h, K_w)
    with torch.no_grad():
        m, n = torch.meshgrid(torch.arange(K_h), torch.arange(K_w), indexing="ij")
        centres = torch.stack([m.flatten() * d_h - a_h, n.flatten() * d_w - a_w], dim=1)  # (K_h·K_w, 2)
        attn.centres.copy_(centres)
        attn.spreads.fill_(one_hot_spread(dtype))
        # W_out = [tap(0,0) | tap(0,1) | ...]: (C_out, heads·C_in), head h = m·K_w + n
        attn.W_o.weight.copy_(taps.permute(0, 2, 3, 1).reshape(C_out, shifts * C_in))
        if conv.bias is not None:
            attn.W_o.bias.copy_(conv.bias)
    pad = _conv_padding(conv)
    spec = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    out = ConvAsAttention(
        attn,
        kernel_size=(K_h, K_w),
        stride=tuple(conv.stride),  # type: ignore[arg-type]
        dilation=(d_h, d_w),
        padding=pad,
        padding_spec=spec,  # type: ignore[arg-type]
        padding_mode=conv.padding_mode,
        groups=conv.groups,
    )
    return out.eval()


@dataclass
class AttentionAsConv:
    """What `attention_to_conv` found.

    Attributes:
        conv: the convolution.
        exact: every head is one-hot (weight >= 1 - tol on one pixel), so `conv` reproduces the layer.
        kept_mass: the smallest share of its attention any head keeps inside the kernel (1.0 if exact).
        max_error: max |conv(x) - attn(x)| over the whole output, when an input `x` was given.
        interior_max_error: the same away from the borders (a kernel radius in), when `x` was given.
    """

    conv: nn.Conv2d
    exact: bool
    kept_mass: float
    max_error: float | None = None
    interior_max_error: float | None = None


def _head_taps(layer: MultiHeadSelfAttention2d) -> Tensor:
    """W_out^h · W_val^h of every head as dense (heads, C_out, C_in) matrices, and nothing else."""
    h, dv = layer.num_heads, layer.value_dim
    w_o = layer.W_o.weight.detach().reshape(layer.out_channels, h, dv).transpose(0, 1)  # (h, C_out, d_v)
    if layer.W_v is None:
        return w_o  # d_v = C_in: each head pools the input itself
    w_v = layer.W_v.weight.detach().reshape(h, dv, layer.in_channels)  # (h, d_v, C_in)
    return w_o @ w_v  # (h, C_out, C_in)


def _conv_bias(layer: MultiHeadSelfAttention2d) -> Tensor | None:
    """b_out + Σ_h W_out^h b_val^h: the value bias passes through attention untouched (weights sum to 1)."""
    bias = None if layer.W_o.bias is None else layer.W_o.bias.detach().clone()
    if layer.W_v is not None and layer.W_v.bias is not None:
        h, dv = layer.num_heads, layer.value_dim
        w_o = layer.W_o.weight.detach().reshape(layer.out_channels, h, dv)  # (C_out, h, d_v)
        extra = torch.einsum("ohd,hd->o", w_o, layer.W_v.bias.detach().reshape(h, dv))
        bias = extra if bias is None else bias + extra
    return bias


def _offset_weights(layer: MultiHeadSelfAttention2d, tol: float) -> tuple[Tensor, tuple[int, int]]:
    """Each head's attention over offsets δ for a query far from the borders: (heads, 2R_h+1, 2R_w+1)."""
    if layer.encoding.startswith("quadratic"):
        inv_cov = layer.inverse_covariance().detach().double()
        widest = 1.0 / torch.linalg.eigvalsh(inv_cov)[:, 0].clamp(min=1e-12).sqrt()  # largest σ per head
        reach = math.sqrt(2.0 * math.log(1.0 / tol)) * widest  # Gaussian tail below tol beyond this
        centres = layer.centres.detach().abs().double()
        radius = [int(min(64, math.ceil(float((centres[:, a] + reach).max())) + 1)) for a in range(2)]
    else:  # learned relative: offsets beyond max_size - 1 share the last embedding
        radius = [m - 1 for m in layer.max_size]
    size = (2 * radius[0] + 1, 2 * radius[1] + 1)
    probe = torch.zeros(
        1, layer.in_channels, *size, dtype=layer.W_o.weight.dtype, device=layer.W_o.weight.device
    )
    weights = layer.attention_probs(probe, (radius[0], radius[1]))[0]  # (heads, 2R_h+1, 2R_w+1)
    return weights.double(), (radius[0], radius[1])


def _exact_from_converted(wrapper: ConvAsAttention, shifts: Tensor) -> nn.Conv2d | None:
    """The original conv of a `ConvAsAttention` whose heads still sit on its kernel grid, else None."""
    layer = wrapper.attention
    (K_h, K_w), (d_h, d_w), (a_h, a_w) = wrapper.kernel_size, wrapper.dilation, wrapper.anchor
    if layer.num_heads != K_h * K_w:
        return None
    taps = _head_taps(layer)  # (h, C_out, C_in)
    weight = taps.new_zeros(layer.out_channels, layer.in_channels, K_h, K_w)
    filled = torch.zeros(K_h, K_w, dtype=torch.bool)
    for h, (r, c) in enumerate(shifts.tolist()):
        m, n = (r + a_h) / d_h, (c + a_w) / d_w
        if (
            not (m.is_integer() and n.is_integer() and 0 <= m < K_h and 0 <= n < K_w)
            or filled[int(m), int(n)]
        ):
            return None
        filled[int(m), int(n)] = True
        weight[:, :, int(m), int(n)] = taps[h]
    G = wrapper.groups
    out_g, in_g = layer.out_channels // G, layer.in_channels // G
    grouped = torch.cat([weight[g * out_g : (g + 1) * out_g, g * in_g : (g + 1) * in_g] for g in range(G)])
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        (K_h, K_w),
        stride=wrapper.stride,
        padding=wrapper.padding_spec,
        dilation=wrapper.dilation,
        groups=G,
        bias=layer.W_o.bias is not None,
        padding_mode=wrapper.padding_mode,
    ).to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        conv.weight.copy_(grouped)
        if conv.bias is not None:
            conv.bias.copy_(_conv_bias(layer))  # type: ignore[arg-type]
    return conv


def _conv_from_offsets(
    layer: MultiHeadSelfAttention2d, taps_per_offset: Tensor, radius: tuple[int, int]
) -> nn.Conv2d:
    """A 'same'-size conv with weight[:, :, R_h + δ_r, R_w + δ_c] = taps_per_offset[δ] (replicate borders)."""
    R_h, R_w = radius
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        (2 * R_h + 1, 2 * R_w + 1),
        padding=(R_h, R_w),
        bias=_conv_bias(layer) is not None,
        padding_mode="replicate",
    ).to(dtype=layer.W_o.weight.dtype, device=layer.W_o.weight.device)
    with torch.no_grad():
        conv.weight.copy_(taps_per_offset)
        bias = _conv_bias(layer)
        if bias is not None:
            conv.bias.copy_(bias)  # type: ignore[union-attr]
    return conv


def attention_to_conv(
    attn: MultiHeadSelfAttention2d | ConvAsAttention, *, tol: float = 1e-6, x: Tensor | None = None
) -> AttentionAsConv:
    """The convolution a position-only attention layer computes (Theorem 1 read backwards).

    A layer whose scores depend on positions only (quadratic or learned relative encoding, no content)
    attends with the same weights w^h(δ) at every query far enough from the borders, so in that
    interior it is the convolution with taps Σ_h w^h(δ) W_out^h W_val^h.

    * One-hot heads (weight >= 1 - tol on one offset Δ^h): the result is exact. For a
      `ConvAsAttention` whose heads still sit on its kernel grid it is the original conv: same weights,
      padding, mode, stride, dilation and groups. For a bare layer it is the smallest odd-sized kernel
      holding every Δ^h, 'same' padding in replicate mode; with isotropic quadratic heads this is exact
      at the borders too, because there the softmax picks the nearest pixel, the one replicate padding
      copies.
    * Soft heads: the kernel keeps every offset where some head's weight is >= tol; the mass cut off
      is reported as `kept_mass`, and if `x` is given the error of the conv on it is measured.

    Args:
        attn: a position-only `MultiHeadSelfAttention2d` or a `ConvAsAttention`.
        tol: one-hot threshold and truncation level, in (0, 1).
        x: optional (B, C_in, H, W) input on which to measure the error.

    Raises:
        ValueError: for a layer with content scores or absolute encodings (its weights depend on the
            input), or a `ConvAsAttention` whose heads are no longer one-hot.
    """
    wrapper = attn if isinstance(attn, ConvAsAttention) else None
    layer = attn.attention if isinstance(attn, ConvAsAttention) else attn
    if not isinstance(layer, MultiHeadSelfAttention2d):
        raise TypeError(f"attention_to_conv takes a MultiHeadSelfAttention2d, got {type(attn).__name__}")
    if not layer.position_only:
        raise ValueError(
            f"only position-only attention is a convolution; encoding={layer.encoding!r} depends on the "
            "input (choose 'quadratic', 'quadratic_generalized' or 'relative')"
        )
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must lie in (0, 1), got tol={tol}")
    weights, radius = _offset_weights(layer, tol)  # (h, 2R_h+1, 2R_w+1)
    peak, where = weights.flatten(1).max(dim=1)  # (h,)
    exact = bool((peak >= 1.0 - tol).all())
    W_off = weights.shape[-1]
    shifts = torch.stack([where // W_off - radius[0], where % W_off - radius[1]], dim=1)  # (h, 2): Δ^h
    conv = _exact_from_converted(wrapper, shifts) if wrapper is not None and exact else None
    if wrapper is not None and conv is None:
        raise ValueError(
            f"the converted layer's heads are no longer one-hot on its kernel grid (smallest peak weight "
            f"{float(peak.min()):.6f}); convert its `.attention` for an approximating conv"
        )
    taps = _head_taps(layer).double()  # (h, C_out, C_in)
    if conv is None and exact:
        r = (int(shifts[:, 0].abs().max()), int(shifts[:, 1].abs().max()))
        per_offset = taps.new_zeros(layer.out_channels, layer.in_channels, 2 * r[0] + 1, 2 * r[1] + 1)
        for h, (dr, dc) in enumerate(shifts.tolist()):
            per_offset[:, :, r[0] + dr, r[1] + dc] += taps[h]
        conv = _conv_from_offsets(layer, per_offset, r)
        kept = 1.0
    elif conv is None:
        keep = weights.amax(0) >= tol  # (2R_h+1, 2R_w+1)
        rows, cols = keep.nonzero(as_tuple=True)
        r = (int((rows - radius[0]).abs().max()), int((cols - radius[1]).abs().max()))
        window = weights[:, radius[0] - r[0] : radius[0] + r[0] + 1, radius[1] - r[1] : radius[1] + r[1] + 1]
        window = (
            window * keep[radius[0] - r[0] : radius[0] + r[0] + 1, radius[1] - r[1] : radius[1] + r[1] + 1]
        )
        per_offset = torch.einsum("hij,hoc->ocij", window, taps)  # (C_out, C_in, 2r_h+1, 2r_w+1)
        conv = _conv_from_offsets(layer, per_offset, r)
        kept = float(window.sum((1, 2)).min())
    else:
        kept = 1.0
    result = AttentionAsConv(conv=conv, exact=exact, kept_mass=kept)
    if x is not None:
        with torch.no_grad():
            got, want = conv(x), attn(x)
        err = (got - want).abs()
        result.max_error = float(err.max())
        r_h, r_w = ((k - 1) * d // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
        inner = err[..., r_h : err.shape[-2] - r_h, r_w : err.shape[-1] - r_w]
        result.interior_max_error = float(inner.max()) if inner.numel() else None
    return result
