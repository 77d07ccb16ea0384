"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

A 4×4 patch embedding (conv, kernel = stride = 4, then LayerNorm) feeds four stages; each stage holds
blocks x + W-MSA(LN(x)), x + MLP(LN(x)) (eq. 3) whose window attention alternates regular windows
and windows shifted by window // 2, and ends (except the last) with patch merging: the 2×2
neighbours are concatenated, LN(4C), Linear(4C -> 2C, no bias). A final LN, global average pooling
and a linear head give the logits. Swin-T: dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24),
window 7, MLP ratio 4: 28,288,354 parameters at 224², 1000 classes, as in the official code (which
does not count its relative-position index buffer; ours has none).

Attention is the `window` mixer (`convattn.layers.window.window_attention2d`): it pads and masks
maps that are not multiples of the window and indexes its bias table by offset, so any input side
that is a multiple of the patch works; patch merging zero-pads odd maps. As in the official code, a
stage whose map (at the built `image_size`) is no larger than the window uses one window covering the
map and no shift; its bias table is sized for that smaller window.

Activations between modules are channels-last token maps (B, H, W, C), the layout of LayerNorm and
Linear; the window mixer sees the (B, C, H, W) view of the same memory, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.mixers import WindowAttention, create_mixer
from convattn.models.registry import register_model
from convattn.models.vit import DropPath, Mlp, drop_path_rates
from convattn.utils.checks import (
    check_heads_divide,
    check_pair,
    check_positive_int,
    check_probability,
    check_tensor,
)

