"""Attention scoring and pooling: masked softmax, additive, scaled dot-product and multi-head attention.

Dive into Deep Learning, ch. 11 (attention mechanisms and Transformers). Every operator is a pure
function on tensors plus a thin `nn.Module` that owns the weights; the loop-based references the tests
hold them to live in `convattn.layers.reference`.

Layout: sequences are batch-first, `(B, T, features)`. Masks follow `F.scaled_dot_product_attention`:
a boolean `attn_mask` is True where a query may attend a key, a float one is added to the scores.
A query that may attend no key at all gets an all-zero weight row (and a zero output), never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.utils.checks import (
    check_heads_divide,
    check_positive_int,
    check_probability,
    check_tensor,
    check_valid_lens,
)

__all__ = [
    "AdditiveAttention",
    "DotProductAttention",
    "MultiHeadAttention",
    "SelfAttention",
    "additive_attention",
    "attend_heads",
    "dot_product_attention",
    "masked_softmax",
    "merge_heads",
    "multi_head_attention",
    "split_heads",
]

_HALF = (torch.float16, torch.bfloat16)


def _length_mask(valid_lens: Tensor, scores: Tensor) -> Tensor:
    """Boolean keep-mask broadcastable to `scores` (B, ..., Q, K) from (B,) or (B, Q) lengths."""
    B, Q, K = scores.shape[0], scores.shape[-2], scores.shape[-1]
    check_valid_lens(valid_lens, B, Q, K)
    middle = (1,) * (scores.dim() - 3)
    if valid_lens.dim() == 1:
        lens = valid_lens.reshape(B, *middle, 1, 1)  # (B, 1.., 1, 1): same for every query
    else:
        lens = valid_lens.reshape(B, *middle, Q, 1)  # (B, 1.., Q, 1): one length per query
    return torch.arange(K, device=scores.device) < lens.to(scores.device)  # (B, 1.., Q|1, K)


def masked_softmax(scores: Tensor, valid_lens: Tensor | None = None, *, mask: Tensor | None = None) -> Tensor:
    """Softmax over the last axis that ignores masked keys (D2L eq. 11.3.x, `masked_softmax`).

    Args:
        scores: (B, ..., Q, K) attention scores.
        valid_lens: None, (B,) keys kept per sequence, or (B, Q) keys kept per query; integers in
            [0, K]. Key j is kept for a query when j < its valid length.
        mask: optional boolean tensor broadcastable to `scores`, True where a key is kept.

    Returns:
        Weights of the shape and dtype of `scores`. Masked entries are exactly 0; a query with no kept
        key gets an all-zero row. float16/bfloat16 scores are normalised in float32, so large scores
        neither overflow nor lose the winner.
    """
    check_tensor("scores", scores)
    if scores.dim() < (3 if valid_lens is not None else 1):
        raise ValueError(
            f"scores must be (B, ..., Q, K) when valid_lens is given, got shape {tuple(scores.shape)}"
        )
    keep = None if valid_lens is None else _length_mask(valid_lens, scores)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got {getattr(mask, 'dtype', mask)!r}")
        keep = mask if keep is None else keep & mask
    work = scores.float() if scores.dtype in _HALF else scores
    if keep is None:
        return F.softmax(work, dim=-1).to(scores.dtype)
    # The lowest finite value (not -inf) keeps fully masked rows finite; the product zeroes them.
    filled = work.masked_fill(~keep, torch.finfo(work.dtype).min)
    return (F.softmax(filled, dim=-1) * keep).to(scores.dtype)


def _check_qkv(queries: Tensor, keys: Tensor, values: Tensor) -> None:
    check_tensor("queries", queries)
    check_tensor("keys", keys)
    check_tensor("values", values)
    if queries.dim() < 2 or keys.dim() != queries.dim() or values.dim() != queries.dim():
        raise ValueError(
            "queries, keys and values must be (..., T, d) with the same number of dims, got "
            f"queries.shape={tuple(queries.shape)}, keys.shape={tuple(keys.shape)}, "
            f"values.shape={tuple(values.shape)}"
        )
    if keys.shape[-2] != values.shape[-2] or keys.shape[:-2] != values.shape[:-2]:
        raise ValueError(
            "keys and values must agree in every dim but the last, got "
            f"keys.shape={tuple(keys.shape)}, values.shape={tuple(values.shape)}"
        )
    if queries.shape[:-2] != keys.shape[:-2]:
        raise ValueError(
            "queries and keys must share their batch dims, got "
            f"queries.shape={tuple(queries.shape)}, keys.shape={tuple(keys.shape)}"
        )


def _keep_mask(scores: Tensor, attn_mask: Tensor | None, is_causal: bool) -> tuple[Tensor, Tensor | None]:
    """Fold a float/bool `attn_mask` and causality into (scores + finite bias, boolean keep-mask)."""
    keep = None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a tensor, got {type(attn_mask).__name__}")
        try:
            torch.broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"attn_mask.shape={tuple(attn_mask.shape)} does not broadcast to the scores "
                f"(..., Q, K)={tuple(scores.shape)}"
            ) from None
        if attn_mask.dtype == torch.bool:
            keep = attn_mask
        elif attn_mask.is_floating_point():
            blocked = torch.isneginf(attn_mask)
            scores = scores + attn_mask.masked_fill(blocked, 0.0).to(scores.dtype)
            keep = ~blocked
        else:
            raise TypeError(f"attn_mask must be bool or floating, got attn_mask.dtype={attn_mask.dtype}")
    if is_causal:
        Q, K = scores.shape[-2:]
        causal = torch.ones(Q, K, dtype=torch.bool, device=scores.device).tril()  # (Q, K)
        keep = causal if keep is None else keep & causal
    return scores, keep


def dot_product_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    valid_lens: Tensor | None = None,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, softmax(q kᵀ / √d) v (D2L eq. 11.3.4; Vaswani et al. 2017).

    Args:
        queries: (B, ..., Q, d).
        keys: (B, ..., K, d).
        values: (B, ..., K, d_v).
        valid_lens: None, (B,) or (B, Q) numbers of keys each query may attend (see `masked_softmax`).
        attn_mask: bool (True = attend) or float (added to the scores) tensor broadcastable to
            (B, ..., Q, K), as in `F.scaled_dot_product_attention`.
        is_causal: query i attends keys j <= i only.
        dropout_p: dropout on the attention weights (applied whenever > 0: pass 0 in eval mode).
        scale: score scale, 1/√d by default.

    Returns:
        (output (B, ..., Q, d_v), attention weights (B, ..., Q, K) before dropout).
    """
    _check_qkv(queries, keys, values)
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"queries and keys must have the same width d, got {queries.shape[-1]=} and {keys.shape[-1]=}"
        )
    dropout_p = check_probability("dropout_p", dropout_p)
    scale = 1.0 / math.sqrt(queries.shape[-1]) if scale is None else scale
    scores = queries @ keys.transpose(-2, -1) * scale  # (B, ..., Q, K)
    scores, keep = _keep_mask(scores, attn_mask, is_causal)
    weights = masked_softmax(scores, valid_lens, mask=keep)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ values, weights  # (B, ..., Q, d_v), (B, ..., Q, K)


