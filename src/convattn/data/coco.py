"""Detection data of your own, in COCO's format: ``coco:PATH``.

PATH holds ``annotations.json`` and the images it names (``file_name`` relative to PATH, or to
PATH/images). With PATH/train and PATH/test folders, each such a folder, those are the splits;
otherwise the images are split 80/20 by a fixed seeded order. Every image is resized to
image_size × image_size (boxes are normalised, so they follow); crowd annotations are left out.

Checked, each with an error naming the value: a missing or unreadable file, a category id the file
does not list, a box with w or h ≤ 0 or outside its image, an annotation of an unknown image, and an
image whose file is missing. Images without annotations are allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convattn.data.detection import DetectionSet
from convattn.data.folder import read_image
from convattn.data.imageset import channel_stats, derive_seed

__all__ = ["load_coco"]

ANNOTATIONS = "annotations.json"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no {ANNOTATIONS} in {path.parent}: a coco:PATH folder needs one")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path} needs a list under {key!r}, as COCO files have")
    return data


def _image_file(folder: Path, name: str, image_id: Any) -> Path:
    for candidate in (folder / name, folder / "images" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"image id {image_id}: its file {name!r} is in neither {folder} nor {folder / 'images'}"
    )


def _read_split(folder: Path, image_size: int, categories: list[dict[str, Any]] | None) -> tuple[Any, ...]:
    """(images, boxes, labels, categories) of one annotations.json folder."""
    path = folder / ANNOTATIONS
    data = _read_json(path)
    cats = sorted(data["categories"], key=lambda c: c["id"]) if categories is None else categories
    index = {c["id"]: k for k, c in enumerate(cats)}
    if categories is not None and sorted(c["id"] for c in data["categories"]) != sorted(index):
        raise ValueError(f"{path} lists other categories than the training split's: {sorted(index)}")
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[Any, list[tuple[int, list[float]]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        aid, iid = ann.get("id"), ann.get("image_id")
        if iid not in images:
            raise ValueError(
                f"{path}: annotation {aid} belongs to image id {iid}, which the file does not list"
            )
        if ann.get("category_id") not in index:
            raise ValueError(
                f"{path}: annotation {aid} has category id {ann.get('category_id')}, "
                f"not one of {sorted(index)}"
            )
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        W, H = float(images[iid]["width"]), float(images[iid]["height"])
        if not (w > 0 and h > 0):
            raise ValueError(f"{path}: annotation {aid} has bbox {ann['bbox']}: w and h must be > 0")
        if x < 0 or y < 0 or x + w > W + 1e-6 or y + h > H + 1e-6:
            raise ValueError(
                f"{path}: annotation {aid} has bbox {ann['bbox']} outside its {W:g}x{H:g} image {iid}"
            )
        per_image[iid].append((index[ann["category_id"]], [(x + w / 2) / W, (y + h / 2) / H, w / W, h / H]))
    ids = sorted(images)
    pixels = (
        np.stack([read_image(_image_file(folder, images[i]["file_name"], i), image_size) for i in ids])
        if ids
        else np.zeros((0, 3, image_size, image_size), np.uint8)
    )
    boxes = tuple(torch.tensor([b for _, b in per_image[i]], dtype=torch.float32).reshape(-1, 4) for i in ids)
    labels = tuple(torch.tensor([c for c, _ in per_image[i]], dtype=torch.int64) for i in ids)
    return torch.from_numpy(pixels), boxes, labels, cats


def load_coco(root: str | Path, *, image_size: int = 64, seed: int = 0) -> tuple[DetectionSet, DetectionSet]:
    """(train, test) `DetectionSet`s from a COCO-format folder (see the module docstring).

    Raises:
        FileNotFoundError: a missing folder, annotations file or image file, named.
        ValueError: the checks of the module docstring, each naming the annotation and its value.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"coco:PATH needs a folder, and {root} is not one")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _read_split(root / "train", image_size, None)
        test = _read_split(root / "test", image_size, train[3])
    else:
        images, boxes, labels, cats = _read_split(root, image_size, None)
        n = len(labels)
        if n < 2:
            raise ValueError(f"{root} holds {n} image(s); a train/test split needs at least 2")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "coco")))
        cut = max(1, round(0.8 * n))
        parts = [order[:cut].sort().values, order[cut:].sort().values]
        train, test = (
            (images[p], tuple(boxes[i] for i in p.tolist()), tuple(labels[i] for i in p.tolist()), cats)
            for p in parts
        )
    names = tuple(str(c.get("name", c["id"])) for c in train[3])
    mean, std = channel_stats(train[0], 255.0)
    return (
        DetectionSet(train[0], train[1], train[2], names, f"coco:{root}", "train", mean, std),
        DetectionSet(test[0], test[1], test[2], names, f"coco:{root}", "test", mean, std),
    )
