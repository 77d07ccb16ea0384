"""Augmentation and batching in plain torch, reproducible from (seed, epoch, batch index) alone.

`batches` draws everything it needs from generators seeded by the arguments, never from global state:

* the sample order of an epoch from ``derive_seed(seed, "order", epoch)``;
* the crop offsets and flips of batch ``b`` from ``derive_seed(seed, "augment", epoch, b)``.

So a run resumed at an epoch boundary — or at any batch, with ``start`` — sees bit-identical batches,
and skipping batches costs nothing. With ``world_size > 1`` the ranks share the permutation and each
takes an interleaved slice of every global batch (see `batches` for the exact property).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from convattn.data.detection import DetectionSet
from convattn.data.imageset import ImageSet, derive_seed, normalize
from convattn.utils.checks import check_positive_int

__all__ = ["Augment", "augment_batch", "batches", "default_augment", "detection_batches", "num_batches"]


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding, then horizontal flip.

    Attributes:
        crop_pad: pad every side with `crop_pad` zeros and crop back to (H, W) at a random offset
            (0: no crop). The usual values: 4 for 32×32, 1 for 8×8.
        flip: mirror left-right with probability 1/2.
    """

    crop_pad: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_pad, bool) or not isinstance(self.crop_pad, int) or self.crop_pad < 0:
            raise ValueError(f"crop_pad must be an int >= 0, got crop_pad={self.crop_pad!r}")


