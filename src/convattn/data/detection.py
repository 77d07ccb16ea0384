"""Detection data: images with a variable number of boxed, labelled objects.

Boxes follow `convattn.layers.boxes`: (cx, cy, w, h), normalised by the image's width and height.

``detect_shapes`` is generated: on uniform noise, 1 to `max_objects` shapes (SHAPE_CLASSES: square,
circle, triangle, cross) of random colour, size and position, drawn one over another in order, so
some overlap (any two objects' boxes overlap by an IoU of at most MAX_OVERLAP, so every object keeps
most of itself visible). Each box is the tight box of the object's drawn pixels before anything is
painted over it. It is deterministic: the same (seed, split, size) gives bit-identical images and
boxes, and the train and test splits come from independent streams (``derive_seed``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from convattn.data.generated import FOREGROUND, NOISE, SHAPE_CLASSES, shape_mask
from convattn.data.imageset import SPLITS, channel_stats, derive_seed, normalize
from convattn.layers.boxes import box_iou, check_boxes, cxcywh_to_xyxy
from convattn.utils.checks import check_positive_int

__all__ = ["MAX_OVERLAP", "DetectionSet", "detect_shapes", "shape_scene"]

MAX_OVERLAP = 0.3  # the largest IoU between two objects' boxes in detect_shapes
_TRIES = 50  # placements tried per object before the scene keeps the objects it has


@dataclass(frozen=True, eq=False)
class DetectionSet:
    """One split of a detection set, held in memory.

    Attributes:
        images: (N, C, H, W) uint8 pixels.
        boxes: N tensors (n_i, 4) float32, normalised (cx, cy, w, h); n_i may be 0.
        labels: N tensors (n_i,) int64 in [0, num_classes).
        classes: class names.
        name, split: e.g. "detect_shapes", "train".
        mean, std: per-channel statistics of the training images, pixels scaled to [0, 1].
    """

    images: Tensor
    boxes: tuple[Tensor, ...]
    labels: tuple[Tensor, ...]
    classes: tuple[str, ...]
    name: str
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        x = self.images
        if x.dim() != 4 or x.dtype != torch.uint8:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(x.shape)} {x.dtype}")
        if not len(self.boxes) == len(self.labels) == x.shape[0]:
            raise ValueError(
                f"need one box tensor and one label tensor per image: {x.shape[0]} images, "
                f"{len(self.boxes)} box tensors, {len(self.labels)} label tensors"
            )
        for i, (b, y) in enumerate(zip(self.boxes, self.labels, strict=True)):
            if y.dtype != torch.int64 or y.ndim != 1 or b.shape != (y.numel(), 4):
                raise ValueError(f"image {i}: need labels (n,) int64 and boxes (n, 4), got {tuple(y.shape)} "
                                 f"{y.dtype} and {tuple(b.shape)}")  # fmt: skip
            if y.numel() and not (0 <= int(y.min()) and int(y.max()) < len(self.classes)):
                raise ValueError(f"image {i}: labels must lie in [0, {len(self.classes)}), got {y.tolist()}")
            check_boxes(f"image {i} boxes", b)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got split={self.split!r}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        _, C, H, W = self.images.shape
        objects = sum(int(y.numel()) for y in self.labels)
        return f"DetectionSet({self.name!r}, {self.split!r}, n={len(self)}, {C}x{H}x{W}, {objects} objects)"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def max_objects(self) -> int:
        """The most objects any image holds."""
        return max((int(y.numel()) for y in self.labels), default=0)

    def first(self, n: int) -> DetectionSet:
        """The first n images (all of them when there are fewer), with this split's statistics."""
        n = check_positive_int("n", n)
        return dataclasses.replace(self, images=self.images[:n], boxes=self.boxes[:n], labels=self.labels[:n])

    def normalize(self, images: Tensor) -> Tensor:
        """Raw pixels (B, C, H, W) -> normalised float32 with the training statistics."""
        return normalize(images.to(torch.float32) / 255.0, self.mean, self.std)

    def targets(self, index: Tensor | Sequence[int]) -> list[dict[str, Tensor]]:
        """The targets of the images at `index`: dicts with "labels" and "boxes", as `SetCriterion` takes."""
        return [{"labels": self.labels[int(i)], "boxes": self.boxes[int(i)]} for i in index]


def shape_scene(size: int, max_objects: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One image of 1..max_objects shapes on noise: (3, size, size) uint8, (n, 4) boxes, (n,) labels.

    Half-sizes r are uniform in [0.06, 0.16]·size (at least 2 pixels), centres anywhere the shape fits.
    """
    n = int(torch.randint(1, max_objects + 1, (1,), generator=g))
    image = torch.randint(0, NOISE, (3, size, size), generator=g, dtype=torch.uint8)
    boxes: list[Tensor] = []
    labels: list[int] = []
    for _ in range(n):
        label = int(torch.randint(0, len(SHAPE_CLASSES), (1,), generator=g))
        colour = torch.randint(FOREGROUND, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
        for _ in range(_TRIES):
            r = max(2.0, size * (0.06 + 0.10 * float(torch.rand((), generator=g, dtype=torch.float64))))
            cy, cx = (r + (size - 1 - 2 * r) * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
            mask = shape_mask(label, cy, cx, r, size)  # (size, size) bool
            rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
            x0, x1, y0, y1 = float(cols[0]), float(cols[-1] + 1), float(rows[0]), float(rows[-1] + 1)
            box = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float64) / size
            if (
                not boxes
                or float(box_iou(cxcywh_to_xyxy(box[None]), cxcywh_to_xyxy(torch.stack(boxes))).max())
                <= MAX_OVERLAP
            ):
                break
        else:
            continue  # no room left for this object: the scene keeps fewer
        image = torch.where(mask, colour, image)
        boxes.append(box)
        labels.append(label)
    return image, torch.stack(boxes).float(), torch.tensor(labels, dtype=torch.int64)


def _scenes(
    n: int, size: int, max_objects: int, seed: int
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    scenes = [shape_scene(size, max_objects, g) for _ in range(n)]
    return (
        torch.stack([s[0] for s in scenes]),
        tuple(s[1] for s in scenes),
        tuple(s[2] for s in scenes),
    )


def detect_shapes(
    *, n_train: int = 2000, n_test: int = 500, image_size: int = 64, max_objects: int = 4, seed: int = 0
) -> tuple[DetectionSet, DetectionSet]:
    """The generated detection set, (train, test), both normalised with the training statistics.

    Raises:
        ValueError: for sizes that are not positive integers or an image_size below 16.
    """
    n_train, n_test = check_positive_int("n_train", n_train), check_positive_int("n_test", n_test)
    max_objects = check_positive_int("max_objects", max_objects)
    if check_positive_int("image_size", image_size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got image_size={image_size}")
    parts = {
        split: _scenes(
            n, image_size, max_objects, derive_seed(seed, "detect_shapes", image_size, max_objects, split)
        )
        for split, n in (("train", n_train), ("test", n_test))
    }
    mean, std = channel_stats(parts["train"][0], 255.0)
    return (
        DetectionSet(*parts["train"], SHAPE_CLASSES, "detect_shapes", "train", mean, std),
        DetectionSet(*parts["test"], SHAPE_CLASSES, "detect_shapes", "test", mean, std),
    )
