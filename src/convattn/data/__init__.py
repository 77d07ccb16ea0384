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

Example:
    >>> train = load("digits", "train")
    >>> for x, y in batches(train, 64, seed=0, epoch=0, augment=default_augment(train)):
    ...     pass  # x: (64, 1, 8, 8) float32 normalised, y: (64,) int64
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from convattn.data.augment import Augment, augment_batch, batches, default_augment, num_batches
from convattn.data.cifar import VERIFY_MODES, UnsafePickleError, load_cifar
from convattn.data.digits import load_digits
from convattn.data.folder import load_folder
from convattn.data.generated import LONG_RANGE_CLASSES, SHAPE_CLASSES, long_range_images, shape_images
from convattn.data.imageset import SPLITS, ImageSet, derive_seed, make_splits
from convattn.layers._checks import check_positive_int

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
            fixed split and ignore it.
        n_train: number of training images of a generated set (default 2000).
        n_test: number of test images of a generated set (default 500).
        image_size: side images of "folder:PATH" are resized to.
        verify: CIFAR checksums: "auto" (files with the published image count), "strict" or "off".

    Returns:
        The split as an `ImageSet` of uint8 pixels.

    Raises:
        ValueError: an unknown name (close names are suggested), a bad split, options that do not apply
            to the set, or a missing/corrupt/unsafe file (FileNotFoundError for missing ones).
    """
    name, path = _parse(name_or_spec)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got seed={seed!r}")
    for option, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None:
            if name not in GENERATED:
                raise ValueError(f"{option} applies to generated sets only, got {option}={value} for {name}")
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
    return pair[SPLITS.index(split)]
