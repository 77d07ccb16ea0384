"""The Transformer encoder–decoder for token sequences (Vaswani et al. 2017; D2L 11.7).

Tokens are embedded, scaled by √d, summed with the sinusoidal encoding, and passed through post-LN
encoder and decoder blocks. `Transformer.greedy_decode` decodes with a key/value cache (one new
position per step) or by re-running the decoder on the whole prefix; both give the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from convattn.layers.pos_embed import PositionalEncoding
from convattn.layers.transformer import BlockCache, TransformerDecoderBlock, TransformerEncoderBlock
from convattn.utils.checks import check_heads_divide, check_positive_int, check_probability

__all__ = ["Transformer", "TransformerConfig", "TransformerDecoder", "TransformerEncoder"]


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of an encoder–decoder Transformer; the defaults are D2L's small setting."""

    src_vocab: int
    tgt_vocab: int
    num_hiddens: int = 32
    ffn_num_hiddens: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.1
    bias: bool = False

    def __post_init__(self) -> None:
        check_positive_int("src_vocab", self.src_vocab)
        check_positive_int("tgt_vocab", self.tgt_vocab)
        check_positive_int("ffn_num_hiddens", self.ffn_num_hiddens)
        check_positive_int("num_layers", self.num_layers)
        check_heads_divide(self.num_hiddens, self.num_heads)
        check_probability("dropout", self.dropout)
        if self.num_hiddens % 2:
            raise ValueError(f"num_hiddens must be even for the sinusoidal encoding, got {self.num_hiddens}")


def _check_tokens(name: str, tokens: Tensor, vocab: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
        raise TypeError(
            f"{name} must be a (B, T) torch.long tensor, got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} "
            f"of shape {tuple(getattr(tokens, 'shape', ()))}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"{name} must hold ids in [0, {vocab}), got min={int(tokens.min())}, max={int(tokens.max())}"
        )


class _Stack(nn.Module):
    """Token embedding × √d + sinusoidal positions, then `cfg.num_layers` blocks of one kind."""

    def __init__(
        self,
        cfg: TransformerConfig,
        vocab: int,
        block: type[TransformerEncoderBlock] | type[TransformerDecoderBlock],
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab, cfg.num_hiddens)
        self.pos_encoding = PositionalEncoding(cfg.num_hiddens, cfg.dropout)
        self.blks = nn.ModuleList(
            block(cfg.num_hiddens, cfg.ffn_num_hiddens, cfg.num_heads, cfg.dropout, bias=cfg.bias)
            for _ in range(cfg.num_layers)
        )

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        x = self.embedding(tokens) * math.sqrt(self.cfg.num_hiddens)  # (B, T, d)
        return self.pos_encoding(x, offset)


class TransformerEncoder(_Stack):
    """Token embedding × √d + positional encoding, then a stack of encoder blocks."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg, cfg.src_vocab, TransformerEncoderBlock)

    def forward(self, src: Tensor, valid_lens: Tensor | None = None) -> Tensor:
        """src: (B, S) token ids -> (B, S, d)."""
        _check_tokens("src", src, self.cfg.src_vocab)
        x = self._embed(src)  # (B, S, d)
        for blk in self.blks:
            x = blk(x, valid_lens)
        return x

    @property
    def attention_weights(self) -> list[Tensor | None]:
        """Self-attention weights (B, h, S, S) of each block from the last forward pass."""
        return [cast(TransformerEncoderBlock, b).attention.attention_weights for b in self.blks]


class TransformerDecoder(_Stack):
    """Embedding, positional encoding, decoder blocks and a linear layer onto the target vocabulary."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg, cfg.tgt_vocab, TransformerDecoderBlock)
        self.dense = nn.Linear(cfg.num_hiddens, cfg.tgt_vocab)

    def blocks(self) -> list[TransformerDecoderBlock]:
        return [cast(TransformerDecoderBlock, b) for b in self.blks]

    def forward(self, tgt: Tensor, enc_out: Tensor, enc_valid_lens: Tensor | None = None) -> Tensor:
        """Teacher forcing: tgt (B, T) ids, enc_out (B, S, d) -> logits (B, T, V)."""
        _check_tokens("tgt", tgt, self.cfg.tgt_vocab)
        x = self._embed(tgt)
        for blk in self.blks:
            x = blk(x, enc_out, enc_valid_lens)
        return self.dense(x)

    def init_cache(self, enc_out: Tensor) -> list[BlockCache]:
        return [b.init_cache(enc_out) for b in self.blocks()]

    def step(
        self, token: Tensor, position: int, caches: list[BlockCache], enc_valid_lens: Tensor | None
    ) -> Tensor:
        """Feed one token per sequence, (B,), at `position`; returns next-token logits (B, V)."""
        x = self._embed(token[:, None], offset=position)  # (B, 1, d)
        for blk, cache in zip(self.blocks(), caches, strict=True):
            x = blk.step(x, cache, enc_valid_lens)
        return self.dense(x[:, 0])  # (B, V)

    @property
    def attention_weights(self) -> list[tuple[Tensor | None, Tensor | None]]:
        """(self-attention, encoder–decoder attention) weights of each block, (B, h, T, ·)."""
        return [(b.attention1.attention_weights, b.attention2.attention_weights) for b in self.blocks()]


class Transformer(nn.Module):
    """Encoder–decoder Transformer with teacher-forced training and greedy decoding.

    Args:
        cfg: sizes; see `TransformerConfig`.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)

    def forward(self, src: Tensor, src_valid_lens: Tensor | None, tgt_in: Tensor) -> Tensor:
        """src (B, S), src_valid_lens (B,), tgt_in (B, T) (starting with BOS) -> logits (B, T, V)."""
        enc_out = self.encoder(src, src_valid_lens)
        return cast(Tensor, self.decoder(tgt_in, enc_out, src_valid_lens))

    @torch.no_grad()
    def greedy_decode(
        self,
        src: Tensor,
        src_valid_lens: Tensor | None,
        *,
        bos: int,
        eos: int,
        max_len: int,
        use_cache: bool = True,
    ) -> Tensor:
        """Greedy decoding in eval mode: (B, S) sources -> (B, T) tokens, T <= max_len.

        Each row holds the argmax tokens up to its first `eos`, then `eos` repeated; decoding stops
        when every row has emitted `eos` or after `max_len` tokens. With `use_cache` each step feeds
        one position against cached keys/values; without it the decoder re-reads the whole prefix.
        """
        check_positive_int("max_len", max_len)
        for name, tok in (("bos", bos), ("eos", eos)):
            if not 0 <= tok < self.cfg.tgt_vocab:
                raise ValueError(f"{name} must be a target id in [0, {self.cfg.tgt_vocab}), got {tok}")
        was_training = self.training
        self.eval()
        try:
            enc_out = self.encoder(src, src_valid_lens)  # (B, S, d)
            caches = self.decoder.init_cache(enc_out) if use_cache else []
            prefix = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
            done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
            for t in range(max_len):
                if use_cache:
                    logits = self.decoder.step(prefix[:, -1], t, caches, src_valid_lens)  # (B, V)
                else:
                    logits = self.decoder(prefix, enc_out, src_valid_lens)[:, -1]  # (B, V)
                nxt = logits.argmax(-1).masked_fill(done, eos)  # (B,)
                prefix = torch.cat([prefix, nxt[:, None]], dim=1)  # (B, t+2)
                done |= nxt == eos
                if bool(done.all()):
                    break
            return prefix[:, 1:]  # (B, T)
        finally:
            self.train(was_training)