def default_augment(data: ImageSet) -> Augment:
    """Pad H // 8 (4 for 32×32, 1 for 8×8) and flip, except for the digits (a mirrored 2 is no 2)."""
    return Augment(crop_pad=max(1, data.shape[1] // 8), flip=not data.name.startswith("digits"))


def _draw(aug: Augment, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-image (n, 2) crop offsets in [0, 2·pad] and (n,) flip flags, in a fixed order."""
    # A disabled step draws nothing: Augment() leaves the generator untouched.
    offsets = torch.zeros(n, 2, dtype=torch.int64)
    if aug.crop_pad:
        offsets = torch.randint(0, 2 * aug.crop_pad + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def _apply(x: Tensor, pad: int, offsets: Tensor, flips: Tensor) -> Tensor:
    """Crop (B, C, H, W) `x` zero-padded by `pad` at `offsets`, then mirror where `flips`."""
    B, _, H, W = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad), zeros
        rows = offsets[:, 0, None] + torch.arange(H)  # (B, H)
        cols = offsets[:, 1, None] + torch.arange(W)  # (B, W)
        batch = torch.arange(B)[:, None, None]
        # Advanced indices around the channel slice put the index dims first: (B, H, W, C).
        x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)
    return torch.where(flips.view(B, 1, 1, 1), x.flip(-1), x)


def augment_batch(images: Tensor, augment: Augment, generator: torch.Generator) -> Tensor:
    """Augment a (B, C, H, W) batch with randomness drawn only from `generator`.

    Padding is with zeros of the input's scale: apply it to pixels (black borders), before normalising,
    as `batches` does. With ``Augment()`` the batch is returned unchanged.

    Args:
        images: (B, C, H, W) floating batch.
        augment: what to apply.
        generator: the only source of randomness (same state -> same output).

    Returns:
        (B, C, H, W) batch, same dtype.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    offsets, flips = _draw(augment, images.shape[0], generator)
    return _apply(images, augment.crop_pad, offsets, flips)


def _order(n: int, seed: int, epoch: int, shuffle: bool, world_size: int, drop_last: bool) -> Tensor:
    """The epoch's global sample order, cut or padded to a multiple of world_size."""
    if shuffle:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch)))
    else:
        perm = torch.arange(n)
    if drop_last:
        return perm[: n - n % world_size]
    extra = -n % world_size
    return torch.cat([perm, perm.repeat(extra // max(n, 1) + 1)[:extra]]) if extra and n else perm


def num_batches(n: int, batch_size: int, *, world_size: int = 1, drop_last: bool = False) -> int:
    """How many batches `batches` yields per rank for a set of `n` images."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("world_size", world_size)
    total = n - n % world_size if drop_last else n + (-n % world_size)
    step = batch_size * world_size
    return total // step if drop_last else -(-total // step)


def batches(
    data: ImageSet,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    augment: Augment | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches of one epoch: (B, C, H, W) float32 normalised, (B,) int64.

    Each step ``b`` takes the global batch ``order[b·G : (b+1)·G]`` of the epoch's order, with
    ``G = batch_size · world_size``, draws augmentation parameters for G images from
    ``derive_seed(seed, "augment", epoch, b)`` (always G, also for a short last batch), and gives rank
    ``r`` the slice ``[r::world_size]`` of both. Hence **interleaving the ranks' batches of step b
    (rank 0's first image, rank 1's first, ..., rank 0's second, ...) gives exactly — same images, same
    augmentation, same pixels — batch b of a single process called with batch_size·world_size**, so a
    distributed run sees the data of the equivalent single-process run.

    Tail rule (as torch's DistributedSampler): with ``drop_last=False`` the order is padded by
    repeating its first samples up to a multiple of world_size, so every rank yields the same number
    of batches and each sample is seen at least once (exactly once when world_size divides N); the
    last batch may be smaller, and when padding was needed the last interleaved batch is the
    single-process one followed by the repeated samples. With ``drop_last=True`` every global batch
    that is not full is dropped, so each batch has exactly batch_size images and the property above
    holds for every step.

    Args:
        data: the split to iterate.
        batch_size: images per batch on this rank.
        seed: the run's seed.
        epoch: the epoch number (0-based); the order depends on it and on `seed` only.
        shuffle: draw a fresh permutation per epoch (False: the stored order, e.g. for evaluation).
        augment: augmentation applied to pixels before normalising (None: none).
        rank: this process's index in [0, world_size).
        world_size: number of processes sharing each global batch.
        drop_last: drop incomplete batches (see the tail rule above).
        start: first batch index to yield: resume mid-epoch without computing the skipped batches.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, world_size), got rank={rank!r}, {world_size=}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got epoch={epoch!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got start={start!r}")
    order = _order(len(data), seed, epoch, shuffle, world_size, drop_last)
    count = num_batches(len(data), batch_size, world_size=world_size, drop_last=drop_last)
    # Validated above, iterated lazily below: bad arguments raise at the call, not at the first batch.
    return _stream(data, order, range(start, count), batch_size, rank, world_size, seed, epoch, augment)


def _stream(
    data: ImageSet,
    order: Tensor,
    steps: range,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    augment: Augment | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of `batches`, given the epoch's (padded or cut) order."""
    G = batch_size * world_size
    for b in steps:
        index = order[b * G : (b + 1) * G]  # the global batch: G images, fewer at the end
        mine = slice(rank, len(index), world_size)
        x = data.images[index[mine]].to(torch.float32) / data.max_value  # (B, C, H, W)
        if augment is not None:
            g = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, b))
            offsets, flips = _draw(augment, G, g)  # G draws, whatever the batch holds
            x = _apply(x, augment.crop_pad, offsets[: len(index)][mine], flips[: len(index)][mine])
        yield normalize(x, data.mean, data.std), data.labels[index[mine]]


def detection_batches(
    data: DetectionSet,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    flip: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
    """`batches` for a `DetectionSet`: (images (B, C, H, W) float32 normalised, B targets).

    The same order, rank interleaving, tail rule and seeding as `batches` (the order from
    ``derive_seed(seed, "order", epoch)``, the flips of batch b from ``derive_seed(seed, "augment",
    epoch, b)``), so a resumed run sees bit-identical batches. A flipped image's boxes are mirrored with
    it (cx -> 1 - cx). There is no random crop: it would cut objects out of their boxes.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("world_size", world_size)
    for name, value, top in (("rank", rank, world_size), ("epoch", epoch, None), ("start", start, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top and value >= top):
            raise ValueError(f"{name} must be an int >= 0{' below world_size' if top else ''}, got {value!r}")
    order = _order(len(data), seed, epoch, shuffle, world_size, drop_last)
    count = num_batches(len(data), batch_size, world_size=world_size, drop_last=drop_last)
    return _detection_stream(
        data, order, range(start, count), batch_size, rank, world_size, seed, epoch, flip
    )


def _detection_stream(
    data: DetectionSet,
    order: Tensor,
    steps: range,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    flip: bool,
) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
    G = batch_size * world_size
    mirror = torch.tensor([-1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])  # cx -> 1 - cx
    for b in steps:
        index = order[b * G : (b + 1) * G][rank::world_size]  # this rank's share of the global batch
        x = data.images[index].to(torch.float32) / 255.0  # (B, C, H, W)
        targets = data.targets(index)
        if flip:
            g = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, b))
            _, flips = _draw(Augment(flip=True), G, g)  # G draws, whatever the batch holds
            flips = flips[: len(order[b * G : (b + 1) * G])][rank::world_size]  # (B,)
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
            targets = [
                {"labels": t["labels"], "boxes": t["boxes"] * mirror[0] + mirror[1]} if f else t
                for t, f in zip(targets, flips.tolist(), strict=True)
            ]
        yield normalize(x, data.mean, data.std), targets
