"""Attention scoring and pooling: masked softmax, additive and scaled dot-product attention.

Dive into Deep Learning, ch. 11 (attention mechanisms and Transformers); multi-head attention, built
on `dot_product_attention`, is in `convattn.layers.multihead`. Every operator is a pure
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

from convattn.utils.checks import check_positive_int, check_probability, check_tensor, check_valid_lens

__all__ = [
    "AdditiveAttention",
    "DotProductAttention",
    "additive_attention",
    "check_qkv",
    "dot_product_attention",
    "masked_softmax",
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


def check_qkv(queries: Tensor, keys: Tensor, values: Tensor) -> None:
    """Raise unless queries (..., Q, d), keys (..., K, d) and values (..., K, d_v) fit together."""
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
    check_qkv(queries, keys, values)
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
    check_qkv(queries, keys, values)
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
