"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

A 4×4 patch embedding (conv, kernel = stride = 4, then LayerNorm) feeds four stages; each stage holds
blocks x + W-MSA(LN(x)), x + MLP(LN(x)) (eq. 3) whose window attention alternates regular windows
and windows shifted by window // 2, and ends (except the last) with patch merging: the 2×2
neighbours are concatenated, LN(4C), Linear(4C -> 2C, no bias). A final LN, global average pooling
and a linear head give the logits. Swin-T: dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24),
window 7, MLP ratio 4: 28,288,354 parameters at 224², 1000 classes, as in the official code (which
does not count its relative-position index buffer; ours has none).

The macro-architecture is `convattn.layers.blocks.HierarchicalNet` (shared with DWNet); this file
adds the block. Attention is the `window` mixer (`convattn.layers.window.window_attention2d`): it
pads and masks maps that are not multiples of the window and indexes its bias table by offset, so
any input side that is a multiple of the patch works; patch merging zero-pads odd maps. As in the
official code, a stage whose map (at the built `image_size`) is no larger than the window uses one
window covering the map and no shift; its bias table is sized for that smaller window.

Activations between modules are channels-last token maps (B, H, W, C), the layout of LayerNorm and
Linear; the window mixer sees the (B, C, H, W) view of the same memory, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from convattn.layers.blocks import DropPath, HierarchicalNet, Mlp, check_stages, init_normal_
from convattn.layers.mixers import WindowAttention, create_mixer
from convattn.models.registry import register_preset
from convattn.utils.checks import check_heads_divide, check_multiple_of, check_positive, check_positive_int

__all__ = ["SwinBlock", "SwinTransformer", "stage_windows"]


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


def stage_windows(grid: tuple[int, int], stages: int, window: int) -> list[tuple[int, bool]]:
    """(window, shift allowed) per stage: a map no larger than the window is one window, unshifted."""
    out = []
    h, w = grid
    for _ in range(stages):
        side = min(h, w)
        out.append((side, False) if side <= window else (window, True))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


class SwinTransformer(HierarchicalNet):
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
        n = check_stages(depths, num_heads=num_heads)
        height, width = check_multiple_of("image_size", image_size, "patch_size", patch_size)
        check_positive("mlp_ratio", mlp_ratio)
        for i, heads in enumerate(num_heads):
            check_heads_divide(embed_dim * 2**i, heads)
        windows = stage_windows(
            (height // patch_size, width // patch_size), n, check_positive_int("window", window)
        )

        def block(stage: int, index: int, dim: int, drop_path: float) -> nn.Module:
            win, shifted = windows[stage]
            shift = win // 2 if shifted and index % 2 else 0
            return SwinBlock(
                dim,
                num_heads=num_heads[stage],
                window=win,
                shift=shift,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                drop_path=drop_path,
            )

        super().__init__(
            block,
            image_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depths=depths,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
        )
        for m in self.modules():
            if isinstance(m, WindowAttention):  # its projections are 1×1 convs: the Linear layers of Swin
                init_normal_(m, types=(nn.Conv2d,))


register_preset(
    "swin",
    SwinTransformer,
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
register_preset(
    "swin",
    SwinTransformer,
    "swin_cifar",
    "Swin for 32×32: patch 2, window 4, dims 96/192/384, depths (2, 2, 6), heads (3, 6, 12)",
    patch_size=2,
    embed_dim=96,
    depths=(2, 2, 6),
    num_heads=(3, 6, 12),
    window=4,
    drop_path_rate=0.1,
)
register_preset(
    "swin",
    SwinTransformer,
    "swin_tiny",
    "Swin at dims 16/32, depths (2, 2), heads (2, 4), patch 2, window 4 (tests)",
    patch_size=2,
    embed_dim=16,
    depths=(2, 2),
    num_heads=(2, 4),
    window=4,
    drop_path_rate=0.0,
)
