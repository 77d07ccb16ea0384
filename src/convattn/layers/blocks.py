"""Building blocks shared by the model families (timm's `layers/`), and the one weight initialisation.

Stochastic depth and the GELU MLP of the transformer blocks (ViT, Swin, DWNet); the patch embedding,
patch merging and stages of the hierarchical models, with `HierarchicalNet`, the Swin macro-architecture
that Swin and DWNet share (Han et al. 2022 replace only its blocks); the projection shortcut of the
ResNets; and `init_normal_`, the (truncated) normal init of linear layers that every transformer uses.

Token maps between the modules of the hierarchical models are channels-last, (B, H, W, C): the layout
of LayerNorm and Linear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from convattn.utils.checks import check_multiple_of, check_positive_int, check_probability, check_tensor

__all__ = [
    "DropPath",
    "HierarchicalNet",
    "Mlp",
    "PatchEmbed",
    "PatchMerging",
    "Stage",
    "StridedPointwiseConv",
    "check_stages",
    "drop_path_rates",
    "init_normal_",
    "projection_shortcut",
]


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates of `depth` blocks rising linearly from 0 to `rate` (Huang et al. 2016)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples while training.

    The surviving samples are scaled by 1 / (1 - p) so that the expected output is unchanged.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = check_probability("drop_path", p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)  # (B, 1, ...)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two linear layers with GELU between them, applied to the last (channel) axis."""

    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, check_positive_int("hidden", hidden))
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(check_probability("dropout", dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


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
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W), got x.shape={tuple(x.shape)}")
        check_multiple_of("image size", tuple(x.shape[-2:]), "patch_size", self.patch)
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


class Stage(nn.Module):
    """Blocks at one resolution, then an optional down-sampling (patch merging); (B, H, W, C) in and out."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


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


def init_normal_(
    model: nn.Module,
    *,
    std: float = 0.02,
    truncated: bool = True,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> None:
    """Normal weights of std `std` and zero biases for every module of `types` in `model`.

    `truncated` draws with `trunc_normal_` (cut at ±2, as timm and the official Swin/DWNet codes);
    otherwise plain `normal_` (BERT). Modules are visited in order, so seeded runs draw the same weights.
    """
    for m in model.modules():
        if isinstance(m, types):
            weight, bias = cast(Tensor, m.weight), cast(Tensor | None, getattr(m, "bias", None))
            if truncated:
                nn.init.trunc_normal_(weight, std=std)
            else:
                nn.init.normal_(weight, std=std)
            if bias is not None:
                nn.init.zeros_(bias)


class StridedPointwiseConv(nn.Conv2d):
    """A 1×1 convolution with stride s, computed as the stride-1 1×1 convolution of x[..., ::s, ::s].

    The same function and parameters as ``nn.Conv2d(in_dim, out_dim, 1, stride=s)`` (a 1×1 kernel
    reads only every s-th pixel). torch's CPU backward of the strided 1×1 convolution corrupts the heap
    for channels-last inputs of at most 8 channels at 48×48 and larger (the process aborts); the
    stride-1 form does not.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int, bias: bool = False) -> None:
        super().__init__(in_dim, out_dim, 1, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        return F.conv2d(x[..., :: s[0], :: s[1]], self.weight, self.bias)  # (B, out, ⌈H/s⌉, ⌈W/s⌉)


def projection_shortcut(in_dim: int, out_dim: int, stride: int) -> nn.Module:
    """A ResNet shortcut: the identity, or a strided 1×1 conv and BN where the shape changes (He et al.)."""
    if stride == 1 and in_dim == out_dim:
        return nn.Identity()
    return nn.Sequential(StridedPointwiseConv(in_dim, out_dim, stride), nn.BatchNorm2d(out_dim))


BlockFactory = Callable[[int, int, int, float], nn.Module]
"""block(stage, index in the stage, width, drop-path rate) -> a (B, H, W, C) -> (B, H, W, C) block."""


class HierarchicalNet(nn.Module):
    """The Swin macro-architecture (Liu et al. 2021, §3.1), shared by Swin and DWNet.

    A p×p patch embedding + LayerNorm, dropout, stages of blocks at widths embed_dim·2^i joined by
    patch merging, a final LayerNorm, global average pooling and a linear head:
    (B, in_chans, H, W) -> (B, num_classes), H and W multiples of `patch_size`. Subclasses say what
    a block is; linear layers get the official init (truncated normal, std 0.02, zero biases).

    Args:
        block: builds block `index` of stage `stage` at width `dim` with drop-path rate `drop_path`.
        image_size: side (or (H, W)); checked against the patch.
        patch_size: side of the patches of the embedding.
        in_chans: input channels.
        num_classes: classes of the head.
        embed_dim: width of the first stage (doubled by every patch merging).
        depths: blocks per stage.
        dropout: dropout after the embedding (the blocks take their own).
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
    """

    def __init__(
        self,
        block: BlockFactory,
        *,
        image_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        num_classes: int,
        embed_dim: int,
        depths: Sequence[int],
        dropout: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        n = check_stages(depths)
        check_multiple_of("image_size", image_size, "patch_size", patch_size)
        check_positive_int("embed_dim", embed_dim)
        rates = drop_path_rates(check_probability("drop_path_rate", drop_path_rate), sum(depths))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_drop = nn.Dropout(check_probability("dropout", dropout))
        stages = []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            blocks = [block(i, j, dim, rates[sum(depths[:i]) + j]) for j in range(depth)]
            stages.append(Stage(blocks, PatchMerging(dim) if i < n - 1 else None))
        self.layers = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (n - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, check_positive_int("num_classes", num_classes))
        init_normal_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, num_features) pooled, normalised features."""
        x = self.layers(self.pos_drop(self.patch_embed(x)))  # (B, H/p/2^(n-1), W/p/2^(n-1), C)
        return self.norm(x).mean((1, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)
