"""Data sets for the experiments, as in-memory `ImageSet`s, and reproducible batching.

``load(spec, split)`` understands:

* ``digits`` — scikit-learn's 1,797 real 8×8 handwritten digits, 1 channel, values 0..16, a fixed
  stratified 80/20 split (1,438 / 359). The default data set: it ships with a dependency.
* ``shapes`` — generated 32×32 RGB shapes (square, circle, triangle, cross) on noise: locality wins.
* ``long_range`` — generated 32×32 RGB images whose label is whether two markers in opposite corners
  have the same colour: each marker alone says nothing, so small receptive fields are at chance.
* ``cifar10:PATH`` / ``cifar100:PATH`` — the official python batches in folder PATH, read with a
  restricted unpickler and checked against the published MD5 sums.
* ``folder:PATH`` — your images, one sub-folder per class (optionally under PATH/train and PATH/test).

``n_train`` trains on fewer images, for learning curves. A generated set is generated at that size. A
fixed set (digits, CIFAR, folder) keeps a class-stratified subset of its training split, chosen by
`subset_order`: the first ``n_train`` images of one seeded order, so the subset is the same for the same
``(n_train, seed)`` and the subset of a smaller ``n_train`` lies inside that of a larger one (nested: a
learning curve adds images, it never swaps them). The subset keeps the normalisation statistics of the
whole training split, so the test split is the same, tensor for tensor, whatever ``n_train``.

Example:
    >>> train = load("digits", "train")
    >>> for x, y in batches(train, 64, seed=0, epoch=0, augment=default_augment(train)):
    ...     pass  # x: (64, 1, 8, 8) float32 normalised, y: (64,) int64
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import torch

from convattn.data.augment import Augment, augment_batch, batches, default_augment, num_batches
from convattn.data.cifar import VERIFY_MODES, UnsafePickleError, load_cifar
from convattn.data.digits import load_digits
from convattn.data.folder import load_folder
from convattn.data.generated import LONG_RANGE_CLASSES, SHAPE_CLASSES, long_range_images, shape_images
from convattn.data.imageset import SPLITS, ImageSet, derive_seed, make_splits
from convattn.utils.checks import check_positive_int

__all__ = [
    "Augment",
    "ImageSet",
    "UnsafePickleError",
    "augment_batch",
    "batches",
    "default_augment",
    "list_datasets",
    "load",
    "num_batches",
    "subset_order",
]

GENERATED = {"shapes": (shape_images, SHAPE_CLASSES), "long_range": (long_range_images, LONG_RANGE_CLASSES)}
WITH_PATH = ("cifar10", "cifar100", "folder")
DEFAULT_SIZES = (2000, 500)  # train, test images of a generated set


def list_datasets() -> list[str]:
    """The spec forms `load` accepts."""
    return ["digits", *GENERATED, *(f"{name}:PATH" for name in WITH_PATH)]


def _parse(spec: object) -> tuple[str, str]:
    """Split "name:PATH" into (name, path), raising ValueError with close names for unknown ones."""
    if not isinstance(spec, str):
        raise TypeError(f"a data spec must be a str such as 'digits', got {type(spec).__name__}")
    name, _, path = spec.partition(":")
    known = ["digits", *GENERATED, *WITH_PATH]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown data set {spec!r}{hint} (known: {', '.join(list_datasets())})")
    if name in WITH_PATH and not path:
        raise ValueError(f"data set {name!r} needs a folder: write '{name}:PATH', got {spec!r}")
    if name not in WITH_PATH and path:
        raise ValueError(f"data set {name!r} takes no path, got {spec!r}")
    return name, path


def _generated(name: str, seed: int, n_train: int | None, n_test: int | None) -> tuple[ImageSet, ImageSet]:
    """Both splits of a generated set, from two independent streams of `seed`."""
    make, classes = GENERATED[name]
    sizes = (DEFAULT_SIZES[0] if n_train is None else n_train, DEFAULT_SIZES[1] if n_test is None else n_test)
    train, test = (
        make(n, torch.Generator().manual_seed(derive_seed(seed, name, split)))
        for n, split in zip(sizes, SPLITS, strict=True)
    )
    return make_splits(name, train, test, classes)


def subset_order(labels: np.ndarray, seed: int, n: int) -> np.ndarray:
    """The first `n` items of a seeded, class-stratified order of `labels`: an (n,) index array.

    Within each class the items are ranked by a hash of (seed, index), as in `stratified_split`, so no
    library's random generator is involved. The classes are then interleaved greedily: item k + 1 comes
    from the class furthest below its proportional share (k + 1) · n_c / N (ties: the lower label), so every
    prefix is as close to the class proportions as one image allows, and a prefix of a prefix is a
    prefix: the subsets are nested.

    Args:
        labels: (N,) int class labels.
        seed: picks the order within each class.
        n: how many items to take, 0 <= n <= N.
    """
    labels = np.asarray(labels)
    if not 0 <= n <= len(labels):
        raise ValueError(f"n must lie in [0, {len(labels)}], got {n=}")
    rank = np.array([derive_seed("subset", seed, i) for i in range(len(labels))], dtype=np.int64)
    classes = np.unique(labels)
    queues = []  # (n_c,) indices of each class, in rank order
    for c in classes:
        members = np.flatnonzero(labels == c)
        queues.append(members[np.argsort(rank[members], kind="stable")])
    sizes = np.array([len(q) for q in queues], dtype=np.int64)
    taken = np.zeros(len(classes), dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    for k in range(n):
        # Shortfall below the share (k + 1) · n_c / N, times N to stay in integers; argmax takes the lowest
        # label among ties, and a full class never has the largest shortfall (its share is at most n_c).
        shortfall = (k + 1) * sizes - taken * len(labels)
        c = int(np.argmax(shortfall))
        order[k] = queues[c][taken[c]]
        taken[c] += 1
    return order


def _train_subset(pair: tuple[ImageSet, ImageSet], n_train: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """(a stratified subset of n_train training images, the test split untouched); see the module doc."""
    train, test = pair
    if n_train > len(train):
        raise ValueError(f"n_train={n_train} exceeds the {len(train)} training images of {train.name}")
    if n_train < train.num_classes:
        raise ValueError(
            f"n_train={n_train} is below the {train.num_classes} classes of {train.name}: a class-stratified "
            "subset needs at least one image per class"
        )
    index = np.sort(subset_order(train.labels.numpy(), seed, n_train))  # keep the split's own order
    return train.subset(torch.from_numpy(index)), test


def load(
    name_or_spec: str,
    split: str,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    image_size: int = 32,
    verify: str = "auto",
) -> ImageSet:
    """Load one split of a data set into memory, normalised with the statistics of its train split.

    Args:
        name_or_spec: "digits", "shapes", "long_range", "cifar10:PATH", "cifar100:PATH" or "folder:PATH".
        split: "train" or "test".
        seed: the seed of a generated set (same seed, bit-identical images); the other sets have a
            fixed split and use it only to pick an `n_train` subset.
        n_train: number of training images (default: a generated set's 2000, a fixed set's whole
            training split); a fixed set keeps a nested class-stratified subset (see the module doc). It
            never changes the test images, nor, for a fixed set, their normalisation.
        n_test: number of test images of a generated set (default 500).
        image_size: side images of "folder:PATH" are resized to.
        verify: CIFAR checksums: "auto" (files with the published image count), "strict" or "off".

    Returns:
        The split as an `ImageSet` of uint8 pixels.

    Raises:
        ValueError: an unknown name (close names are suggested), a bad split, options that do not apply
            to the set, an `n_train` above the training split or below its number of classes, or a
            missing/corrupt/unsafe file (FileNotFoundError for missing ones).
    """
    name, path = _parse(name_or_spec)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got seed={seed!r}")
    for option, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None:
            if name not in GENERATED and option == "n_test":
                raise ValueError(f"n_test applies to generated sets only, got n_test={value} for {name}")
            check_positive_int(option, value)
    check_positive_int("image_size", image_size)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got verify={verify!r}")
    if name == "digits":
        pair = load_digits()
    elif name in GENERATED:
        pair = _generated(name, seed, n_train, n_test)
    elif name == "folder":
        pair = load_folder(Path(path), image_size=image_size)
    else:
        pair = load_cifar(name, Path(path), verify=verify)
    if n_train is not None and name not in GENERATED:
        pair = _train_subset(pair, n_train, seed)
    return pair[SPLITS.index(split)]
