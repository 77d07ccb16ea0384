"""Synthetic 32×32 RGB sets made from a seed: one where locality is enough, one where it is not.

Both are deterministic: the same seed gives bit-identical tensors. The train and test splits are drawn
from two generators seeded with ``derive_seed(seed, name, split)``, so they are independent streams.
Labels are exactly balanced (``i % num_classes`` shuffled) whenever the size is a multiple of the class
count. Pixels are uint8: background noise lies in [0, NOISE) and every foreground pixel has a channel
of at least FOREGROUND, so the foreground is recoverable from the pixels (the tests rely on it).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "LONG_RANGE_CLASSES",
    "PALETTE",
    "SHAPE_CLASSES",
    "long_range_images",
    "shape_images",
    "shape_mask",
]

SIZE = 32
NOISE = 96
FOREGROUND = 128
SHAPE_CLASSES = ("square", "circle", "triangle", "cross")
LONG_RANGE_CLASSES = ("different", "same")
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
MARKER = 4  # side of a long_range marker
MARKER_SLACK = 6  # a marker's offset from its corner is in [0, MARKER_SLACK]


def _noise(n: int, g: torch.Generator) -> Tensor:
    """(n, 3, SIZE, SIZE) uint8 background noise in [0, NOISE)."""
    return torch.randint(0, NOISE, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def _balanced_labels(n: int, k: int, g: torch.Generator) -> Tensor:
    """(n,) int64 labels with every class n // k or n // k + 1 times, in random order."""
    return (torch.arange(n) % k)[torch.randperm(n, generator=g)]


def _shape_masks(labels: Tensor, g: torch.Generator) -> Tensor:
    """(n, SIZE, SIZE) bool: the shape of each label at a random centre and half-size r in [4, 10]."""
    n = labels.shape[0]
    r = 4 + 6 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)  # (n, 1, 1)
    cy = r + (SIZE - 1 - 2 * r) * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    cx = r + (SIZE - 1 - 2 * r) * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    return _all_masks(cy, cx, r, SIZE)[labels, torch.arange(n)]


def shape_mask(label: int, cy: float, cx: float, r: float, size: int) -> Tensor:
    """(size, size) bool: shape `label` (SHAPE_CLASSES) centred at pixel (cy, cx) with half-size r."""
    ty, tx, tr = (torch.tensor([[[v]]], dtype=torch.float64) for v in (cy, cx, r))
    return _mask(label, *_offsets(ty, tx, size), tr)[0]


def _offsets(cy: Tensor, cx: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Row and column offsets of every pixel from centres (n, 1, 1): (n, size, 1) and (n, 1, size)."""
    grid = torch.arange(size, dtype=torch.float64)
    return grid.view(1, -1, 1) - cy, grid.view(1, 1, -1) - cx


def _mask(label: int, dy: Tensor, dx: Tensor, r: Tensor) -> Tensor:
    """(n, size, size) bool: shape `label` from the pixels' offsets (`_offsets`) and half-sizes (n, 1, 1)."""
    ady, adx = dy.abs(), dx.abs()
    if label == 0:
        return (ady <= 0.8 * r) & (adx <= 0.8 * r)  # square, side 1.6 r
    if label == 1:
        return dy.square() + dx.square() <= r.square()  # circle, radius r
    if label == 2:
        return (ady <= r) & (2 * adx <= dy + r)  # triangle, apex up, base 2 r
    if label == 3:
        arm = 0.3 * r
        return ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))  # plus sign, arms 0.6 r wide
    raise ValueError(f"label must be one of 0..{len(SHAPE_CLASSES) - 1} (SHAPE_CLASSES), got label={label}")


def _all_masks(cy: Tensor, cx: Tensor, r: Tensor, size: int) -> Tensor:
    """(4, n, size, size) bool: every shape at centres (n, 1, 1) and half-sizes (n, 1, 1)."""
    dy, dx = _offsets(cy, cx, size)
    return torch.stack([_mask(label, dy, dx, r) for label in range(len(SHAPE_CLASSES))])


def shape_images(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` images of one shape each on noise: (n, 3, 32, 32) uint8 and (n,) int64 labels.

    The label is the shape (SHAPE_CLASSES); its colour (each channel uniform in [FOREGROUND, 255]),
    size and position are random. The class is visible in any window holding the shape's outline, the
    kind of task where a small convolution is a good prior.
    """
    labels = _balanced_labels(n, len(SHAPE_CLASSES), g)
    masks = _shape_masks(labels, g).unsqueeze(1)  # (n, 1, SIZE, SIZE)
    colour = torch.randint(FOREGROUND, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)
    images = torch.where(masks, colour, _noise(n, g))  # (n, 3, SIZE, SIZE)
    return images, labels


def _corner_offsets(n: int, g: torch.Generator) -> Tensor:
    """(n, 2) int64 offsets in [0, MARKER_SLACK] of a marker from its corner (rows, columns)."""
    return torch.randint(0, MARKER_SLACK + 1, (n, 2), generator=g)


def long_range_images(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` images with two far-apart colour markers: (n, 3, 32, 32) uint8, (n,) int64 labels.

    Construction: on noise, a 4×4 marker sits near one corner and a second one near the diagonally
    opposite corner (top-left with bottom-right, or top-right with bottom-left, at random), each at
    most MARKER_SLACK pixels from its corner, so at least 32 - 2·(4 + 6) = 12 pixels separate them in
    each direction. Each marker is a solid colour from PALETTE. The label is 1 ("same") when the two
    colours are equal and 0 ("different") otherwise; labels are balanced. The first colour is uniform;
    the second equals it for "same" and is uniform over the other colours for "different", so *each
    marker on its own is independent of the label*: any model that sees only one of them — a
    receptive field smaller than their distance, or any single patch — is at chance. Solving the task
    requires relating pixels across the image (attention, or a global pooling of colour detectors).
    """
    labels = _balanced_labels(n, 2, g)
    first = torch.randint(0, len(PALETTE), (n,), generator=g)
    shift = torch.randint(1, len(PALETTE), (n,), generator=g)
    second = torch.where(labels == 1, first, (first + shift) % len(PALETTE))
    anti_diagonal = torch.randint(0, 2, (n,), generator=g).bool()  # top-right with bottom-left
    off_a, off_b = _corner_offsets(n, g), _corner_offsets(n, g)
    far = SIZE - MARKER
    row_a, col_a = off_a[:, 0], torch.where(anti_diagonal, far - off_a[:, 1], off_a[:, 1])
    row_b, col_b = far - off_b[:, 0], torch.where(anti_diagonal, off_b[:, 1], far - off_b[:, 1])
    images = _noise(n, g)
    palette = torch.tensor(PALETTE, dtype=torch.uint8)  # (P, 3)
    steps = torch.arange(MARKER)
    for colour, row, col in ((first, row_a, col_a), (second, row_b, col_b)):
        rows = (row[:, None] + steps)[:, :, None]  # (n, MARKER, 1)
        cols = (col[:, None] + steps)[:, None, :]  # (n, 1, MARKER)
        batch = torch.arange(n)[:, None, None]
        # Advanced indices around the channel slice put the index dims first: (n, MARKER, MARKER, 3).
        images.permute(0, 2, 3, 1)[batch, rows, cols] = palette[colour][:, None, None, :]
    return images, labels
