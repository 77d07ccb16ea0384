"""DWNet and dynamic DWNet (Han et al. 2022, "On the Connection between Local Attention and Dynamic
Depth-wise Convolution", §4).

The Swin macro-architecture (`convattn.layers.blocks.HierarchicalNet`: 4×4 patch embedding +
LayerNorm, stages with patch merging, final LayerNorm, average pooling, linear head) with every
window-attention block replaced by a depth-wise convolution block:

    x = x + BN(Conv1×1(ReLU(BN(DW_k×k(ReLU(BN(Conv1×1(x))))))))    (1×1 convs without bias, DW with bias)
    x = x + MLP(BN(x))                                               (ratio 4, GELU)

No windows, no shift, no relative bias. The dynamic variant predicts the depth-wise kernel of every
image and channel (homogeneous dynamic convolution, the `dynamic_dwconv` mixer):
GAP -> Conv1×1(C -> C/4, no bias) -> BN -> ReLU -> Conv1×1(C/4 -> C·k²) (with bias), plus a static bias.

Normalisations follow the official code: LayerNorm in the patch embedding, the patch merging and
before the head; BatchNorm inside the blocks. LayerNorm and BatchNorm both hold 2 parameters per
channel, so the parameter counts do not tell them apart; they are the code's choice, not the count's.
DWNet-T at 224², 1000 classes: 24,172,744 parameters; dynamic DWNet-T: 51,131,752; DWNet-B:
74,347,112 (the counts of the official code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from convattn.layers.blocks import DropPath, HierarchicalNet, Mlp
from convattn.layers.mixers import create_mixer
from convattn.models.registry import register_preset
from convattn.utils.checks import check_positive

__all__ = ["DWBlock", "DWNet", "DWNetBlock"]


class DWBlock(nn.Module):
    """The attention replacement on (B, C, H, W): 1×1 conv -> BN -> ReLU -> k×k DW conv -> BN -> ReLU ->
    1×1 conv -> BN. `dynamic=True` predicts the depth-wise kernels from the input (homogeneous)."""

    def __init__(self, dim: int, *, kernel_size: int = 7, dynamic: bool = False) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(dim)
        if dynamic:
            self.conv = create_mixer(
                "dynamic_dwconv", dim, kernel_size=kernel_size, mode="homogeneous", reduction=4
            )
        else:
            self.conv = create_mixer("dwconv", dim, kernel_size=kernel_size, bias=True)
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(self.conv0(x)).relu()
        x = self.bn(self.conv(x)).relu()
        return self.bn2(self.conv2(x))


class DWNetBlock(nn.Module):
    """x + DWBlock(x), then x + MLP(BN(x)), on channels-last token maps (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        *,
        kernel_size: int = 7,
        dynamic: bool = False,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn2conv = DWBlock(dim, kernel_size=kernel_size, dynamic=dynamic)
        self.bn = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn2conv(x.permute(0, 3, 1, 2))  # (B, C, H, W) view of channels-last memory
        x = x + self.drop_path(y.permute(0, 2, 3, 1))  # (B, H, W, C)
        y = self.bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # BN over C: (B, C, H, W) -> (B, H, W, C)
        return x + self.drop_path(self.mlp(y))


class DWNet(HierarchicalNet):
    """DWNet: (B, in_chans, H, W) -> (B, num_classes), H and W multiples of `patch_size`.

    Args:
        image_size: side (or (H, W)); only checked against the patch (the convolutions take any size).
        patch_size: side of the patches of the embedding.
        in_chans: input channels.
        num_classes: classes of the head.
        embed_dim: width of the first stage (doubled by every patch merging).
        depths: blocks per stage.
        kernel_size: side of the depth-wise kernels (the paper matches Swin's window, 7).
        dynamic: predict the depth-wise kernels per image (dynamic DWNet).
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
        kernel_size: int = 7,
        dynamic: bool = False,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        check_positive("mlp_ratio", mlp_ratio)
        if not isinstance(dynamic, bool):
            raise TypeError(f"dynamic must be a bool, got {dynamic=!r}")

        def block(stage: int, index: int, dim: int, drop_path: float) -> nn.Module:
            return DWNetBlock(
                dim,
                kernel_size=kernel_size,
                dynamic=dynamic,
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


_FULL: dict[str, Any] = {"image_size": 224, "num_classes": 1000, "patch_size": 4, "drop_path_rate": 0.2}
register_preset("dwnet", DWNet, "dwnet_t", "DWNet-T at 224², 1000 classes: 24,172,744 parameters", **_FULL)
register_preset(
    "dwnet",
    DWNet,
    "dwnet_t_dynamic",
    "dynamic DWNet-T at 224², 1000 classes: 51,131,752 parameters",
    dynamic=True,
    **_FULL,
)
register_preset(
    "dwnet",
    DWNet,
    "dwnet_b",
    "DWNet-B at 224², 1000 classes: 74,347,112 parameters",
    embed_dim=128,
    depths=(2, 2, 18, 2),
    **{**_FULL, "drop_path_rate": 0.5},
)
register_preset(
    "dwnet",
    DWNet,
    "dwnet_cifar",
    "DWNet for 32×32 (swin_cifar's layout): patch 2, dims 96/192/384, depths (2, 2, 6), 7×7 kernels",
    patch_size=2,
    embed_dim=96,
    depths=(2, 2, 6),
    drop_path_rate=0.1,
)
register_preset(
    "dwnet",
    DWNet,
    "dwnet_tiny",
    "DWNet at dims 16/32, depths (1, 1), patch 2, 3×3 kernels (tests)",
    patch_size=2,
    embed_dim=16,
    depths=(1, 1),
    kernel_size=3,
    drop_path_rate=0.0,
)