def additive_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    valid_lens: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Additive attention: score(q, k) = w_vᵀ tanh(W_q q + W_k k) (D2L eq. 11.3.3; Bahdanau et al.).

    Args:
        queries: (B, Q, d_q).
        keys: (B, K, d_k).
        values: (B, K, d_v).
        w_q: (h, d_q) query projection.
        w_k: (h, d_k) key projection.
        w_v: (1, h) scoring vector.
        valid_lens: None, (B,) or (B, Q), as in `masked_softmax`.
        dropout_p: dropout on the attention weights.

    Returns:
        (output (B, Q, d_v), attention weights (B, Q, K) before dropout).
    """
    _check_qkv(queries, keys, values)
    if queries.dim() != 3:
        raise ValueError(f"additive attention takes (B, T, d) inputs, got {queries.dim()} dims")
    for name, w, cols in (("w_q", w_q, queries.shape[-1]), ("w_k", w_k, keys.shape[-1])):
        check_tensor(name, w, 2)
        if w.shape[1] != cols:
            raise ValueError(f"{name} must be (h, {cols}), got {name}.shape={tuple(w.shape)}")
    check_tensor("w_v", w_v, 2)
    if w_q.shape[0] != w_k.shape[0] or tuple(w_v.shape) != (1, w_q.shape[0]):
        raise ValueError(
            f"w_q (h, d_q), w_k (h, d_k) and w_v (1, h) disagree on h: {tuple(w_q.shape)=}, "
            f"{tuple(w_k.shape)=}, {tuple(w_v.shape)=}"
        )
    dropout_p = check_probability("dropout_p", dropout_p)
    features = F.linear(queries, w_q)[:, :, None] + F.linear(keys, w_k)[:, None]  # (B, Q, K, h)
    scores = F.linear(torch.tanh(features), w_v).squeeze(-1)  # (B, Q, K)
    weights = masked_softmax(scores, valid_lens)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ values, weights  # (B, Q, d_v), (B, Q, K)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """Fold heads into the batch: (B, T, h·d) -> (B·h, T, d) (D2L `transpose_qkv`)."""
    B, T, D = x.shape
    x = x.reshape(B, T, num_heads, D // num_heads)  # (B, T, h, d)
    return x.transpose(1, 2).reshape(B * num_heads, T, D // num_heads)  # (B·h, T, d)


def merge_heads(x: Tensor, num_heads: int) -> Tensor:
    """Undo `split_heads`: (B·h, T, d) -> (B, T, h·d) (D2L `transpose_output`)."""
    BH, T, d = x.shape
    x = x.reshape(BH // num_heads, num_heads, T, d)  # (B, h, T, d)
    return x.transpose(1, 2).reshape(BH // num_heads, T, num_heads * d)  # (B, T, h·d)


def _fold_mask(attn_mask: Tensor | None, B: int, h: int, Q: int, K: int) -> Tensor | None:
    """A mask broadcastable to (B, h, Q, K), reshaped for heads folded into the batch."""
    if attn_mask is None or attn_mask.dim() <= 2:
        return attn_mask  # (Q, K) broadcasts over (B·h, Q, K) as it is
    try:
        full = attn_mask.expand(B, h, Q, K)
    except RuntimeError:
        raise ValueError(
            f"attn_mask.shape={tuple(attn_mask.shape)} does not broadcast to (B, heads, Q, K)={(B, h, Q, K)}"
        ) from None
    return full.reshape(B * h, Q, K)  # (B·h, Q, K)


def attend_heads(
    queries: Tensor,
    k_heads: Tensor,
    v_heads: Tensor,
    num_heads: int,
    *,
    w_q: Tensor,
    w_o: Tensor,
    b_q: Tensor | None = None,
    b_o: Tensor | None = None,
    valid_lens: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Multi-head attention over keys/values already projected and split into heads.

    The second half of `multi_head_attention`, kept separate so that a decoder can cache the
    projected keys and values of past steps (incremental decoding) and of the encoder output.

    Args:
        queries: (B, Q, d_q) raw queries.
        k_heads: (B·h, K, d) projected keys with heads folded into the batch.
        v_heads: (B·h, K, d_v) projected values, likewise.
        num_heads: h.
        w_q, b_q: query projection (h·d, d_q) and bias.
        w_o, b_o: output projection (d_out, h·d_v) and bias.
        valid_lens, attn_mask, is_causal, dropout_p: as in `dot_product_attention`; `attn_mask`
            broadcasts to (B, h, Q, K).

    Returns:
        (output (B, Q, d_out), weights (B, h, Q, K)).
    """
    B, Q = queries.shape[:2]
    K = k_heads.shape[1]
    q_heads = split_heads(F.linear(queries, w_q, b_q), num_heads)  # (B·h, Q, d)
    if valid_lens is not None:
        check_valid_lens(valid_lens, B, Q, K)
        valid_lens = valid_lens.repeat_interleave(num_heads, dim=0)  # (B·h,) or (B·h, Q)
    out, weights = dot_product_attention(
        q_heads,
        k_heads,
        v_heads,
        valid_lens,
        attn_mask=_fold_mask(attn_mask, B, num_heads, Q, K),
        is_causal=is_causal,
        dropout_p=dropout_p,
    )
    out = F.linear(merge_heads(out, num_heads), w_o, b_o)  # (B, Q, d_out)
    return out, weights.reshape(B, num_heads, Q, K)  # (B, h, Q, K)


