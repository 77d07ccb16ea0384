"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; D2L §11.8).

The image is cut into p×p patches by a convolution with kernel = stride = p; a learned class token
is prepended and learned absolute positions are added (eq. 1). Pre-LN blocks alternate multi-head
self-attention and a GELU MLP, each in a residual branch (eq. 2-3); the final LayerNorm of the class
token feeds a linear head (eq. 4). Attention runs through `F.scaled_dot_product_attention`.

Input sizes: the sides must be multiples of the patch (the registry refuses other sizes). A model
built for one grid of patches runs on another: the position grid is resized bicubically to the new
grid at every forward (the class token's position is kept), as done when fine-tuning at a new
resolution (Dosovitskiy et al. §3.2).

`Mlp` and `DropPath` (`convattn.layers.blocks`) are shared with the hierarchical models (Swin, DWNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.blocks import DropPath, Mlp, drop_path_rates, init_normal_
from convattn.models.registry import register_preset
from convattn.utils.checks import (
    check_heads_divide,
    check_multiple_of,
    check_positive,
    check_positive_int,
    check_probability,
    check_tensor,
)

__all__ = ["Attention", "VisionTransformer", "VitBlock"]


class Attention(nn.Module):
    """Multi-head self-attention on token sequences (B, N, C) -> (B, N, C), one fused qkv projection."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.d = num_heads, check_heads_divide(dim, num_heads)
        self.attn_dropout = check_probability("attn_dropout", attn_dropout)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.d)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, h·d)


class VitBlock(nn.Module):
    """Pre-LN Transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (Dosovitskiy et al. eq. 2-3)."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, learned positions, pre-LN blocks, LN + linear head.

    Maps (B, in_chans, H, W) images, H and W multiples of `patch_size`, to (B, num_classes) logits.

    Args:
        image_size: side (or (H, W)) the position table is built for.
        patch_size: side of the square patches (kernel and stride of the embedding).
        in_chans: input channels.
        num_classes: classes of the head.
        dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block (must divide dim).
        mlp_ratio: MLP hidden width / dim.
        qkv_bias: bias in the query/key/value projection.
        dropout: dropout after the positions and inside the MLPs.
        attn_dropout: dropout on the attention probabilities.
        drop_path_rate: stochastic-depth rate of the last block (linearly increasing from 0).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch = check_positive_int("patch_size", patch_size)
        height, width = check_multiple_of("image_size", image_size, "patch_size", patch_size)
        check_heads_divide(dim, num_heads)
        check_positive("mlp_ratio", mlp_ratio)
        check_positive_int("depth", depth)
        rates = drop_path_rates(check_probability("drop_path_rate", drop_path_rate), depth)
        self.in_chans = check_positive_int("in_chans", in_chans)
        self.grid = (height // patch_size, width // patch_size)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.pos_drop = nn.Dropout(check_probability("dropout", dropout))
        self.blocks = nn.Sequential(
            *(
                VitBlock(
                    dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    dropout=dropout,
                    attn_dropout=attn_dropout,
                    drop_path=rate,
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, check_positive_int("num_classes", num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for positions, class token and linear layers; zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_normal_(self)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + gh·gw, dim) positions for a gh×gw patch grid, the learned grid resized if it differs."""
        if grid == self.grid:
            return self.pos_embed
        cls_pos, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        C = table.shape[-1]
        table = table.reshape(1, *self.grid, C).permute(0, 3, 1, 2)  # (1, C, gh0, gw0)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)  # (1, C, gh, gw)
        return torch.cat([cls_pos, table.flatten(2).transpose(1, 2)], dim=1)  # (1, 1 + gh·gw, C)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, 1 + N, dim) normalised tokens, the class token first."""
        check_tensor("x", x, 4)
        B, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W), got x.shape={tuple(x.shape)}")
        check_multiple_of("image size", (H, W), "patch_size", self.patch)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # (B, 1 + N, dim)
        tokens = self.pos_drop(tokens + self.positions((H // self.patch, W // self.patch)))
        return self.norm(self.blocks(tokens))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)[:, 0])  # (B, num_classes)


register_preset(
    "vit",
    VisionTransformer,
    "vit_b16",
    "ViT-B/16 at 224², 1000 classes: 86,567,656 parameters",
    image_size=224,
    num_classes=1000,
    patch_size=16,
    dim=768,
    depth=12,
    num_heads=12,
)
register_preset(
    "vit",
    VisionTransformer,
    "vit_cifar_small",
    "ViT for 32×32: patch 4 (64 tokens), dim 192, depth 6, 3 heads",
    patch_size=4,
    dim=192,
    depth=6,
    num_heads=3,
    drop_path_rate=0.1,
)
register_preset(
    "vit",
    VisionTransformer,
    "vit_cifar_patch2",
    "ViT for 32×32: patch 2 (256 tokens), dim 192, depth 6, 3 heads",
    patch_size=2,
    dim=192,
    depth=6,
    num_heads=3,
    drop_path_rate=0.1,
)
register_preset(
    "vit",
    VisionTransformer,
    "vit_digits",
    "ViT for the 8×8 digits: patch 2 (16 tokens), dim 64, depth 4, 4 heads",
    image_size=8,
    in_chans=1,
    patch_size=2,
    dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
)
register_preset(
    "vit",
    VisionTransformer,
    "vit_tiny",
    "ViT at dim 32, depth 2, 2 heads, patch 4 (tests)",
    patch_size=4,
    dim=32,
    depth=2,
    num_heads=2,
)
register_preset(
    "vit",
    VisionTransformer,
    "vit_shapes",
    "ViT for the 32×32 generated sets: patch 4 (64 tokens), dim 64, depth 4, 4 heads",
    image_size=32,
    in_chans=3,
    patch_size=4,
    dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
)
