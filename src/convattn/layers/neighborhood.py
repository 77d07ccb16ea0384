"""2-D neighbourhood attention: each pixel attends to a k_h×k_w window of keys around it.

Ramachandran et al. 2019 (SASA) and Hassani et al. 2023 (NATTEN): for a query pixel p with window N(p),
    out_p = Σ_{n ∈ N(p)} softmax_n(scale · q_p·k_n + q_p·rel[n - p] + bias[n - p]) v_n,
computed per head on heads-last tensors (B, H, W, heads, d), the layout of NATTEN's `na2d`.

Windows are products of one window per axis; `border` ('mask', 'zeros' or 'shift') decides what
happens near the edges, and the per-axis tables (key index, validity, offset index for each query and
slot) are built in `convattn.layers.geometry`, whose docstring spells out the three modes. A window
larger than the map holds the pixels that exist; a dilation at least as long as an axis (of more than
one pixel) is an error, since every window would then hold its query alone. `rel` and `bias` are
indexed by the key's offset from the query, so tables of (2k_h-1)×(2k_w-1) entries serve every
border mode. The C++ kernel (`convattn.layers.kernels`), the PyTorch path and the flex_attention path
all run from the same tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import Any, cast

import torch
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.geometry import BORDERS, AxisWindows, axis_membership, grid_windows
from convattn.layers.kernels import choose_backend, na2d_kernel, na2d_packed_kernel
from convattn.utils.checks import check_odd, check_pair, check_tensor

__all__ = [
    "neighborhood_attention2d",
    "neighborhood_attention2d_flex",
    "neighborhood_attention2d_qkv",
    "neighborhood_attention2d_torch",
]


@cache
def _compiled_flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def neighborhood_attention2d_flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
    scale: float,
    rel: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """The fused path for accelerators: `flex_attention` over the flattened pixels with a block mask.

    The window is a `mask_mod` (a product of per-axis memberships), the bias a `score_mod`; the rel
    term q·rel[offset] is computed once per (query, slot) and added by the `score_mod`. Border 'zeros'
    has keys that are not pixels, so it stays on the PyTorch path.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if border == "zeros":
        raise ValueError("border='zeros' has no flex_attention form; use the PyTorch path")
    B, H, W, heads, d = q.shape
    rows, cols = grid_windows(H, W, kernel_size, dilation, border)
    in_r, slot_r, off_r = axis_membership(rows, H, q.device)
    in_c, slot_c, off_c = axis_membership(cols, W, q.device)
    kw = kernel_size[1]

    def mask_mod(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        return in_r[qi // W, ki // W] & in_c[qi % W, ki % W]

    rel_scores = None
    if rel is not None:  # (B, heads, T, K): q · rel at every window slot
        r_off, c_off = rows.offset.to(q.device), cols.offset.to(q.device)
        table = rel[r_off[:, :, None, None], c_off[None, None, :, :]]  # (H, k_h, W, k_w, heads, d)
        table = table.permute(0, 2, 1, 3, 4, 5).reshape(H, W, -1, heads, d)  # (H, W, K, heads, d)
        rel_scores = torch.einsum("bijhd,ijkhd->bhijk", q, table).reshape(B, heads, H * W, -1)

    def score_mod(score: Tensor, b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        qr, qc, kr, kc = qi // W, qi % W, ki // W, ki % W
        if rel_scores is not None:
            score = score + rel_scores[b, h, qi, slot_r[qr, kr] * kw + slot_c[qc, kc]]
        if bias is not None:
            score = score + bias[h, off_r[qr, kr], off_c[qc, kc]]
        return score

    T = H * W
    block_mask = create_block_mask(mask_mod, None, None, T, T, device=q.device.type)
    flat = lambda x: x.reshape(B, T, heads, -1).transpose(1, 2)  # noqa: E731  (B, heads, T, ·)
    # Compiled on accelerators (the fused kernel); eager elsewhere, where it serves as a check.
    attend = _compiled_flex() if q.device.type == "cuda" else cast(Callable[..., Any], flex_attention)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention.*", category=UserWarning)
        out = attend(flat(q), flat(k), flat(v), score_mod=score_mod, block_mask=block_mask, scale=scale)
    return cast(Tensor, out).transpose(1, 2).reshape(B, H, W, heads, -1)


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int],
    rel: Tensor | None,
    bias: Tensor | None,
    border: str,
    rel_hw: tuple[Tensor, Tensor] | None = None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, 5)
    if q.shape != k.shape or q.shape[:4] != v.shape[:4]:
        raise ValueError(
            "q and k must be (B, H, W, heads, d) and v (B, H, W, heads, d_v) alike, got "
            f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    ks = check_odd("kernel_size", check_pair("kernel_size", kernel_size))
    dil = check_pair("dilation", dilation)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got border={border!r}")
    for axis, n, step in (("height", q.shape[1], dil[0]), ("width", q.shape[2], dil[1])):
        if step > 1 and n > 1 and step >= n:  # every window would hold its query alone: attention = v
            raise ValueError(
                f"dilation {step} does not fit a map of {axis} {n}: every window would hold only its own "
                f"query; use dilation < {n} (got dilation={dil}, map {tuple(q.shape[1:3])})"
            )
    heads, d = q.shape[3], q.shape[4]
    table = (2 * ks[0] - 1, 2 * ks[1] - 1)
    if rel is not None and tuple(rel.shape) != (*table, heads, d):
        raise ValueError(
            f"rel must be (2k_h-1, 2k_w-1, heads, d)={(*table, heads, d)}, got rel.shape={tuple(rel.shape)}"
        )
    if rel_hw is not None:
        if rel is not None:
            raise ValueError("give rel (a full table) or rel_hw (its rows and columns), not both")
        if not isinstance(rel_hw, (tuple, list)) or len(rel_hw) != 2:
            raise TypeError(f"rel_hw must be a pair (rel_h, rel_w) of tensors, got {type(rel_hw).__name__}")
        for name, t, n in (("rel_h", rel_hw[0], table[0]), ("rel_w", rel_hw[1], table[1])):
            check_tensor(name, t, 3)
            if tuple(t.shape) != (n, heads, d):
                raise ValueError(
                    f"{name} must be ({n}, heads, d)={(n, heads, d)}, got {name}.shape={tuple(t.shape)}"
                )
            if t.dtype != q.dtype:
                raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if bias is not None and tuple(bias.shape) != (heads, *table):
        raise ValueError(
            f"bias must be (heads, 2k_h-1, 2k_w-1)={(heads, *table)}, got bias.shape={tuple(bias.shape)}"
        )
    return ks, dil


def _slot_reader(
    x: Tensor,
    rows: AxisWindows,
    cols: AxisWindows,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
) -> Callable[[int, int], Tensor]:
    """A function slot (a, b) -> (B, H, W, heads, ·) keys or values of that window slot for every query.

    'mask'/'zeros' windows are fixed offsets, so slots are views into one zero-padded copy (autograd
    then saves views, not k² gathered copies); 'shift' windows move with the query and are gathered.
    """
    H, W = x.shape[1:3]
    if border != "shift":
        p_h, p_w = (kernel_size[0] // 2) * dilation[0], (kernel_size[1] // 2) * dilation[1]
        padded = torch.nn.functional.pad(x, (0, 0, 0, 0, p_w, p_w, p_h, p_h))  # (B, H+2p_h, W+2p_w, h, ·)
        return lambda a, b: padded[
            :, a * dilation[0] : a * dilation[0] + H, b * dilation[1] : b * dilation[1] + W
        ]
    r_idx, c_idx = rows.index.to(x.device), cols.index.to(x.device)
    return lambda a, b: x[:, r_idx[:, a]][:, :, c_idx[:, b]]


def neighborhood_attention2d_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
    scale: float,
    rel: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """The pure-PyTorch path: the fallback and the oracle of the fast kernels.

    Loops over the k_h·k_w window slots. Memory: the (B, H, W, heads, k_h·k_w) scores and
    probabilities, and one zero-padded copy of k and v (border 'shift' gathers per slot instead).
    """
    _, H, W, _, _ = q.shape
    rows, cols = grid_windows(H, W, kernel_size, dilation, border)
    device = q.device
    keys = _slot_reader(k, rows, cols, kernel_size, dilation, border)
    values = _slot_reader(v, rows, cols, kernel_size, dilation, border)
    slots = [(a, b) for a in range(kernel_size[0]) for b in range(kernel_size[1])]
    scores = []
    for a, b in slots:
        s = (q * keys(a, b)).sum(-1) * scale  # (B, H, W, heads)
        r_off, c_off = rows.offset[:, a].to(device), cols.offset[:, b].to(device)
        if rel is not None:
            s = s + (q * rel[r_off][:, c_off]).sum(-1)  # rel[...]: (H, W, heads, d)
        if bias is not None:
            s = s + bias[:, r_off][:, :, c_off].permute(1, 2, 0)  # (H, W, heads)
        scores.append(s)
    logits = torch.stack(scores, dim=-1)  # (B, H, W, heads, K)
    if border != "zeros":
        valid = rows.valid[:, None, :, None] & cols.valid[None, :, None, :]  # (H, W, k_h, k_w)
        logits = logits.masked_fill(~valid.reshape(H, W, 1, len(slots)).to(device), float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # the query's own pixel is always a valid key: no empty rows
    out = probs[..., 0, None] * values(*slots[0])
    for n, (a, b) in enumerate(slots[1:], start=1):
        out = out + probs[..., n, None] * values(a, b)  # (B, H, W, heads, d_v)
    return out


def neighborhood_attention2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int | tuple[int, int],
    *,
    dilation: int | tuple[int, int] = 1,
    rel: Tensor | None = None,
    rel_hw: tuple[Tensor, Tensor] | None = None,
    bias: Tensor | None = None,
    border: str = "mask",
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Neighbourhood attention on heads-last tensors (the layout of NATTEN's `na2d`).

    Args:
        q: (B, H, W, heads, d) queries.
        k: (B, H, W, heads, d) keys.
        v: (B, H, W, heads, d_v) values.
        kernel_size: odd k or (k_h, k_w): the window.
        dilation: δ or (δ_h, δ_w): spacing of the window's keys.
        rel: optional (2k_h-1, 2k_w-1, heads, d) relative embeddings: adds q·rel[offset] (SASA).
        rel_hw: optional decomposed embeddings (rel_h, rel_w), (2k_h-1, heads, d) and (2k_w-1, heads, d):
            the table rel[δ_r, δ_c] = rel_h[δ_r] + rel_w[δ_c] (MViTv2's decomposed form; SASA's row and
            column halves are the case where they fill disjoint channels). The kernel then computes
            k_h + k_w dot products per query for it, not k_h·k_w. Not together with rel.
        bias: optional (heads, 2k_h-1, 2k_w-1) relative position bias (Swin / NATTEN).
        border: 'mask', 'zeros' or 'shift' (see `convattn.layers.geometry`).
        scale: multiplies q·k (default d^-0.5); rel and bias terms are not scaled.
        backend: 'auto' (CPU: the C++ kernel when it builds, else PyTorch; CUDA: flex_attention,
            or PyTorch for border 'zeros'), 'kernel', 'torch' or 'flex'.

    Returns:
        (B, H, W, heads, d_v).
    """
    return _neighborhood_attention(
        q, k, v, None, kernel_size, dilation, rel, rel_hw, bias, border, scale, backend
    )


def neighborhood_attention2d_qkv(
    qkv: Tensor,
    kernel_size: int | tuple[int, int],
    *,
    dilation: int | tuple[int, int] = 1,
    rel: Tensor | None = None,
    rel_hw: tuple[Tensor, Tensor] | None = None,
    bias: Tensor | None = None,
    border: str = "mask",
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """`neighborhood_attention2d` with q, k and v packed in one tensor, qkv (B, H, W, 3, heads, d) ->
    (B, H, W, heads, d): a 1×1 projection's channels-last output is such a tensor with no copy. The
    C++ kernel reads q, k and v in place and its backward writes one gradient for qkv, where separate
    views would have their gradients joined by a copy.

    Raises:
        ValueError: for a qkv that is not (B, H, W, 3, heads, d), and as `neighborhood_attention2d`.
    """
    check_tensor("qkv", qkv, 6)
    if qkv.shape[3] != 3:
        raise ValueError(f"qkv must be (B, H, W, 3, heads, d), got qkv.shape={tuple(qkv.shape)}")
    q, k, v = qkv.unbind(3)
    return _neighborhood_attention(
        q, k, v, qkv, kernel_size, dilation, rel, rel_hw, bias, border, scale, backend
    )


def _neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qkv: Tensor | None,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int],
    rel: Tensor | None,
    rel_hw: tuple[Tensor, Tensor] | None,
    bias: Tensor | None,
    border: str,
    scale: float | None,
    backend: str,
) -> Tensor:
    """Check, choose the path and run it; the kernel reads `qkv` in place when q, k, v are its views."""
    ks, dil = _check_inputs(q, k, v, kernel_size, dilation, rel, bias, border, rel_hw)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    B, H, W, heads, d = q.shape
    slots = ks[0] * ks[1]
    rel_macs = slots * d if rel is not None else (ks[0] + ks[1]) * d if rel_hw is not None else 0
    record(B * H * W * heads * (slots * (d + v.shape[-1]) + rel_macs))
    path = choose_backend(backend, q, "na2d", fused="flex", fused_auto=border != "zeros")
    if path == "kernel":  # a split table, (2k_h-1 + 2k_w-1, heads, d): the kernel adds its rows and columns
        table = rel if rel_hw is None else torch.cat(list(rel_hw))
        if qkv is not None:
            return na2d_packed_kernel(qkv, table, bias, ks, dil, border, scale)
        return na2d_kernel(q, k, v, table, bias, ks, dil, border, scale)
    if rel_hw is not None:
        rel = rel_hw[0][:, None] + rel_hw[1][None, :]  # (2k_h-1, 2k_w-1, heads, d)
    if path == "flex":
        return neighborhood_attention2d_flex(q, k, v, ks, dil, border, scale, rel, bias)
    return neighborhood_attention2d_torch(q, k, v, ks, dil, border, scale, rel, bias)