def multi_head_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    num_heads: int,
    *,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    w_o: Tensor,
    b_q: Tensor | None = None,
    b_k: Tensor | None = None,
    b_v: Tensor | None = None,
    b_o: Tensor | None = None,
    valid_lens: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Multi-head attention with the heads folded into the batch (D2L 11.5; Vaswani et al. eq. 4-5).

    head_i = attention(q W_q^(i), k W_k^(i), v W_v^(i)); output = concat_i(head_i) W_o.

    Args:
        queries: (B, Q, d_q).
        keys: (B, K, d_k).
        values: (B, K, d_v).
        num_heads: h; it must divide the projected width h·d = w_q.shape[0].
        w_q, w_k, w_v: (h·d, d_q), (h·d, d_k), (h·d_v', d_v) projections; b_*: their biases.
        w_o, b_o: (d_out, h·d_v') output projection and bias.
        valid_lens, attn_mask, is_causal, dropout_p: as in `attend_heads`.

    Returns:
        (output (B, Q, d_out), attention weights (B, h, Q, K) before dropout).
    """
    _check_qkv(queries, keys, values)
    if queries.dim() != 3:
        raise ValueError(f"multi-head attention takes (B, T, d) inputs, got {queries.dim()} dims")
    for name, w, cols in (
        ("w_q", w_q, queries.shape[-1]),
        ("w_k", w_k, keys.shape[-1]),
        ("w_v", w_v, values.shape[-1]),
    ):
        check_tensor(name, w, 2)
        if w.shape[1] != cols:
            raise ValueError(f"{name} must have {cols} columns, got {name}.shape={tuple(w.shape)}")
    check_heads_divide(w_q.shape[0], num_heads)
    check_heads_divide(w_v.shape[0], num_heads)
    if w_q.shape[0] != w_k.shape[0]:
        raise ValueError(f"w_q and w_k must project to one width, got {w_q.shape[0]=}, {w_k.shape[0]=}")
    k_heads = split_heads(F.linear(keys, w_k, b_k), num_heads)  # (B·h, K, d)
    v_heads = split_heads(F.linear(values, w_v, b_v), num_heads)  # (B·h, K, d_v')
    return attend_heads(
        queries,
        k_heads,
        v_heads,
        num_heads,
        w_q=w_q,
        b_q=b_q,
        w_o=w_o,
        b_o=b_o,
        valid_lens=valid_lens,
        attn_mask=attn_mask,
        is_causal=is_causal,
        dropout_p=dropout_p,
    )


class DotProductAttention(nn.Module):
    """Scaled dot-product attention with dropout on the weights; keeps the last weights for plots."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = check_probability("dropout", dropout)
        self.attention_weights: Tensor | None = None

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        valid_lens: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        out, weights = dot_product_attention(
            queries,
            keys,
            values,
            valid_lens,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        self.attention_weights = weights.detach()
        return out


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention with bias-free W_q, W_k and w_v, as in D2L 11.3.2."""

    def __init__(self, key_size: int, query_size: int, num_hiddens: int, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("key_size", key_size), ("query_size", query_size)):
            check_positive_int(name, value)
        check_positive_int("num_hiddens", num_hiddens)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = check_probability("dropout", dropout)
        self.attention_weights: Tensor | None = None

    def forward(
        self, queries: Tensor, keys: Tensor, values: Tensor, valid_lens: Tensor | None = None
    ) -> Tensor:
        out, weights = additive_attention(
            queries,
            keys,
            values,
            self.W_q.weight,
            self.W_k.weight,
            self.w_v.weight,
            valid_lens,
            dropout_p=self.dropout if self.training else 0.0,
        )
        self.attention_weights = weights.detach()
        return out


class MultiHeadAttention(nn.Module):
    """Multi-head attention (D2L 11.5): h parallel scaled dot-product heads, then W_o.

    Args:
        num_hiddens: projected width h·d, also the output width.
        num_heads: h; must divide `num_hiddens`.
        query_dim, key_dim, value_dim: input widths (default `num_hiddens`).
        dropout: dropout on the attention weights.
        bias: biases on the four projections (D2L uses none; `nn.MultiheadAttention` uses them).
    """

    def __init__(
        self,
        num_hiddens: int,
        num_heads: int,
        *,
        query_dim: int | None = None,
        key_dim: int | None = None,
        value_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_heads_divide(num_hiddens, num_heads)
        dims = {"query_dim": query_dim, "key_dim": key_dim, "value_dim": value_dim}
        q_in, k_in, v_in = (
            num_hiddens if d is None else check_positive_int(name, d) for name, d in dims.items()
        )
        self.num_heads = num_heads
        self.dropout = check_probability("dropout", dropout)
        self.W_q = nn.Linear(q_in, num_hiddens, bias=bias)
        self.W_k = nn.Linear(k_in, num_hiddens, bias=bias)
        self.W_v = nn.Linear(v_in, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.attention_weights: Tensor | None = None

    def project_kv(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Project keys (B, K, d_k) and values (B, K, d_v) into heads: two (B·h, K, d) tensors."""
        check_tensor("keys", keys, 3)
        check_tensor("values", values, 3)
        k_heads = split_heads(self.W_k(keys), self.num_heads)  # (B·h, K, d)
        v_heads = split_heads(self.W_v(values), self.num_heads)  # (B·h, K, d)
        return k_heads, v_heads

    def attend(
        self,
        queries: Tensor,
        k_heads: Tensor,
        v_heads: Tensor,
        valid_lens: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Attend from raw queries (B, Q, d_q) to keys/values from `project_kv`: (B, Q, d_out)."""
        check_tensor("queries", queries, 3)
        out, weights = attend_heads(
            queries,
            k_heads,
            v_heads,
            self.num_heads,
            w_q=self.W_q.weight,
            b_q=self.W_q.bias,
            w_o=self.W_o.weight,
            b_o=self.W_o.bias,
            valid_lens=valid_lens,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        self.attention_weights = weights.detach()  # (B, h, Q, K)
        return out

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        valid_lens: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        for name, x, lin in (
            ("queries", queries, self.W_q),
            ("keys", keys, self.W_k),
            ("values", values, self.W_v),
        ):
            if isinstance(x, Tensor) and x.shape[-1:] != (lin.in_features,):
                raise ValueError(
                    f"{name} must end in width {lin.in_features} for this layer, "
                    f"got {name}.shape={tuple(x.shape)}"
                )
        out, weights = multi_head_attention(
            queries,
            keys,
            values,
            self.num_heads,
            w_q=self.W_q.weight,
            w_k=self.W_k.weight,
            w_v=self.W_v.weight,
            w_o=self.W_o.weight,
            b_q=self.W_q.bias,
            b_k=self.W_k.bias,
            b_v=self.W_v.bias,
            b_o=self.W_o.bias,
            valid_lens=valid_lens,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        self.attention_weights = weights.detach()  # (B, h, Q, K)
        return out

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy an `nn.MultiheadAttention` into a new layer computing the same function.

        Raises:
            ValueError: for options with no counterpart here (bias_k/bias_v, add_zero_attn).
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention")
        has_bias = mha.in_proj_bias is not None
        out = cls(
            mha.embed_dim,
            mha.num_heads,
            key_dim=mha.kdim,
            value_dim=mha.vdim,
            dropout=mha.dropout,
            bias=has_bias,
        )
        E = mha.embed_dim
        if mha.in_proj_weight is not None:
            w_q, w_k, w_v = mha.in_proj_weight.split(E)  # three (E, E) blocks
        else:
            w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        new = {"W_q.weight": w_q, "W_k.weight": w_k, "W_v.weight": w_v}
        new["W_o.weight"] = mha.out_proj.weight
        if has_bias:
            b_q, b_k, b_v = mha.in_proj_bias.split(E)
            new |= {"W_q.bias": b_q, "W_k.bias": b_k, "W_v.bias": b_v}
            new["W_o.bias"] = mha.out_proj.bias
        mine = out.state_dict()
        if set(new) != set(mine) or any(new[k].shape != mine[k].shape for k in mine):
            raise ValueError(f"weight layout mismatch: {sorted(new)} vs {sorted(mine)}")
        ref = mha.out_proj.weight
        out = out.to(dtype=ref.dtype, device=ref.device)  # before loading: no rounding on the way
        out.load_state_dict({k: v.detach().clone() for k, v in new.items()})
        return out


class SelfAttention(nn.Module):
    """Multi-head self-attention over a sequence: queries, keys and values are all x (D2L 11.6)."""

    def __init__(self, num_hiddens: int, num_heads: int, *, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=bias)

    def forward(self, x: Tensor, valid_lens: Tensor | None = None, *, is_causal: bool = False) -> Tensor:
        """x: (B, T, num_hiddens) -> (B, T, num_hiddens)."""
        return self.attention(x, x, x, valid_lens, is_causal=is_causal)
