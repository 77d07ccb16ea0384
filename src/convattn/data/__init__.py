"""Data sets for the experiments, as in-memory `ImageSet`s, and reproducible batching.

``load(spec, split)`` understands:

* ``digits`` — scikit-learn's 1,797 real 8×8 handwritten digits, 1 channel, values 0..16, a fixed
  stratified 80/20 split (1,438 / 359). The default data set: it ships with a dependency.
* ``digits32`` — the same digits and split, bilinearly enlarged 4× to 32×32 (0..255): with a 2×2
  space-to-depth, 16×16 token maps, the scale of Cordonnier et al.'s CIFAR-10 attention nets.
* ``shapes`` — generated 32×32 RGB shapes (square, circle, triangle, cross) on noise: locality wins.
* ``long_range`` — generated 32×32 RGB images whose label is whether two markers in opposite corners
  have the same colour: each marker alone says nothing, so small receptive fields are at chance.
* ``cifar10:PATH`` / ``cifar100:PATH`` — the official python batches in folder PATH, read with a
  restricted unpickler and checked against the published MD5 sums.
* ``folder:PATH`` — your images, one sub-folder per class (optionally under PATH/train and PATH/test).

Detection data is a `DetectionSet` (images with boxes and labels): ``load_detection(spec)`` reads
``detect_shapes`` (generated, `convattn.data.detection`) or ``coco:PATH`` (a COCO-format folder of your
own, `convattn.data.coco`).

``n_train`` trains on fewer images, for learning curves. A generated set is generated at that size. A
fixed set (digits, CIFAR, folder) keeps a class-stratified subset of its training split, chosen by
`subset_order`: the first ``n_train`` images of one seeded order, so the subset is the same for the same
``(n_train, seed)`` and the subset of a smaller ``n_train`` lies inside that of a larger one (nested: a
learning curve adds images, it never swaps them). The subset keeps the normalisation statistics of the
whole training split, so the test split is the same, tensor for tensor, whatever ``n_train``.

``holdout=H`` holds out H training images as a validation split, ``load(spec, "val", holdout=H)``, so
that recipes are chosen without the test split. The validation images are the *last* H of the same
seeded order (stratified too), and ``load(spec, "train", holdout=H)`` serves the rest, or the first
``n_train`` of the order: the very images the same ``(n_train, seed)`` trains on without a holdout. The
statistics of all three splits then come from the remaining training images (see `subsets`), so
``load(spec, "test", holdout=H)`` is the same test images normalised as that run saw them. A generated
set is generated at ``n_train + H`` training images (default 2000 + H) and divided by the same rule, so
it still trains on ``n_train`` (2000) images. The test split never depends on the holdout but for its
normalisation.

Example:
    >>> train = load("digits", "train")
    >>> for x, y in batches(train, 64, seed=0, epoch=0, augment=default_augment(train)):
    ...     pass  # x: (64, 1, 8, 8) float32 normalised, y: (64,) int64
    >>> val = load("digits", "val", holdout=288)  # 28 or 29 per class, none of them in:
    >>> rest = load("digits", "train", holdout=288)  # the other 1150, whose statistics all three use
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import torch

from convattn.data import coco_map as coco_map  # the module (its function shares its name), an attribute
from convattn.data.augment import (
    Augment,
    augment_batch,
    batches,
    default_augment,
    detection_batches,
    num_batches,
)
from convattn.data.cifar import VERIFY_MODES, UnsafePickleError, load_cifar
from convattn.data.coco import load_coco
from convattn.data.detection import DetectionSet, detect_shapes
from convattn.data.digits import load_digits, load_digits32
from convattn.data.folder import load_folder
from convattn.data.generated import LONG_RANGE_CLASSES, SHAPE_CLASSES, long_range_images, shape_images
from convattn.data.imageset import SPLITS, ImageSet, derive_seed, make_splits
from convattn.data.subsets import split_training, subset_order
from convattn.utils.checks import check_positive_int

__all__ = [
    "Augment",
    "DetectionSet",
    "ImageSet",
    "UnsafePickleError",
    "augment_batch",
    "batches",
    "default_augment",
    "detect_shapes",
    "detection_batches",
    "list_datasets",
    "load",
    "load_detection",
    "num_batches",
    "subset_order",
]

GENERATED = {"shapes": (shape_images, SHAPE_CLASSES), "long_range": (long_range_images, LONG_RANGE_CLASSES)}
WITH_PATH = ("cifar10", "cifar100", "folder")
DEFAULT_SIZES = (2000, 500)  # train, test images of a generated set


def list_datasets() -> list[str]:
    """The spec forms `load` accepts."""
    return ["digits", "digits32", *GENERATED, *(f"{name}:PATH" for name in WITH_PATH)]


def _parse(spec: object) -> tuple[str, str]:
    """Split "name:PATH" into (name, path), raising ValueError with close names for unknown ones."""
    if not isinstance(spec, str):
        raise TypeError(f"a data spec must be a str such as 'digits', got {type(spec).__name__}")
    name, _, path = spec.partition(":")
    known = ["digits", "digits32", *GENERATED, *WITH_PATH]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown data set {spec!r}{hint} (known: {', '.join(list_datasets())})")
    if name in WITH_PATH and not path:
        raise ValueError(f"data set {name!r} needs a folder: write '{name}:PATH', got {spec!r}")
    if name not in WITH_PATH and path:
        raise ValueError(f"data set {name!r} takes no path, got {spec!r}")
    return name, path


def _generated(
    name: str, seed: int, n_train: int | None, n_test: int | None, holdout: int
) -> tuple[ImageSet, ImageSet]:
    """Both splits of a generated set, from two independent streams of `seed`, `holdout` images extra."""
    make, classes = GENERATED[name]
    sizes = (
        holdout + (DEFAULT_SIZES[0] if n_train is None else n_train),
        DEFAULT_SIZES[1] if n_test is None else n_test,
    )
    train, test = (
        make(n, torch.Generator().manual_seed(derive_seed(seed, name, split)))
        for n, split in zip(sizes, ("train", "test"), strict=True)
    )
    return make_splits(name, train, test, classes)


def _check_options(
    name: str, split: str, seed: int, n_train: int | None, n_test: int | None, holdout: int
) -> None:
    """TypeError/ValueError naming the first option of `load` that is wrong for data set `name`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    for option, number in (("seed", seed), ("holdout", holdout)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{option} must be an int, got {option}={number!r}")
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0 (0: no validation split), got holdout={holdout}")
    if split == "val" and not holdout:
        raise ValueError(
            "split='val' needs holdout > 0, the number of training images held out for validation, "
            f"got holdout={holdout}"
        )
    for option, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None:
            if name not in GENERATED and option == "n_test":
                raise ValueError(f"n_test applies to generated sets only, got n_test={value} for {name}")
            check_positive_int(option, value)


def load(
    name_or_spec: str,
    split: str,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    holdout: int = 0,
    image_size: int = 32,
    verify: str = "auto",
) -> ImageSet:
    """Load one split of a data set into memory, normalised with the statistics of its training images.

    Args:
        name_or_spec: "digits", "digits32", "shapes", "long_range", "cifar10:PATH", "cifar100:PATH" or
            "folder:PATH".
        split: "train", "val" (needs a `holdout`) or "test".
        seed: the seed of a generated set (same seed, bit-identical images); the other sets have a
            fixed split and use it only to pick an `n_train` subset and the `holdout`.
        n_train: number of training images (default: a generated set's 2000, a fixed set's whole
            training split, less the holdout); a fixed set keeps a nested class-stratified subset (see
            the module doc). It never changes the test images, nor, for a fixed set, their normalisation.
        n_test: number of test images of a generated set (default 500).
        holdout: training images held out as the "val" split, the last of the stratified order (0:
            none). Pass the same value for every split of one run: it sets their normalisation.
        image_size: side images of "folder:PATH" are resized to.
        verify: CIFAR checksums: "auto" (files with the published image count), "strict" or "off".

    Returns:
        The split as an `ImageSet` of uint8 pixels.

    Raises:
        ValueError: an unknown name (close names are suggested), a bad split, "val" without a holdout,
            options that do not apply to the set, a negative holdout or one that leaves fewer training
            images than classes, an `n_train` above the training images (after the holdout) or below
            their number of classes, or a missing/corrupt/unsafe file (FileNotFoundError for missing
            ones).
        TypeError: a seed, n_train, n_test or holdout that is not an int.
    """
    name, path = _parse(name_or_spec)
    _check_options(name, split, seed, n_train, n_test, holdout)
    check_positive_int("image_size", image_size)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got verify={verify!r}")
    if name == "digits":
        pair = load_digits()
    elif name == "digits32":
        pair = load_digits32()
    elif name in GENERATED:
        pair = _generated(name, seed, n_train, n_test, holdout)
        n_train = None  # generated at its size: the holdout alone divides it
    elif name == "folder":
        pair = load_folder(Path(path), image_size=image_size)
    else:
        pair = load_cifar(name, Path(path), verify=verify)
    return split_training(*pair, seed=seed, n_train=n_train, holdout=holdout)[split]


@functools.lru_cache(maxsize=4)
def _detect_shapes(
    n_train: int, n_test: int, image_size: int, seed: int
) -> tuple[DetectionSet, DetectionSet]:
    """detect_shapes, generated once per process for the same sizes and seed (2,500 scenes take ~6 s);
    the sets are shared, so their tensors must not be modified in place."""
    return detect_shapes(n_train=n_train, n_test=n_test, image_size=image_size, seed=seed)


def load_detection(
    spec: str, *, image_size: int = 64, seed: int = 0, n_train: int | None = None, n_test: int | None = None
) -> tuple[DetectionSet, DetectionSet]:
    """(train, test) of a detection set: "detect_shapes" (n_train 2000, n_test 500 by default) or
    "coco:PATH" (every image of the folder; n_train / n_test do not apply).

    Raises:
        ValueError: an unknown spec (the known ones named), or sizes given for a COCO folder.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a detection data spec is a string, got {type(spec).__name__}")
    if spec == "detect_shapes":
        return _detect_shapes(n_train or DEFAULT_SIZES[0], n_test or DEFAULT_SIZES[1], image_size, seed)
    if spec.startswith("coco:") and spec[5:]:
        if n_train is not None or n_test is not None:
            raise ValueError(
                f"n_train and n_test do not apply to {spec!r}: it reads every image of the folder"
            )
        return load_coco(spec[5:], image_size=image_size, seed=seed)
    raise ValueError(f"unknown detection data {spec!r}; choose detect_shapes or coco:PATH")
