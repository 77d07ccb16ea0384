"""Bottleneck ResNets with stand-alone self-attention (Ramachandran et al. 2019, §4) and their baselines.

ResNet-26/38/50 have (1, 2, 4, 1), (2, 3, 5, 2) and (3, 4, 6, 3) bottleneck blocks (1×1 -> 3×3 -> 1×1
with BN, widths 64·2^i expanded ×4; the stride sits on the 3×3 layer and on a 1×1 projection
shortcut, as in torchvision's ResNet-50: 25,557,032 parameters at 1000 classes).

`mixer="sasa"` replaces every 3×3 conv of the bottlenecks by SASA local attention (k = 7, 8 heads, a
row + column relative embedding); a strided block down-samples by 2×2 average pooling after the
attention. The stem is one of:

- "conv": 7×7/2 conv, BN, ReLU, 3×3/2 max-pool (the baseline, and the "conv-stem" attention models);
- "attention": SASA's spatially-aware stem (`SASAStem`: attention inside 4×4 blocks whose values mix
  m = 4 value matrices by position), then BN and a 4×4 max-pool, as §3.3 of the paper describes;
- "cifar": 3×3/1 conv, BN, ReLU, no max-pool (for 32×32 inputs).

Parameters at 224², 1000 classes (paper: 13.7M / 10.3M, 19.6M / 14.1M, 25.6M / 18.0M for conv /
attention): a SASA layer of width w holds 3w² projection weights and 7w relative embeddings where the
conv held 9w², so

    depth   conv         attention, conv stem   attention, attention stem
    26      13,696,552   10,342,632             10,335,144
    38      19,626,792   14,190,632             14,183,144
    50      25,557,032   18,038,632             18,031,144

The attention stem (q, k and 4 value matrices of 3 -> 64, 4×4 row/column embeddings, 4 mixture
vectors: 1,920 weights) is lighter than the 7×7 conv (9,408): the two attention columns differ by
7,488, below the paper's rounding. All counts round to the published ones except ResNet-38 with
attention (14.18-14.19M against 14.1M, +0.6%); the paper gives neither exact counts nor the details
(layer split, embedding sizes) that would settle the difference.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from convattn.layers.blocks import projection_shortcut
from convattn.layers.mixers import SASA, SASAStem, create_mixer
from convattn.models.registry import register_preset
from convattn.utils.checks import check_positive_int, check_tensor

__all__ = ["DEPTHS", "Bottleneck", "SASAResNet"]

DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
MIXERS = ("conv", "sasa")
STEMS = ("conv", "attention", "cifar")


class Bottleneck(nn.Module):
    """1×1 conv -> BN -> ReLU -> spatial layer -> BN -> ReLU -> 1×1 conv (×4 width) -> BN, plus shortcut.

    The spatial layer is a 3×3 conv (mixer "conv") or SASA attention (mixer "sasa"), strided either way.
    """

    expansion = 4

    def __init__(
        self,
        in_dim: int,
        width: int,
        *,
        stride: int = 1,
        mixer: str = "conv",
        kernel_size: int = 3,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_dim, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if mixer == "sasa":
            self.conv2 = create_mixer(
                "sasa", width, kernel_size=kernel_size, num_heads=num_heads, stride=stride
            )
        else:
            self.conv2 = create_mixer("conv", width, kernel_size=kernel_size, stride=stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = projection_shortcut(in_dim, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y)).relu()
        y = self.bn3(self.conv3(y))  # (B, 4·width, ⌈H/s⌉, ⌈W/s⌉)
        return (y + self.downsample(x)).relu()


def _stem(stem: str, in_chans: int, width: int) -> nn.Sequential:
    """The input layers: (B, in_chans, H, W) -> (B, width, H/4, W/4) ("cifar": H, W)."""
    if stem == "attention":
        return nn.Sequential(
            create_mixer("sasa_stem", in_chans, out_dim=width, window=4, mixtures=4),
            nn.BatchNorm2d(width),
            nn.MaxPool2d(4, 4, ceil_mode=True),
        )
    if stem == "conv":
        return nn.Sequential(
            nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
        )
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
    )


class SASAResNet(nn.Module):
    """Bottleneck ResNet whose 3×3 convs may be SASA attention: (B, in_chans, H, W) -> (B, num_classes).

    Any input side works (attention masks its borders, pooling rounds up).

    Args:
        num_classes: classes of the head.
        in_chans: input channels.
        layers: bottleneck blocks per stage (`DEPTHS` holds ResNet-26/38/50).
        width: bottleneck width of the first stage (doubled at every later stage; outputs ×4).
        mixer: "conv" (3×3 convs, the baseline) or "sasa" (local self-attention).
        stem: "conv", "attention" (SASA's spatially-aware stem) or "cifar" (3×3 conv, no max-pool).
        kernel_size: spatial extent of the mixer (default: 3 for "conv", 7 for "sasa").
        num_heads: attention heads of the SASA layers.
        zero_init_residual: start every block as the identity (last BN scale 0; Goyal et al. 2017).
        image_size: accepted for the registry; not used.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        layers: tuple[int, ...] = DEPTHS[50],
        width: int = 64,
        mixer: str = "conv",
        stem: str = "conv",
        kernel_size: int | None = None,
        num_heads: int = 8,
        zero_init_residual: bool = False,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer=!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem=!r}")
        if not layers:
            raise ValueError(f"layers must name at least one stage, got {layers=}")
        for n in layers:
            check_positive_int("blocks per stage", n)
        check_positive_int("width", width)
        k = kernel_size if kernel_size is not None else (7 if mixer == "sasa" else 3)
        self.in_chans = check_positive_int("in_chans", in_chans)
        self.stem = _stem(stem, in_chans, width)
        blocks: list[nn.Module] = []
        dim = width
        for i, n in enumerate(layers):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                block = Bottleneck(
                    dim, width * 2**i, stride=stride, mixer=mixer, kernel_size=k, num_heads=num_heads
                )
                blocks.append(block)
                dim = width * 2**i * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(dim, check_positive_int("num_classes", num_classes))
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He (fan-out) init of the convs, not of the attention projections (their own init keeps the
        unscaled logits of eq. 2 moderate: std ≈ 0.5-1.4 for heads of 8-64 channels); with
        zero_init_residual, zero scale on each block's last BN."""
        attention = {id(p) for m in self.modules() if isinstance(m, SASA | SASAStem) for p in m.parameters()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m.weight) not in attention:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W), got x.shape={tuple(x.shape)}")
        y = self.blocks(self.stem(x))  # (B, C, H', W')
        return self.fc(y.mean((2, 3)))  # (B, num_classes)


