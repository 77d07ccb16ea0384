"""The attention-only network of Cordonnier et al. 2020 (§4 and their code), with every encoding.

2×2 space-to-depth (32×32×3 -> 16×16×12), a linear embedding to `hidden` channels, `depth` post-LN
BERT layers whose self-attention is the image MHSA of `convattn.layers.mhsa2d` (9 heads, each as wide as
the hidden size: no value projection, W_out maps 9·hidden -> hidden), mean pooling and a linear head.

    h = LN(x + Dropout(Dense(MHSA(x))));  y = LN(h + Dropout(W_2 GELU(W_1 h)))

Parameter counts follow the reference code (hidden 400, FFN 512, 16×16 maps): 12,086,844 with the
quadratic encoding, 12,278,682 with learned relative positions and 29,601,882 with relative positions
plus content. Weights use BERT's initialisation N(0, 0.02); the quadratic centres (N(0, 2²)) and spreads
(1 + N(0, 0.01²)) keep their own.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.blocks import init_normal_
from convattn.layers.dropout import Dropout
from convattn.layers.mhsa2d import ENCODINGS, MultiHeadSelfAttention2d
from convattn.models.registry import register_preset
from convattn.utils.checks import check_multiple_of, check_positive_int, check_probability, check_tensor

__all__ = ["AttentionLayer", "AttentionNet"]


class AttentionLayer(nn.Module):
    """One BERT layer over an image: MHSA2d, dense + residual + LN, FFN + residual + LN (post-LN)."""

    def __init__(
        self,
        hidden: int,
        *,
        num_heads: int,
        encoding: str,
        ffn: int,
        dropout: float,
        attn_dropout: float,
        eps: float,
        max_size: int,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention2d(
            hidden,
            num_heads=num_heads,
            encoding=encoding,
            head_dim=hidden,
            value_proj=False,
            attn_dropout=attn_dropout,
            max_size=max_size,
        )
        self.dense = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.drop = Dropout(dropout)  # torch's mask draws cost a tenth of the digits net's step

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        a = self.attention(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.norm1(x.permute(0, 2, 3, 1) + self.drop(self.dense(a)))  # (B, H, W, C)
        y = self.norm2(h + self.drop(self.ffn_out(F.gelu(self.ffn_in(h)))))
        return y.permute(0, 3, 1, 2)  # (B, C, H, W)


class AttentionNet(nn.Module):
    """Cordonnier et al.'s attention-only classifier.

    Args:
        num_classes: classes of the head.
        in_chans: input channels.
        image_size: input side; the attention layers see image_size / downsample.
        hidden: channels of every layer (400 in the paper).
        depth: number of attention layers (6).
        num_heads: heads per layer (9: a 3×3 grid of shifts).
        encoding: one of `convattn.layers.mhsa2d.ENCODINGS`.
        ffn: hidden width of the feed-forward part (512).
        downsample: side of the space-to-depth blocks (2).
        dropout: on the hidden states (0.1).
        attn_dropout: on the attention probabilities (None: `dropout`, as in the paper). Position-only
            encodings without it run as a row-times-column product, several times faster.
        eps: LayerNorm epsilon (1e-12, as BERT).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int = 32,
        hidden: int = 400,
        depth: int = 6,
        num_heads: int = 9,
        encoding: str = "quadratic",
        ffn: int = 512,
        downsample: int = 2,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        self.downsample = check_positive_int("downsample", downsample)
        check_multiple_of(
            "image_size", check_positive_int("image_size", image_size), "downsample", downsample
        )
        self.encoding = encoding
        self.embed = nn.Linear(check_positive_int("in_chans", in_chans) * downsample**2, hidden)
        self.layers = nn.ModuleList(
            AttentionLayer(
                hidden,
                num_heads=num_heads,
                encoding=encoding,
                ffn=check_positive_int("ffn", ffn),
                dropout=check_probability("dropout", dropout),
                attn_dropout=check_probability(
                    "attn_dropout", dropout if attn_dropout is None else attn_dropout
                ),
                eps=eps,
                max_size=image_size // downsample,
            )
            for _ in range(check_positive_int("depth", depth))
        )
        self.head = nn.Linear(hidden, check_positive_int("num_classes", num_classes))
        init_normal_(self, truncated=False)  # BERT's N(0, 0.02)

    def features(self, x: Tensor) -> list[Tensor]:
        """The input of every attention layer, (B, hidden, H', W') each (for attention maps)."""
        check_tensor("x", x, 4)
        check_multiple_of("image size", tuple(x.shape[-2:]), "downsample", self.downsample)
        y = F.pixel_unshuffle(x, self.downsample)  # (B, C·s², H/s, W/s)
        y = self.embed(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, hidden, H/s, W/s)
        inputs = []
        for layer in self.layers:
            inputs.append(y)
            y = layer(y)
        inputs.append(y)
        return inputs

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)[-1].mean((2, 3)))  # (B, num_classes)


for _encoding in ("quadratic", "quadratic_generalized", "relative", "relative_content", "absolute", "none"):
    register_preset(
        "cordonnier",
        AttentionNet,
        f"attention_net_{_encoding}",
        f"Cordonnier et al.'s attention-only network, {_encoding} encoding (400 wide, 6 layers)",
        divisor=2,
        encoding=_encoding,
    )
register_preset(
    "cordonnier",
    AttentionNet,
    "attention_net_tiny",
    "the attention-only network at hidden 16, one layer, 4 heads (tests)",
    divisor=2,
    hidden=16,
    depth=1,
    num_heads=4,
    ffn=32,
)
register_preset(
    "cordonnier",
    AttentionNet,
    "attention_digits",
    "a small attention-only network for the 8×8 digits: hidden 64, 2 layers, 9 quadratic heads",
    image_size=8,
    in_chans=1,
    attn_dropout=0.0,
    hidden=64,
    depth=2,
    ffn=128,
    downsample=1,
)
register_preset(
    "cordonnier",
    AttentionNet,
    "attention_net_small",
    "a small attention-only network for 32×32 images (16×16 maps after 2×2 space-to-depth): hidden 32, "
    "2 layers, 9 quadratic heads",
    attn_dropout=0.0,
    hidden=32,
    depth=2,
    ffn=64,
)
