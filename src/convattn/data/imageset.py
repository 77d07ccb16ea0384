"""The in-memory image set every loader returns, and the small helpers the loaders share.

Pixels are kept as stored (uint8 for every set here, so CIFAR-10 costs 150 MB, not 600 MB) and turned
into normalised float32 batches on demand: ``(x / max_value - mean) / std`` per channel, with mean and
std measured on the *training* images (those left after a validation holdout, see `subsets`) so that a
validation or test batch is normalised with training statistics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageSet", "channel_stats", "derive_seed", "make_splits", "stratified_split"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a data set, held in memory.

    Attributes:
        images: (N, C, H, W) raw pixels, uint8 (or float32 already in [0, max_value]).
        labels: (N,) int64 class indices in [0, num_classes).
        classes: class names; their count is the number of classes.
        name: the data set's name, e.g. "digits", "cifar10".
        split: "train", "val" (images held out of the training split) or "test".
        mean: per-channel mean of the training images, in units of max_value (pixels scaled to [0, 1]).
        std: per-channel standard deviation of the training images, same units.
        max_value: the pixel value that maps to 1.0 (255 for 8-bit images, 16 for the digits).
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_value: float = 255.0

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dim() != 4 or x.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be (N, C, H, W) uint8 or float32, got {tuple(x.shape)} {x.dtype}")
        if y.dtype != torch.int64 or tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"labels must be ({x.shape[0]},) int64, got {tuple(y.shape)} {y.dtype}")
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise ValueError(f"mean and std need C={x.shape[1]} entries, got {self.mean=}, {self.std=}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            lo, hi = int(y.min()), int(y.max())
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got {lo}..{hi}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got split={self.split!r}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        C, H, W = self.shape
        size = f"{C}x{H}x{W}"
        return f"ImageSet({self.name!r}, {self.split!r}, n={len(self)}, {size}, {self.num_classes} classes)"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, C, H, W = self.images.shape
        return int(C), int(H), int(W)

    def normalize(self, images: Tensor) -> Tensor:
        """Map raw pixels of this set, (B, C, H, W), to normalised float32 with the train statistics."""
        return normalize(images.to(torch.float32) / self.max_value, self.mean, self.std)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images normalised, (N, C, H, W) float32, and the (N,) labels: for evaluation."""
        return self.normalize(self.images), self.labels

    def subset(self, index: Tensor | slice) -> ImageSet:
        """The images at `index`, keeping this set's split and normalisation statistics."""
        return ImageSet(
            self.images[index],
            self.labels[index],
            self.classes,
            self.name,
            self.split,
            self.mean,
            self.std,
            self.max_value,
        )


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel of a (B, C, H, W) float batch already scaled to [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def channel_stats(
    images: Tensor, max_value: float, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) pixels scaled by 1/max_value, in float64 chunks."""
    C = images.shape[1]
    total = torch.zeros(C, dtype=torch.float64)
    squares = torch.zeros(C, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / max_value
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel is left unscaled
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms (unlike hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stratified_split(
    labels: np.ndarray, keys: list[str], test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: (train_idx, test_idx), both sorted.

    Within each class the items are ranked by a hash of their key (an index or a file name) and the first
    ``round(test_fraction * n_class)`` go to test. No random generator is involved, so the split is the
    same on every machine, library version and seed.
    """
    rank = np.array([derive_seed("split", key) for key in keys], dtype=np.int64)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(rank[members], kind="stable")]
        test.append(order[: round(test_fraction * len(members))])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def make_splits(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classes: tuple[str, ...],
    max_value: float = 255.0,
) -> tuple[ImageSet, ImageSet]:
    """Wrap (images, labels) of both splits as ImageSets normalised with the train statistics."""
    mean, std = channel_stats(train[0], max_value)
    return (
        ImageSet(train[0], train[1], classes, name, "train", mean, std, max_value),
        ImageSet(test[0], test[1], classes, name, "test", mean, std, max_value),
    )