_IMAGENET: dict[str, Any] = {"image_size": 224, "num_classes": 1000}
_ATTENTION: dict[str, Any] = {"mixer": "sasa", "stem": "attention"}
_PRESETS: list[tuple[str, str, dict[str, Any]]] = [
    ("resnet26", "ResNet-26 (bottleneck, conv), SASA's baseline: 13,696,552 parameters",
     {**_IMAGENET, "layers": DEPTHS[26]}),
    ("resnet38", "ResNet-38 (bottleneck, conv), SASA's baseline: 19,626,792 parameters",
     {**_IMAGENET, "layers": DEPTHS[38]}),
    ("resnet50", "ResNet-50 (torchvision layout): 25,557,032 parameters",
     {**_IMAGENET, "layers": DEPTHS[50]}),
    ("sasa_resnet26", "ResNet-26, full attention (SASA 7×7, 8 heads; attention stem): 10,335,144 parameters",
     {**_IMAGENET, "layers": DEPTHS[26], **_ATTENTION}),
    ("sasa_resnet38", "ResNet-38, full attention (SASA 7×7, 8 heads; attention stem): 14,183,144 parameters",
     {**_IMAGENET, "layers": DEPTHS[38], **_ATTENTION}),
    ("sasa_resnet50", "ResNet-50, full attention (SASA 7×7, 8 heads; attention stem): 18,031,144 parameters",
     {**_IMAGENET, "layers": DEPTHS[50], **_ATTENTION}),
    ("sasa_resnet50_convstem",
     "ResNet-50, conv stem + SASA attention in the bottlenecks: 18,038,632 parameters",
     {**_IMAGENET, "layers": DEPTHS[50], "mixer": "sasa"}),
    ("sasa_resnet_tiny",
     "full-attention bottleneck ResNet at width 8, one block per stage, 4 heads, 32×32 (tests)",
     {"layers": (1, 1, 1, 1), "width": 8, "num_heads": 4, **_ATTENTION}),
]  # fmt: skip
for _name, _description, _preset in _PRESETS:
    register_preset("sasa_resnet", SASAResNet, _name, _description, **_preset)
