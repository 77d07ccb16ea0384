"""ResNet-18 for 32×32 images (He et al. 2016), the CNN baseline of Cordonnier et al. 2020, with a
`mixer=` switch that swaps every 3×3 convolution for any spatial mixer of the mixer registry.

The CIFAR variant: 3×3 stem, no max-pool, four stages of two basic blocks (64, 128, 256, 512 channels),
global average pooling and a linear head: 11,173,962 parameters at 10 classes.

With `mixer=name`, each 3×3 conv of a block becomes that mixer with the same input and output widths
and stride. Mixers that keep the channel count (dwconv, dynamic_dwconv, local_mlp) are followed by a 1×1
convolution where the width changes (the depth-wise-separable form); the others (conv, sasa, window,
mhsa, sasa_stem) map the widths themselves.

The stem stays a 3×3 conv (+BN+ReLU) whatever the mixer, as in SASA (Ramachandran et al. 2019, §3.3:
a conv stem, or its own spatially-aware stem, never plain attention on the pixels). Attention on a
1-channel image is degenerate: q, k and v of a pixel are multiples of its one value, so every output
channel of a SASA stem is a multiple of one attention-pooled map (channel rank 1 before the ReLU; the
other attention stems give 5-8 independent maps of 16 after the ReLU in `resnet_digits`).
`stem="mixer"` builds that anyway (the mixer on the raw image; a conv for the width-keeping mixers),
only to reproduce runs made before the fix; the paper does not do it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from convattn.layers.blocks import projection_shortcut
from convattn.layers.mixers import create_mixer, list_mixers
from convattn.models.registry import register_preset
from convattn.utils.checks import check_positive_int, check_tensor

__all__ = ["BasicBlock", "ResNet"]

KEEPS_WIDTH = ("dwconv", "dynamic_dwconv", "local_mlp")
HEADED = ("sasa", "local_mlp", "window", "mhsa")
STEMS = ("conv", "mixer")


def spatial_layer(
    mixer: str, in_dim: int, out_dim: int, stride: int, options: dict[str, Any] | None = None
) -> nn.Module:
    """The layer that stands where a 3×3 conv (no bias) stood: `mixer` from in_dim to out_dim channels."""
    opts = dict(options or {})
    if mixer == "conv":
        return nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False)
    if mixer in HEADED:
        heads = opts.pop("num_heads", 8)
        while in_dim % heads:  # narrow layers (tiny presets) use fewer heads
            heads //= 2
        opts["num_heads"] = max(1, heads)
    if mixer in KEEPS_WIDTH:
        layer = create_mixer(mixer, in_dim, stride=stride, **opts)
        if in_dim == out_dim:
            return layer
        return nn.Sequential(layer, nn.Conv2d(in_dim, out_dim, 1, bias=False))
    return create_mixer(mixer, in_dim, out_dim=out_dim, stride=stride, **opts)


class BasicBlock(nn.Module):
    """Two 3×3 layers with BN and ReLU and an identity (or 1×1 projection) shortcut."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        stride: int,
        mixer: str = "conv",
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = spatial_layer(mixer, in_dim, out_dim, stride, options)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.conv2 = spatial_layer(mixer, out_dim, out_dim, 1, options)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.shortcut = projection_shortcut(in_dim, out_dim, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, stages of basic blocks, global pooling, linear head.

    Args:
        num_classes: classes of the head.
        in_chans: input channels.
        layers: blocks per stage.
        width: channels of the first stage (doubled at every later stage).
        mixer: the spatial layer in place of every 3×3 conv (any name of `convattn.list_mixers()`).
        mixer_options: keyword options for the mixer (e.g. {"kernel_size": 7, "num_heads": 8}).
        stem: "conv" (a 3×3 conv, BN, ReLU for every mixer; SASA's choice) or "mixer" (the mixer on the
            raw image, as before the fix; not what the paper does, see the module docstring).
        image_size: accepted for the registry (any size ≥ 1 works).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        mixer: str = "conv",
        mixer_options: dict[str, Any] | None = None,
        stem: str = "conv",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if mixer not in list_mixers():
            raise ValueError(f"unknown mixer {mixer!r}; choose one of {', '.join(list_mixers())}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem=!r}")
        check_positive_int("width", width)
        for n in layers:
            check_positive_int("blocks per stage", n)
        check_positive_int("in_chans", in_chans)
        self.mixer = mixer
        on_pixels = stem == "mixer" and mixer not in KEEPS_WIDTH
        self.stem = nn.Sequential(
            spatial_layer(mixer if on_pixels else "conv", in_chans, width, 1, mixer_options),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        dim = width
        for stage, n in enumerate(layers):
            out = width * 2**stage
            for i in range(n):
                blocks.append(BasicBlock(dim, out, 2 if stage > 0 and i == 0 else 1, mixer, mixer_options))
                dim = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(dim, check_positive_int("num_classes", num_classes))

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        y = self.blocks(self.stem(x))  # (B, C, H', W')
        return self.head(y.mean((2, 3)))  # (B, num_classes)


_PRESETS: list[tuple[str, str, dict[str, Any]]] = [
    ("resnet18_cifar", "ResNet-18, CIFAR stem (3×3, no max-pool): 11,173,962 parameters", {}),
    ("resnet18_cifar_sasa", "ResNet-18 with SASA 7×7 local attention (8 heads) for every 3×3 conv",
     {"mixer": "sasa", "mixer_options": {"kernel_size": 7, "num_heads": 8}}),
    ("resnet18_cifar_dwconv", "ResNet-18 with 7×7 depth-wise conv + 1×1 conv for every 3×3 conv",
     {"mixer": "dwconv", "mixer_options": {"kernel_size": 7}}),
    ("resnet18_cifar_dynamic", "ResNet-18 with homogeneous dynamic 7×7 depth-wise conv",
     {"mixer": "dynamic_dwconv", "mixer_options": {"kernel_size": 7}}),
    ("resnet18_cifar_window", "ResNet-18 with Swin window attention (window 4, 8 heads)",
     {"mixer": "window", "mixer_options": {"window": 4, "num_heads": 8}}),
    ("resnet_tiny", "a 4-stage ResNet of width 8, one block per stage (tests)",
     {"layers": (1, 1, 1, 1), "width": 8}),
    ("resnet_digits", "a small ResNet for the 8×8 digits: width 16, stages (1, 1, 1)",
     {"layers": (1, 1, 1), "width": 16, "in_chans": 1, "image_size": 8}),
]  # fmt: skip
for _name, _description, _preset in _PRESETS:
    register_preset("resnet", ResNet, _name, _description, **_preset)
