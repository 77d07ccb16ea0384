"""Slow, loop-based references that the fast operators are tested against.

Each function follows its formula one query (or position) at a time with no masking tricks, no
folded heads and no broadcasting across rows, so it can be checked by reading. They are
differentiable, so the tests hold fast paths to them backward too. Imported only by tests and
benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.layers.pos_embed import sinusoidal_2d

__all__ = [
    "additive_attention",
    "dot_product_attention",
    "dropout_draw",
    "image_dwconv2d",
    "masked_softmax",
    "mhsa2d",
    "multi_head_attention",
    "nadaraya_watson",
    "neighborhood_attention2d",
    "pixel_dwconv2d",
    "position_mix",
    "sasa2d",
    "sinusoidal_1d",
    "window_attention2d",
]


def _softmax_row(row: Tensor, keep: list[bool]) -> Tensor:
    """Softmax of the kept entries of a 1-D row; zeros elsewhere and everywhere if none is kept."""
    out = torch.zeros_like(row)
    idx = [j for j, k in enumerate(keep) if k]
    if not idx:
        return out
    kept = row[idx]
    e = torch.exp(kept - kept.max())
    out[idx] = e / e.sum()
    return out


def masked_softmax(scores: Tensor, valid_lens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Row-by-row masked softmax of (B, ..., Q, K) scores; see `attention.masked_softmax`."""
    K = scores.shape[-1]
    full_mask = None if mask is None else mask.expand(scores.shape)
    out = torch.zeros_like(scores)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in scores.shape[:-1]]).reshape(
        -1, scores.dim() - 1
    ):
        pos = tuple(int(i) for i in index)
        b, q = pos[0], pos[-1]
        keep = [True] * K
        if valid_lens is not None:
            n = int(valid_lens[b]) if valid_lens.dim() == 1 else int(valid_lens[b, q])
            keep = [j < n for j in range(K)]
        if full_mask is not None:
            keep = [k and bool(full_mask[pos][j]) for j, k in enumerate(keep)]
        out[pos] = _softmax_row(scores[pos], keep)
    return out


def dot_product_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    valid_lens: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """softmax(q·k/√d) v for 3-D (B, T, d) inputs, one query at a time."""
    B, Q, d = queries.shape
    K = keys.shape[1]
    out = torch.zeros(B, Q, values.shape[-1], dtype=values.dtype)
    weights = torch.zeros(B, Q, K, dtype=queries.dtype)
    mask = None if attn_mask is None else attn_mask.expand(B, Q, K)
    for b in range(B):
        for i in range(Q):
            row = torch.stack([(queries[b, i] * keys[b, j]).sum() / math.sqrt(d) for j in range(K)])
            keep = [True] * K
            if valid_lens is not None:
                n = int(valid_lens[b]) if valid_lens.dim() == 1 else int(valid_lens[b, i])
                keep = [j < n for j in range(K)]
            if mask is not None and mask.dtype == torch.bool:
                keep = [k and bool(mask[b, i, j]) for j, k in enumerate(keep)]
            elif mask is not None:
                keep = [k and not bool(torch.isneginf(mask[b, i, j])) for j, k in enumerate(keep)]
                row = row + torch.where(torch.isneginf(mask[b, i]), 0.0, mask[b, i])
            if is_causal:
                keep = [k and j <= i for j, k in enumerate(keep)]
            w = _softmax_row(row, keep)
            weights[b, i] = w
            out[b, i] = sum((w[j] * values[b, j] for j in range(K)), torch.zeros_like(values[b, 0]))
    return out, weights


def additive_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    valid_lens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """score(q, k) = w_v · tanh(W_q q + W_k k), one (query, key) pair at a time."""
    B, Q, _ = queries.shape
    K = keys.shape[1]
    scores = torch.zeros(B, Q, K, dtype=queries.dtype)
    for b in range(B):
        for i in range(Q):
            for j in range(K):
                scores[b, i, j] = (w_v[0] * torch.tanh(w_q @ queries[b, i] + w_k @ keys[b, j])).sum()
    weights = masked_softmax(scores, valid_lens)
    return torch.einsum("bqk,bkd->bqd", weights, values), weights


def multi_head_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    num_heads: int,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    w_o: Tensor,
    biases: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    valid_lens: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """concat_h(attention(q W_q^h, k W_k^h, v W_v^h)) W_o with an explicit loop over heads."""
    b_q, b_k, b_v, b_o = biases if biases is not None else (0.0, 0.0, 0.0, 0.0)
    q, k, v = queries @ w_q.T + b_q, keys @ w_k.T + b_k, values @ w_v.T + b_v
    d, dv = q.shape[-1] // num_heads, v.shape[-1] // num_heads
    heads = []
    for h in range(num_heads):
        qs, ks, vs = (
            q[..., h * d : (h + 1) * d],
            k[..., h * d : (h + 1) * d],
            v[..., h * dv : (h + 1) * dv],
        )
        heads.append(dot_product_attention(qs, ks, vs, valid_lens, is_causal=is_causal)[0])
    return torch.cat(heads, dim=-1) @ w_o.T + b_o


