"""Multi-head attention (D2L 11.5; Vaswani et al. 2017, eq. 4-5) with the heads folded into the batch.

head_i = attention(q W_q^(i), k W_k^(i), v W_v^(i)); output = concat_i(head_i) W_o, each head a
`dot_product_attention` on (B·h, T, d) tensors. `attend_heads` is the second half alone (keys and
values already projected), so that a decoder can cache them between steps.

Layout: batch-first sequences (B, T, features); masks as in `convattn.layers.attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.attention import check_qkv, dot_product_attention
from convattn.utils.checks import (
    check_heads_divide,
    check_positive_int,
    check_probability,
    check_tensor,
    check_valid_lens,
)

__all__ = [
    "MultiHeadAttention",
    "SelfAttention",
    "attend_heads",
    "merge_heads",
    "multi_head_attention",
    "split_heads",
]


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


def _check_projections(
    queries: Tensor, keys: Tensor, values: Tensor, num_heads: int, w_q: Tensor, w_k: Tensor, w_v: Tensor
) -> None:
    """Raise unless (B, T, d) inputs and their projections fit together and split into `num_heads`."""
    check_qkv(queries, keys, values)
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
    _check_projections(queries, keys, values, num_heads, w_q, w_k, w_v)
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

    def _run(self, attention: Callable[..., tuple[Tensor, Tensor]], *qkv: Tensor, **options: Any) -> Tensor:
        """Call `multi_head_attention` or `attend_heads` with this layer's weights; keep the weights."""
        out, weights = attention(
            *qkv,
            self.num_heads,
            w_q=self.W_q.weight,
            b_q=self.W_q.bias,
            w_o=self.W_o.weight,
            b_o=self.W_o.bias,
            dropout_p=self.dropout if self.training else 0.0,
            **options,
        )
        self.attention_weights = weights.detach()  # (B, h, Q, K)
        return out

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
        masks = {"valid_lens": valid_lens, "attn_mask": attn_mask, "is_causal": is_causal}
        return self._run(attend_heads, queries, k_heads, v_heads, **masks)

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
        kv = {"w_k": self.W_k.weight, "b_k": self.W_k.bias, "w_v": self.W_v.weight, "b_v": self.W_v.bias}
        masks = {"valid_lens": valid_lens, "attn_mask": attn_mask, "is_causal": is_causal}
        return self._run(multi_head_attention, queries, keys, values, **kv, **masks)

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
