"""Transformer blocks of Vaswani et al. 2017 in the post-LN form of D2L 11.7.

Encoder block: y = AddNorm(x, MHA(x, x, x)); out = AddNorm(y, FFN(y)).
Decoder block: y = AddNorm(x, causal MHA(x, x, x)); z = AddNorm(y, MHA(y, enc, enc));
               out = AddNorm(z, FFN(z)).
AddNorm(x, y) = LayerNorm(x + dropout(y)).

The decoder block also runs one step at a time against a `BlockCache` holding the projected keys and
values of the encoder output (computed once) and of every earlier decoder position. Because the
self-attention is causal, position t of a full forward pass sees exactly the keys the cache holds at
step t, so incremental and full decoding compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convattn.layers.multihead import MultiHeadAttention
from convattn.utils.checks import check_positive_int, check_probability, check_tensor

__all__ = [
    "AddNorm",
    "BlockCache",
    "DetrDecoderLayer",
    "DetrEncoderLayer",
    "PositionWiseFFN",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
]


class PositionWiseFFN(nn.Module):
    """The same two-layer MLP at every position: Linear -> ReLU -> Linear (Vaswani et al. eq. 2)."""

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_outputs: int | None = None) -> None:
        super().__init__()
        check_positive_int("num_hiddens", num_hiddens)
        check_positive_int("ffn_num_hiddens", ffn_num_hiddens)
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.relu = nn.ReLU()
        self.dense2 = nn.Linear(ffn_num_hiddens, num_outputs or num_hiddens)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense2(self.relu(self.dense1(x)))


class AddNorm(nn.Module):
    """Residual connection then layer normalisation (post-LN): LayerNorm(x + dropout(y))."""

    def __init__(self, num_hiddens: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_probability("dropout", dropout))
        self.ln = nn.LayerNorm(check_positive_int("num_hiddens", num_hiddens))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"AddNorm needs equal shapes, got {tuple(x.shape)=}, {tuple(y.shape)=}")
        return self.ln(self.dropout(y) + x)


class TransformerEncoderBlock(nn.Module):
    """Self-attention and FFN sub-layers, each wrapped in AddNorm."""

    def __init__(
        self,
        num_hiddens: int,
        ffn_num_hiddens: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout)

    def forward(self, x: Tensor, valid_lens: Tensor | None = None) -> Tensor:
        """x: (B, S, d); valid_lens: (B,) real tokens per sequence (the rest is padding)."""
        check_tensor("x", x, 3)
        y = self.addnorm1(x, self.attention(x, x, x, valid_lens))
        return self.addnorm2(y, self.ffn(y))  # (B, S, d)


@dataclass
class BlockCache:
    """Projected keys/values a decoder block needs at each step, each (B·h, T, d)."""

    cross_k: Tensor
    cross_v: Tensor
    self_k: Tensor | None = None
    self_v: Tensor | None = None


class TransformerDecoderBlock(nn.Module):
    """Causal self-attention, encoder–decoder attention and FFN, each wrapped in AddNorm."""

    def __init__(
        self,
        num_hiddens: int,
        ffn_num_hiddens: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=bias)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    def forward(self, x: Tensor, enc_out: Tensor, enc_valid_lens: Tensor | None = None) -> Tensor:
        """Teacher-forced pass over a whole target: x (B, T, d), enc_out (B, S, d) -> (B, T, d)."""
        check_tensor("x", x, 3)
        y = self.addnorm1(x, self.attention1(x, x, x, is_causal=True))
        z = self.addnorm2(y, self.attention2(y, enc_out, enc_out, enc_valid_lens))
        return self.addnorm3(z, self.ffn(z))

    def init_cache(self, enc_out: Tensor) -> BlockCache:
        """Project the encoder output once for every later step."""
        return BlockCache(*self.attention2.project_kv(enc_out, enc_out))

    def step(self, x: Tensor, cache: BlockCache, enc_valid_lens: Tensor | None = None) -> Tensor:
        """One decoding step: x (B, 1, d) is the newest position; extends `cache` in place."""
        k, v = self.attention1.project_kv(x, x)  # (B·h, 1, d) each
        if cache.self_k is None or cache.self_v is None:
            cache.self_k, cache.self_v = k, v
        else:
            cache.self_k = torch.cat([cache.self_k, k], dim=1)  # (B·h, t+1, d)
            cache.self_v = torch.cat([cache.self_v, v], dim=1)
        # Every cached key is at or before this position, so no causal mask is needed.
        y = self.addnorm1(x, self.attention1.attend(x, cache.self_k, cache.self_v))
        z = self.addnorm2(y, self.attention2.attend(y, cache.cross_k, cache.cross_v, enc_valid_lens))
        return self.addnorm3(z, self.ffn(z))  # (B, 1, d)


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class DetrEncoderLayer(TransformerEncoderBlock):
    """DETR's encoder layer (post-LN): the positional encoding joins the queries and keys, not values.

    y = AddNorm(x, MHA(x + pos, x + pos, x)); out = AddNorm(y, FFN(y)). The encoder block with
    biased projections, and positions in its forward.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__(num_hiddens, ffn_num_hiddens, num_heads, dropout, bias=True)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """x: (B, S, d) image tokens; pos: (B or 1, S, d) their encoding -> (B, S, d)."""
        check_tensor("x", x, 3)
        qk = _with_pos(x, pos)
        y = self.addnorm1(x, self.attention(qk, qk, x))
        return self.addnorm2(y, self.ffn(y))


class DetrDecoderLayer(nn.Module):
    """DETR's decoder layer (post-LN): object queries attend to each other, then to the image.

    y = AddNorm(t, MHA(t + q, t + q, t)); z = AddNorm(y, MHA(y + q, m + pos, m)); out = AddNorm(z, FFN(z)),
    with t the decoder state (zeros before the first layer), q the learned query embeddings and m the
    encoder output. No causal mask: the predictions are a set. The cross-attention's weights stay on
    `cross_attention.attention_weights`, (B, heads, queries, pixels), for pictures.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=True)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.cross_attention = MultiHeadAttention(num_hiddens, num_heads, dropout=dropout, bias=True)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    def forward(
        self,
        t: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        cross_bias: Tensor | None = None,
    ) -> Tensor:
        """t: (B, Q, d); memory: (B, S, d); pos: (B or 1, S, d); query_pos: (B or 1, Q, d) -> (B, Q, d).

        cross_bias, broadcastable to (B, heads, Q, S), is added to the cross-attention's scores (a
        spatial prior on where each query looks; `convattn.models.detr`)."""
        check_tensor("t", t, 3)
        check_tensor("memory", memory, 3)
        q = _with_pos(t, query_pos)
        y = self.addnorm1(t, self.self_attention(q, q, t))
        z = self.addnorm2(
            y,
            self.cross_attention(
                _with_pos(y, query_pos), _with_pos(memory, pos), memory, attn_mask=cross_bias
            ),
        )
        return self.addnorm3(z, self.ffn(z))
