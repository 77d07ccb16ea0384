"""The user's own images: one sub-folder per class, read with Pillow into RGB uint8 of one size.

Layout: either ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (the user's split is used as is),
or ``PATH/<class>/*`` (a fixed stratified split by file name puts 20 % of each class in test). Class
names are the sorted sub-folder names; hidden entries and files that are not images are skipped.
Every image is converted to RGB and resized (aspect ratio not kept, bilinear) to image_size².

Refused, naming the folder or file: fewer than two classes, a class without training images, an empty
test split (each would make the accuracy meaningless), and an image whose header claims more pixels
than Pillow decodes safely (`PIL.Image.MAX_IMAGE_PIXELS`), before any of it is decoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from convattn.data.imageset import ImageSet, make_splits, stratified_split

__all__ = ["IMAGE_SUFFIXES", "TEST_FRACTION", "load_folder"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
TEST_FRACTION = 0.2


def _class_dirs(root: Path) -> list[Path]:
    """Visible sub-folders of `root`, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Visible image files under `folder` (recursively), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse, before decoding, an image whose header claims more pixels than Pillow decodes safely."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS  # None: the user turned Pillow's own check off
    if limit is not None and size[0] * size[1] > limit:
        raise ValueError(
            f"refusing image {path}: its header claims {size[0]}x{size[1]} pixels, more than the "
            f"{limit} Pillow decodes safely (a decompression bomb?); it was not decoded"
        )


def read_image(path: Path, image_size: int) -> np.ndarray:
    """One file as a (3, image_size, image_size) uint8 array; an unreadable file, or one too large to
    decode safely, is a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # _check_pixels says it in one line, instead of Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as err:  # beyond twice the limit Pillow refuses to open it
        raise ValueError(f"refusing image {path}: {err} It was not decoded.") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    with img:
        _check_pixels(path, img.size)
        try:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as err:  # a truncated or damaged body
            raise ValueError(f"cannot read image {path}: {err}") from err
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _scan(root: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """Image files under root/<class> for each class, with their class indices."""
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = _image_files(root / name) if (root / name).is_dir() else []
        files += found
        labels += [k] * len(found)
    return files, labels


def _tensors(files: list[Path], labels: list[int], image_size: int) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) uint8 images and (N,) int64 labels of the listed files."""
    if not files:
        return torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    images = np.stack([read_image(f, image_size) for f in files])  # (N, 3, S, S)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _check_split(root: Path, classes: tuple[str, ...], train: list[int], test: list[int]) -> None:
    """Refuse a folder a classifier cannot be scored on: a score over one class, or over no test image,
    would read as 100% or 0% and mean nothing."""
    if not classes:
        raise ValueError(f"no class sub-folders in {root}: expected {root}/<class>/<image files>")
    if not train:
        raise ValueError(f"no training images under {root} (suffixes: {sorted(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise ValueError(f"{root} has one class sub-folder ({classes[0]!r}); a classifier needs two or more")
    trained = set(train)
    empty = [name for k, name in enumerate(classes) if k not in trained]
    if empty:
        raise ValueError(f"{root}: the classes {empty} have no training images")
    if not test:
        raise ValueError(
            f"{root} gives an empty test split: put images in {root}/test/<class>, or at least 3 per class "
            f"for the automatic split (it keeps {TEST_FRACTION:.0%} of each class, rounded, for testing)"
        )


def load_folder(root: str | Path, *, image_size: int = 32) -> tuple[ImageSet, ImageSet]:
    """Both splits of a folder of class sub-folders (see the module docstring for the layout).

    Args:
        root: the folder.
        image_size: the side every image is resized to.

    Returns:
        (train, test) with (3, image_size, image_size) uint8 images.

    Raises:
        FileNotFoundError: `root` is not a folder.
        ValueError: no class sub-folders, or only one; no images, a class without training images, no test
            images; a test class unknown to train; an unreadable file, or one whose header claims more
            pixels than Pillow decodes safely (refused before decoding).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    split_dirs = (root / "train", root / "test")
    if all(d.is_dir() for d in split_dirs):
        classes = tuple(p.name for p in _class_dirs(split_dirs[0]))
        unknown = sorted({p.name for p in _class_dirs(split_dirs[1])} - set(classes))
        if unknown:
            raise ValueError(f"{split_dirs[1]} has classes missing from {split_dirs[0]}: {unknown}")
        train_files, train_labels = _scan(split_dirs[0], classes)
        test_files, test_labels = _scan(split_dirs[1], classes)
    else:
        classes = tuple(p.name for p in _class_dirs(root))
        files, labels = _scan(root, classes)
        keys = [f.relative_to(root).as_posix() for f in files]
        train_idx, test_idx = stratified_split(np.array(labels, dtype=np.int64), keys, TEST_FRACTION)
        train_files, train_labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
        test_files, test_labels = [files[i] for i in test_idx], [labels[i] for i in test_idx]
    _check_split(root, classes, train_labels, test_labels)
    train = _tensors(train_files, train_labels, image_size)
    test = _tensors(test_files, test_labels, image_size)
    return make_splits("folder", train, test, classes)