__all__ = [
    "PatchEmbed",
    "PatchMerging",
    "Stage",
    "SwinBlock",
    "SwinTransformer",
    "check_stages",
    "init_linear",
    "stage_windows",
]


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, H/p, W/p, dim): p×p patches by a strided conv (with bias), then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, *, norm: bool = True) -> None:
        super().__init__()
        self.in_chans = check_positive_int("in_chans", in_chans)
        self.patch = check_positive_int("patch_size", patch_size)
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm: nn.Module = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        _, C, H, W = x.shape
        if C != self.in_chans or H % self.patch or W % self.patch:
            raise ValueError(
                f"expected (B, {self.in_chans}, H, W) with H, W multiples of {self.patch}, "
                f"got x.shape={tuple(x.shape)}"
            )
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/p, W/p, dim)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, 2C): concatenate 2×2 neighbours, LN(4C), Linear(4C -> 2C, no bias).

    The concatenation order is the official one, [x(0,0), x(1,0), x(0,1), x(1,1)] by (row, column)
    offset; odd maps are zero-padded at the bottom and right.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * check_positive_int("dim", dim))
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, H', W', C), H' and W' even
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        x = x.reshape(B, H2, 2, W2, 2, C)  # (B, H/2, dr, W/2, dc, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(B, H2, W2, 4 * C)  # (B, H/2, W/2, [dc, dr, C])
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)), then x + MLP(LN(x)) on (B, H, W, C); `shift` > 0 for the shifted-window blocks."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        window: int,
        shift: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = create_mixer(
            "window", dim, window=window, num_heads=num_heads, shift=shift, qkv_bias=True
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(self.norm1(x).permute(0, 3, 1, 2))  # (B, C, H, W) view of channels-last memory
        x = x + self.drop_path(y.permute(0, 2, 3, 1))  # (B, H, W, C)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Blocks at one resolution, then an optional down-sampling (patch merging); (B, H, W, C) in and out."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


def stage_windows(grid: tuple[int, int], stages: int, window: int) -> list[tuple[int, bool]]:
    """(window, shift allowed) per stage: a map no larger than the window is one window, unshifted."""
    out = []
    h, w = grid
    for _ in range(stages):
        side = min(h, w)
        out.append((side, False) if side <= window else (window, True))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


def check_stages(depths: Sequence[int], **per_stage: Sequence[int]) -> int:
    """Number of stages, raising unless every per-stage sequence has one positive int per stage."""
    if not depths:
        raise ValueError(f"depths must name at least one stage, got {depths=}")
    for d in depths:
        check_positive_int("depth of a stage", d)
    for name, values in per_stage.items():
        if len(values) != len(depths):
            raise ValueError(f"{name} needs one entry per stage, got {name}={values!r}, depths={depths!r}")
    return len(depths)


class SwinTransformer(nn.Module):
    """Swin Transformer: (B, in_chans, H, W) -> (B, num_classes), H and W multiples of `patch_size`.

    Args:
        image_size: side (or (H, W)) used to size the windows of small late stages.
        patch_size: side of the patches of the embedding.
        in_chans: input channels.
        num_classes: classes of the head.
        embed_dim: width of the first stage (doubled by every patch merging).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window: window side of the attention.
        mlp_ratio: MLP hidden width / width.
        dropout: dropout after the embedding and inside the MLPs.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window: int = 7,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        n = check_stages(depths, num_heads=num_heads)
        height, width = check_pair("image_size", image_size)
        if height % check_positive_int("patch_size", patch_size) or width % patch_size:
            raise ValueError(
                f"image sides must be multiples of the patch, got image_size={image_size!r}, {patch_size=}"
            )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio=}")
        for i, heads in enumerate(num_heads):
            check_heads_divide(embed_dim * 2**i, heads)
        windows = stage_windows(
            (height // patch_size, width // patch_size), n, check_positive_int("window", window)
        )
        rates = drop_path_rates(check_probability("drop_path_rate", drop_path_rate), sum(depths))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_drop = nn.Dropout(check_probability("dropout", dropout))
        stages = []
        for i, (depth, heads, (win, shifted)) in enumerate(zip(depths, num_heads, windows, strict=True)):
            dim = embed_dim * 2**i
            blocks = [
                SwinBlock(
                    dim,
                    num_heads=heads,
                    window=win,
                    shift=win // 2 if shifted and j % 2 else 0,
                    mlp_ratio=mlp_ratio,
                    dropout=dropout,
                    drop_path=rates[sum(depths[:i]) + j],
                )
                for j in range(depth)
            ]
            stages.append(Stage(blocks, PatchMerging(dim) if i < n - 1 else None))
        self.layers = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (n - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, check_positive_int("num_classes", num_classes))
        init_linear(self)
        for m in self.modules():
            if isinstance(m, WindowAttention):  # its projections are 1×1 convs: the Linear layers of Swin
                for proj in (m.qkv, m.proj):
                    nn.init.trunc_normal_(proj.weight, std=0.02)
                    if proj.bias is not None:
                        nn.init.zeros_(proj.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features) pooled, normalised features."""
        x = self.layers(self.pos_drop(self.patch_embed(x)))  # (B, H/p/2^(n-1), W/p/2^(n-1), C)
        return self.norm(x).mean((1, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


def init_linear(model: nn.Module) -> None:
    """The official init of Swin and DWNet: truncated normal (std 0.02) linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _register(
    name: str, description: str, *, image_size: int = 32, num_classes: int = 10, **preset: Any
) -> None:
    """Register a SwinTransformer preset: the registry passes image_size, num_classes (and in_chans) on."""
    patch = preset["patch_size"]
    register_model(
        name,
        "swin",
        description=description,
        image_size=image_size,
        num_classes=num_classes,
        divisor=patch,
        min_size=patch,
        **preset,
    )(SwinTransformer)


_register(
    "swin_t",
    "Swin-T at 224², 1000 classes: 28,288,354 parameters",
    image_size=224,
    num_classes=1000,
    patch_size=4,
    embed_dim=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    window=7,
    drop_path_rate=0.2,
)
_register(
    "swin_cifar",
    "Swin for 32×32: patch 2, window 4, dims 96/192/384, depths (2, 2, 6), heads (3, 6, 12)",
    patch_size=2,
    embed_dim=96,
    depths=(2, 2, 6),
    num_heads=(3, 6, 12),
    window=4,
    drop_path_rate=0.1,
)
_register(
    "swin_tiny",
    "Swin at dims 16/32, depths (2, 2), heads (2, 4), patch 2, window 4 (tests)",
    patch_size=2,
    embed_dim=16,
    depths=(2, 2),
    num_heads=(2, 4),
    window=4,
    drop_path_rate=0.0,
)
