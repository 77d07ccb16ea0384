"""Two augmented views of every image, for contrastive learning (MoCo v2's augmentation, in plain torch).

`ViewAugment` is MoCo v2's recipe (Chen et al. 2020, after SimCLR): a random resized crop (area 20-100%
of the image, aspect ratio 3/4 to 4/3, bilinear), a horizontal flip, colour jitter with probability 0.8
(brightness, contrast and saturation factors in [1 - 0.4, 1 + 0.4], then a hue rotation of up to
±0.1 turn of the chroma plane in YIQ space), grayscale with probability 0.2 and a Gaussian blur with
probability 0.5 (σ in [0.1, 2.0] pixels of a 224-pixel image, scaled to the image's side). The jitter
steps run in a fixed order, not torchvision's random one. One-channel images get the crop, the flip,
brightness, contrast and the blur.

Every random number comes from the generator the caller gives, so `view_batches` is reproducible from
(seed, epoch, batch) alone, as `batches` is: a resumed run sees bit-identical views.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.data.imageset import ImageSet, derive_seed, normalize
from convattn.utils.checks import check_positive_int

__all__ = ["ViewAugment", "augment_views", "view_batches"]

_LUMA = (0.299, 0.587, 0.114)
_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)


@dataclass(frozen=True)
class ViewAugment:
    """MoCo v2's augmentation; see the module docstring. Probabilities in [0, 1], ranges (low, high)."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of a 224-pixel image

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got scale={self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got ratio={self.ratio}")
        for name in ("jitter_p", "gray_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {name}={getattr(self, name)!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {name}={getattr(self, name)!r}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of a turn), got hue={self.hue!r}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _crop_flip(x: Tensor, aug: ViewAugment, g: torch.Generator) -> Tensor:
    """Random resized crop and flip of (B, C, H, W) by one batched affine `grid_sample` (bilinear)."""
    B = x.shape[0]
    area = _uniform(B, *aug.scale, g)
    log_ratio = _uniform(B, math.log(aug.ratio[0]), math.log(aug.ratio[1]), g)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop sides as fractions of the image
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(B, generator=g, dtype=torch.float64) - 1)  # centre, in [-1, 1] units
    cy = (1 - h) * (2 * torch.rand(B, generator=g, dtype=torch.float64) - 1)
    flips = torch.rand(B, generator=g) < 0.5 if aug.flip else torch.zeros(B, dtype=torch.bool)
    sx = torch.where(flips, -w, w)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luminance."""
    luma = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)


def _jitter(x: Tensor, aug: ViewAugment, g: torch.Generator) -> Tensor:
    """Colour jitter of the images drawn with probability jitter_p, in [0, 1] pixels."""
    B, C = x.shape[:2]
    on = (torch.rand(B, generator=g) < aug.jitter_p).view(B, 1, 1, 1)
    b = _uniform(B, 1 - aug.brightness, 1 + aug.brightness, g).to(x.dtype).view(B, 1, 1, 1)
    c = _uniform(B, 1 - aug.contrast, 1 + aug.contrast, g).to(x.dtype).view(B, 1, 1, 1)
    s = _uniform(B, 1 - aug.saturation, 1 + aug.saturation, g).to(x.dtype).view(B, 1, 1, 1)
    turn = _uniform(B, -aug.hue, aug.hue, g) * 2 * math.pi  # (B,) radians
    y = (x * b).clamp(0, 1)
    grey = _gray(y) if C == 3 else y
    mean = grey.mean((1, 2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    if C == 3:
        y = ((y - _gray(y)) * s + _gray(y)).clamp(0, 1)
        yiq = torch.einsum("ij,bjhw->bihw", _YIQ.to(x.dtype), y)  # (B, 3, H, W)
        cos, sin = turn.cos().to(x.dtype).view(B, 1, 1), turn.sin().to(x.dtype).view(B, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        y = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YIQ).to(x.dtype), yiq).clamp(0, 1)
    return torch.where(on, y, x)


def _blur(x: Tensor, aug: ViewAugment, g: torch.Generator) -> Tensor:
    """Gaussian blur of the images drawn with probability blur_p; σ scaled from 224 pixels to H."""
    B, C, H, W = x.shape
    on = torch.rand(B, generator=g) < aug.blur_p
    sigma = (_uniform(B, *aug.blur_sigma, g) * H / 224).clamp(min=1e-3)  # (B,)
    radius = max(1, math.ceil(3 * aug.blur_sigma[1] * H / 224))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype)
    k = kernel.repeat_interleave(C, 0)  # (B·C, k): one kernel per image and channel
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=B * C)
    return torch.where(on.view(B, 1, 1, 1), y.reshape(B, C, H, W), x)


def augment_views(x: Tensor, aug: ViewAugment, g: torch.Generator) -> Tensor:
    """One augmented view of every image of a (B, C, H, W) batch in [0, 1], randomness from `g` only."""
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
    y = _jitter(_crop_flip(x, aug, g), aug, g)
    if x.shape[1] == 3:
        gray = (torch.rand(x.shape[0], generator=g) < aug.gray_p).view(-1, 1, 1, 1)
        y = torch.where(gray, _gray(y).expand_as(y), y)
    return _blur(y, aug, g)


def view_batches(
    data: ImageSet,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    augment: ViewAugment | None = None,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of two views for contrastive learning: ((2B, C, H, W) normalised, (B,) labels).

    The first B images are the query views, the last B the key views of the same images. The order
    of an epoch and the rank interleaving are `batches`' (``derive_seed(seed, "order", epoch)``, whole
    batches only); both views of global batch b draw from ``derive_seed(seed, "views", epoch, b)``.
    """
    from convattn.data.augment import _order, num_batches

    check_positive_int("batch_size", batch_size)
    aug = augment or ViewAugment()
    order = _order(len(data), seed, epoch, True, world_size, True)
    count = num_batches(len(data), batch_size, world_size=world_size, drop_last=True)
    G = batch_size * world_size
    for b in range(start, count):
        index = order[b * G : (b + 1) * G]  # (G,)
        x = data.images[index].to(torch.float32) / data.max_value  # (G, C, H, W)
        g = torch.Generator().manual_seed(derive_seed(seed, "views", epoch, b))
        q, k = augment_views(x, aug, g), augment_views(x, aug, g)  # both views of the global batch
        mine = slice(rank, G, world_size)
        views = torch.cat([q[mine], k[mine]])  # (2B, C, H, W)
        yield normalize(views, data.mean, data.std), data.labels[index[mine]]
