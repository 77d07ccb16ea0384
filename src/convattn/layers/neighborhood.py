"""2-D neighbourhood attention: each pixel attends to a k_h×k_w window of keys around it.

Ramachandran et al. 2019 (SASA) and Hassani et al. 2023 (NATTEN): for a query pixel p with window N(p),
    out_p = Σ_{n ∈ N(p)} softmax_n(scale · q_p·k_n + q_p·rel[n - p] + bias[n - p]) v_n,
computed per head on heads-last tensors (B, H, W, heads, d), the layout of NATTEN's `na2d`.

Windows are products of one window per axis. A window larger than the map holds the pixels that
exist; a dilation at least as long as an axis (of more than one pixel) is an error, since every window
would then hold its query alone. On an axis of length n with kernel k, dilation δ and
r = k // 2, query i uses the keys below; `border` decides what happens near the edges:
    'mask'   i + (t - r)·δ, t = 0..k-1; keys outside the image are left out of the softmax (default);
    'zeros'  the same keys; keys outside the image are zero vectors that still take part (score from
             rel/bias only, value 0), as the popular SASA port's zero padding does;
    'shift'  the window slides to stay inside the image, so every query sees k real keys (NATTEN).
             Pixels split into δ interleaved sub-grids; on a sub-grid of m pixels with index ii the
             window starts at clamp(ii - r, 0, m - k). If m < k the window holds all m pixels.
`rel` and `bias` are indexed by the key's offset from the query in (dilated) steps, from -(k-1) to
k-1, so tables of (2k_h-1)×(2k_w-1) entries serve every border mode.

Every border mode reduces to per-axis tables (key index, validity, offset index for each query and
slot), built here once; the C++ kernel and the PyTorch path both run from them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, cast

import torch
from torch import Tensor

from convattn.layers._macs import record
from convattn.layers.kernels import load_kernel
from convattn.utils.checks import check_pair, check_tensor

__all__ = [
    "BORDERS",
    "AxisWindows",
    "axis_windows",
    "grid_windows",
    "neighborhood_attention2d",
    "neighborhood_attention2d_torch",
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


class _KernelNA2d(torch.autograd.Function):
    """The C++ kernel with its hand-written backward (probabilities saved, no k² copies)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rel: Tensor,
        bias: Tensor,
        kernel_size: tuple[int, int],
        dilation: tuple[int, int],
        border: str,
        scale: float,
    ) -> Tensor:
        out, probs = _kernel_forward(q, k, v, rel, bias, kernel_size, dilation, border, scale, save=True)
        ctx.save_for_backward(q, k, v, rel, bias, probs)
        ctx.geometry = (kernel_size, dilation, border, scale)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        ext = _kernel()
        q, k, v, rel, bias, probs = ctx.saved_tensors
        kernel_size, dilation, border, scale = ctx.geometry
        H, W = q.shape[1:3]
        rows, cols = grid_windows(H, W, kernel_size, dilation, border)
        want_rel = bool(rel.numel()) and ctx.needs_input_grad[3]
        want_bias = bool(bias.numel()) and ctx.needs_input_grad[4]
        dq, dk, dv, drel, dbias = ext.backward(
            dout.contiguous(),
            q,
            k,
            v,
            rel,
            bias,
            probs,
            *rows.tensors(),
            *cols.tensors(),
            inverse_windows(H, kernel_size[0], dilation[0], border),
            inverse_windows(W, kernel_size[1], dilation[1], border),
            scale,
            want_rel,
            want_bias,
            border != "shift",
            dilation[1],
        )
        return dq, dk, dv, drel if want_rel else None, dbias if want_bias else None, None, None, None, None


def _kernel_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    bias: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    border: str,
    scale: float,
    *,
    save: bool,
) -> tuple[Tensor, Tensor]:
    """(output, probabilities); with save=False the probabilities are not written (inference)."""
    rows, cols = grid_windows(q.shape[1], q.shape[2], kernel_size, dilation, border)
    zeros, fixed = border == "zeros", border != "shift"
    out, probs = _kernel().forward(
        q, k, v, rel, bias, *rows.tensors(), *cols.tensors(), scale, zeros, fixed, dilation[1], save
    )
    return out, probs


def _kernel() -> Any:
    ext = load_kernel("na2d")
    if ext is None:
        raise RuntimeError("the na2d C++ kernel is not available")
    return ext


def grid_windows(
    height: int, width: int, kernel_size: tuple[int, int], dilation: tuple[int, int], border: str
) -> tuple[AxisWindows, AxisWindows]:
    """The row and column windows of an height×width map (each cached)."""
    return (
        axis_windows(height, kernel_size[0], dilation[0], border),
        axis_windows(width, kernel_size[1], dilation[1], border),
    )


@cache
def _compiled_flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _membership(w: AxisWindows, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(n, n) per axis: key in the query's window; its slot; its rel/bias offset index (0 outside)."""
    inside = torch.zeros(n, n, dtype=torch.bool)
    slot = torch.zeros(n, n, dtype=torch.long)
    offset = torch.zeros(n, n, dtype=torch.long)
    for i, t in w.valid.nonzero().tolist():
        key = int(w.index[i, t])
        inside[i, key], slot[i, key], offset[i, key] = True, t, w.offset[i, t]
    return inside.to(device), slot.to(device), offset.to(device)


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
    in_r, slot_r, off_r = _membership(rows, H, q.device)
    in_c, slot_c, off_c = _membership(cols, W, q.device)
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
    ks, dil = check_pair("kernel_size", kernel_size), check_pair("dilation", dilation)
    if ks[0] % 2 == 0 or ks[1] % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (the window is centred on the query), got kernel_size={ks}"
        )
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
        bias: optional (heads, 2k_h-1, 2k_w-1) relative position bias (Swin / NATTEN).
        border: 'mask', 'zeros' or 'shift' (see the module docstring).
        scale: multiplies q·k (default d^-0.5); rel and bias terms are not scaled.
        backend: 'auto' (CPU: the C++ kernel when it builds, else PyTorch; CUDA: flex_attention,
            or PyTorch for border 'zeros'), 'kernel', 'torch' or 'flex'.

    Returns:
        (B, H, W, heads, d_v).
    """
    ks, dil = _check_inputs(q, k, v, kernel_size, dilation, rel, bias, border)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    B, H, W, heads, d = q.shape
    slots = ks[0] * ks[1]
    record(B * H * W * heads * slots * (d + v.shape[-1] + (d if rel is not None else 0)))
    if backend not in ("auto", "kernel", "torch", "flex"):
        raise ValueError(f"backend must be 'auto', 'kernel', 'torch' or 'flex', got backend={backend!r}")
    if backend == "flex" or (backend == "auto" and q.device.type == "cuda" and border != "zeros"):
        return neighborhood_attention2d_flex(q, k, v, ks, dil, border, scale, rel, bias)
    use_kernel = backend == "kernel" or (backend == "auto" and q.device.type == "cpu")
    if use_kernel and q.device.type == "cpu" and load_kernel("na2d") is not None:
        empty = q.new_empty(0)
        args = (
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            empty if rel is None else rel.contiguous(),
            empty if bias is None else bias.contiguous(),
            ks,
            dil,
            border,
            scale,
        )
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, rel, bias)):
            return cast(Tensor, _KernelNA2d.apply(*args))
        return _kernel_forward(*args, save=False)[0]  # inference: no probabilities kept
    if backend == "kernel":
        raise RuntimeError("backend='kernel' needs a CPU tensor and a built C++ kernel")
    return neighborhood_attention2d_torch(q, k, v, ks, dil, border, scale, rel, bias)