def sinusoidal_1d(num_positions: int, dim: int, base: float = 10000.0) -> Tensor:
    """P[p, 2j] = sin(p / base^(2j/d)), P[p, 2j+1] = cos(p / base^(2j/d)), with `math`, in float64."""
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    for p in range(num_positions):
        for j in range(dim // 2):
            angle = p / base ** (2 * j / dim)
            table[p, 2 * j] = math.sin(angle)
            table[p, 2 * j + 1] = math.cos(angle)
    return table


def nadaraya_watson(queries: Tensor, keys: Tensor, values: Tensor, width: Tensor | float = 1.0) -> Tensor:
    """f(x) = Σ_i K(x - x_i) y_i / Σ_j K(x - x_j) with the Gaussian kernel K(u) = exp(-(u·w)²/2)."""
    out = []
    for i in range(queries.shape[0]):
        ks = keys[i] if keys.dim() == 2 else keys
        vs = values[i] if values.dim() == 2 else values
        kernel = [torch.exp(-(((queries[i] - x) * width) ** 2) / 2) for x in ks]
        total = sum(kernel, torch.zeros((), dtype=queries.dtype))
        out.append(
            sum(
                (kv * y for kv, y in zip(kernel, vs, strict=True)),
                torch.zeros((), dtype=queries.dtype),
            )
            / total
        )
    return torch.stack(out)


def mhsa2d(layer: Any, x: Tensor) -> Tensor:
    """`MultiHeadSelfAttention2d` from its formulas: an explicit (T, T) score matrix per head.

    Every score is written out for all (query, key) pixel pairs from the offsets δ = p_k - p_q, then
    softmax, pooling and the output projection; no features, no fused kernel, no row/column split.
    """
    B, C, H, W = x.shape
    if layer.encoding == "absolute":
        table = layer.abs_table
        if (H, W) != tuple(table.shape[1:]):
            table = F.interpolate(table[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        x = x + table
    elif layer.encoding == "absolute_sinusoidal":
        x = x + sinusoidal_2d(H, W, C, dtype=x.dtype)
    tokens = x.flatten(2).transpose(1, 2)  # (B, T, C)
    T = H * W
    pos = torch.tensor([[i, j] for i in range(H) for j in range(W)], dtype=x.dtype)  # (T, 2)
    delta = pos[None, :, :] - pos[:, None, :]  # (T, T, 2): [q, k] = p_k - p_q
    heads = []
    for h in range(layer.num_heads):
        scores = torch.zeros(B, T, T, dtype=x.dtype)
        if layer.content:
            d = layer.head_dim
            sl = slice(h * d, (h + 1) * d)
            q = tokens @ layer.W_q.weight[sl].T + (layer.W_q.bias[sl] if layer.W_q.bias is not None else 0)
            k = tokens @ layer.W_k.weight[sl].T + (layer.W_k.bias[sl] if layer.W_k.bias is not None else 0)
            scores = scores + q @ k.transpose(1, 2) / math.sqrt(d)
        if layer.encoding.startswith("relative"):
            (M_h, M_w) = layer.max_size
            ri = delta[..., 0].long().clamp(-(M_h - 1), M_h - 1) + M_h - 1  # (T, T)
            ci = delta[..., 1].long().clamp(-(M_w - 1), M_w - 1) + M_w - 1
            scores = (
                scores + layer.rel_row[ri] @ layer.rel_row_keys[h] + layer.rel_col[ci] @ layer.rel_col_keys[h]
            )
        if layer.encoding.startswith("quadratic"):
            if layer.encoding == "quadratic":
                inv_cov = layer.spreads[h] ** 2 * torch.eye(2, dtype=x.dtype)
            else:
                inv_cov = layer.spreads[h] @ layer.spreads[h].T
            diff = delta - layer.centres[h]  # (T, T, 2)
            scores = scores - 0.5 * torch.einsum("qka,ab,qkb->qk", diff, inv_cov, diff)
        probs = torch.softmax(scores, dim=-1)  # (B, T, T)
        if layer.W_v is None:
            values = tokens
        else:
            dv = layer.value_dim
            sl = slice(h * dv, (h + 1) * dv)
            values = tokens @ layer.W_v.weight[sl].T + (
                layer.W_v.bias[sl] if layer.W_v.bias is not None else 0
            )
        heads.append(probs @ values)  # (B, T, d_v)
    out = layer.W_o(torch.cat(heads, dim=-1))  # (B, T, C_out)
    return out.transpose(1, 2).reshape(B, -1, H, W)


def position_mix(z: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """y[b, i, j] = Σ_h Σ_k Σ_l rows[h, i, k] cols[h, j, l] z[b, k, l, h], one output pixel at a time.

    z (B, H, W, heads, C), rows (heads, H, H), cols (heads, W, W) -> (B, H, W, C).
    """
    B, H, W, _, C = z.shape
    out = z.new_zeros(B, H, W, C)
    for i in range(H):
        for j in range(W):
            weight = rows[:, i, :, None] * cols[:, j, None, :]  # (h, H, W): head h's weight on key (k, l)
            out[:, i, j] = torch.einsum("hkl,bklhc->bc", weight, z)
    return out


def dropout_draw(index: int, seed: int) -> int:
    """The 32-bit draw of element `index` in a dropout call with `seed`, in Python integers:
    mix(mix(lo32(index) ^ s0) ^ hi32(index) ^ s1), mix being lowbias32 (xor-shift-multiply) mod 2³²."""

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x846CA68B) % 2**32
        return x ^ (x >> 16)

    s0, s1 = seed % 2**32, (seed >> 32) % 2**32
    return mix(mix(index % 2**32 ^ s0) ^ (index >> 32) ^ s1)


def _window_1d(i: int, n: int, k: int, dilation: int, border: str) -> list[tuple[int | None, int]]:
    """(key position or None if outside, offset index) for each of the k slots of query i on an axis."""
    r = k // 2
    if border != "shift":
        slots = []
        for t in range(k):
            pos = i + (t - r) * dilation
            slots.append((pos if 0 <= pos < n else None, t - r + k - 1))
        return slots
    grid = list(range(i % dilation, n, dilation))  # the query's sub-grid
    ii, m = grid.index(i), len(grid)
    start = 0 if m <= k else min(max(ii - r, 0), m - k)
    return [
        (
            grid[start + t] if start + t < m else None,
            start + t - ii + k - 1,
        )  # None: the window is longer than the grid
        for t in range(k)
    ]


def neighborhood_attention2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    border: str = "mask",
    scale: float | None = None,
    rel: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Neighbourhood attention one query pixel and head at a time, from the definition."""
    B, H, W, heads, d = q.shape
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(B, H, W, heads, v.shape[-1], dtype=v.dtype)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                row_slots = _window_1d(i, H, kernel_size[0], dilation[0], border)
                col_slots = _window_1d(j, W, kernel_size[1], dilation[1], border)
                for h in range(heads):
                    scores, vals = [], []
                    for ra, oa in row_slots:
                        for cb, ob in col_slots:
                            inside = ra is not None and cb is not None
                            if not inside and border != "zeros":
                                continue  # masked: not a key at all
                            key = k[b, ra, cb, h] if inside else torch.zeros(d, dtype=q.dtype)
                            val = v[b, ra, cb, h] if inside else torch.zeros(v.shape[-1], dtype=v.dtype)
                            s = (q[b, i, j, h] * key).sum() * scale
                            if rel is not None:
                                s = s + (q[b, i, j, h] * rel[oa, ob, h]).sum()
                            if bias is not None:
                                s = s + bias[h, oa, ob]
                            scores.append(s)
                            vals.append(val)
                    p = torch.softmax(torch.stack(scores), dim=0)
                    out[b, i, j, h] = (p[:, None] * torch.stack(vals)).sum(0)
    return out


def sasa2d(layer: Any, x: Tensor, scale: float = 1.0) -> Tensor:
    """A `SASA` layer from Ramachandran et al. 2019, eq. 2-3, one output pixel and head at a time:

        y_ij = Σ_{ab ∈ N_k(i,j)} softmax_ab(scale · q_ij·k_ab + q_ij·r_{a-i,b-j}) v_ab,

    with q, k, v = W_Q x, W_K x, W_V x of each pixel (the layer's 1×1 weights), dot products summed over
    a head's channels, and r_{δr,δc} = [row(δr), col(δc)] read from the layer's embeddings by offset
    (in window steps, i.e. offset / dilation), split into heads like the keys. The paper has no scale:
    scale = 1. N_k follows the layer's border mode; then stride×stride average pooling of each block.
    """
    B, _, H, W = x.shape
    out_dim, heads, d, k = layer.q.out_channels, layer.heads, layer.d, layer.k
    pixels = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    q = pixels @ layer.q.weight[:, :, 0, 0].T  # (B, H, W, out)
    keys = pixels @ layer.kv.weight[:out_dim, :, 0, 0].T
    values = pixels @ layer.kv.weight[out_dim:, :, 0, 0].T
    centre = (layer.rel_row.shape[0] - 1) // 2  # the row of offset 0
    y = torch.zeros(B, out_dim, H, W, dtype=x.dtype)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                rows = _window_1d(i, H, k, layer.dilation, layer.border)
                cols = _window_1d(j, W, k, layer.dilation, layer.border)
                for h in range(heads):
                    sl = slice(h * d, (h + 1) * d)
                    scores, vals = [], []
                    for a, oa in rows:
                        for c, oc in cols:
                            inside = a is not None and c is not None
                            if not inside and layer.border != "zeros":
                                continue  # not a pixel: not a key
                            key = keys[b, a, c, sl] if inside else torch.zeros(d, dtype=x.dtype)
                            val = values[b, a, c, sl] if inside else torch.zeros(d, dtype=x.dtype)
                            dr, dc = oa - (k - 1), oc - (k - 1)  # the key's offset from the query
                            r = torch.cat([layer.rel_row[centre + dr], layer.rel_col[centre + dc]])[sl]
                            qij = q[b, i, j, sl]
                            scores.append(scale * (qij * key).sum() + (qij * r).sum())
                            vals.append(val)
                    p = torch.softmax(torch.stack(scores), dim=0)
                    y[b, sl, i, j] = (p[:, None] * torch.stack(vals)).sum(0)
    s = layer.stride
    pooled = torch.zeros(B, out_dim, -(-H // s), -(-W // s), dtype=x.dtype)
    for i in range(pooled.shape[2]):
        for j in range(pooled.shape[3]):
            pooled[:, :, i, j] = y[:, :, i * s : (i + 1) * s, j * s : (j + 1) * s].mean((2, 3))
    return pooled


def window_attention2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: tuple[int, int],
    shift: tuple[int, int] = (0, 0),
    bias: Tensor | None = None,
) -> Tensor:
    """Swin window attention from its definition.

    Pixel i belongs to window floor((i - shift) / w) on each axis (the pixels a shifted roll would
    wrap form their own window), and attends the pixels of its window.
    """
    B, H, W, heads, d = q.shape
    out = torch.zeros(B, H, W, heads, v.shape[-1], dtype=v.dtype)
    win = lambda i, axis: (i - shift[axis]) // window[axis]  # noqa: E731
    for b in range(B):
        for i in range(H):
            for j in range(W):
                keys = [
                    (a, c)
                    for a in range(H)
                    for c in range(W)
                    if win(a, 0) == win(i, 0) and win(c, 1) == win(j, 1)
                ]
                for h in range(heads):
                    scores = []
                    for a, c in keys:
                        s = (q[b, i, j, h] * k[b, a, c, h]).sum() / math.sqrt(d)
                        if bias is not None:
                            s = s + bias[h, a - i + window[0] - 1, c - j + window[1] - 1]
                        scores.append(s)
                    p = torch.softmax(torch.stack(scores), dim=0)
                    out[b, i, j, h] = sum(
                        (p[n] * v[b, a, c, h] for n, (a, c) in enumerate(keys)),
                        torch.zeros(v.shape[-1], dtype=v.dtype),
                    )
    return out


def pixel_dwconv2d(x: Tensor, kernels: Tensor, dilation: int = 1) -> Tensor:
    """out[b, c, i, j] = Σ_taps kernels[b, g(c), tap, i, j] · x[b, c, i + δ_r, j + δ_c], zero outside."""
    B, C, H, W = x.shape
    G, K = kernels.shape[1], kernels.shape[2]
    k = round(K**0.5)
    r = k // 2
    out = torch.zeros_like(x)
    for b in range(B):
        for c in range(C):
            g = c // (C // G)
            for i in range(H):
                for j in range(W):
                    acc = torch.zeros((), dtype=x.dtype)
                    for t in range(K):
                        a, bb = i + (t // k - r) * dilation, j + (t % k - r) * dilation
                        if 0 <= a < H and 0 <= bb < W:
                            acc = acc + kernels[b, g, t, i, j] * x[b, c, a, bb]
                    out[b, c, i, j] = acc
    return out


def image_dwconv2d(x: Tensor, kernels: Tensor, bias: Tensor | None = None, dilation: int = 1) -> Tensor:
    """A per-image kernel: a per-pixel kernel, the same at every pixel, one group per channel."""
    B, C, H, W = x.shape
    per_pixel = kernels.reshape(B, C, -1, 1, 1).expand(B, C, kernels.shape[-2] * kernels.shape[-1], H, W)
    out = pixel_dwconv2d(x, per_pixel, dilation)
    return out if bias is None else out + bias[None, :, None, None]
