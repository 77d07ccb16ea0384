"""coco:PATH: a COCO-format folder read into a DetectionSet, and every bad file named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data.coco import load_coco


def _write(root, images, annotations, categories=({"id": 7, "name": "cat"}, {"id": 3, "name": "dog"})):
    root.mkdir(parents=True, exist_ok=True)
    for im in images:
        pixels = np.full((im["height"], im["width"], 3), 40 * im["id"] % 255, dtype=np.uint8)
        Image.fromarray(pixels).save(root / im["file_name"])
    data = {"images": list(images), "annotations": list(annotations), "categories": list(categories)}
    (root / "annotations.json").write_text(json.dumps(data))


def _images(n, w=40, h=20):
    return [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i in range(1, n + 1)]


def test_boxes_are_normalised_and_categories_indexed_by_id(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 5, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
    ]
    _write(tmp_path / "train", _images(2), anns)
    _write(tmp_path / "test", _images(1), [])
    train, test = load_coco(tmp_path, image_size=16)
    assert train.classes == ("dog", "cat")  # sorted by category id: 3, 7
    assert train.images.shape == (2, 3, 16, 16) and len(test) == 1 and test.boxes[0].shape == (0, 4)
    torch.testing.assert_close(train.boxes[0], torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.375, 0.5, 0.25, 0.5]]))
    assert train.labels[0].tolist() == [1, 0] and train.labels[1].numel() == 0  # the crowd box is left out


def test_one_folder_is_split_by_a_fixed_order(tmp_path):
    _write(tmp_path, _images(10), [{"id": 1, "image_id": 4, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    train, test = load_coco(tmp_path, image_size=16)
    again, _ = load_coco(tmp_path, image_size=16)
    assert len(train) == 8 and len(test) == 2 and torch.equal(train.images, again.images)


@pytest.mark.parametrize(
    ("ann", "words"),
    [
        ({"id": 5, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}, "annotation 5 has category id 9"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 0, 2]}, "w and h must be > 0"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [30, 0, 20, 2]}, "outside its 40x20 image 1"),
        ({"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 2, 2]}, "image id 9, which the file"),
    ],
)
def test_bad_annotations_are_named(tmp_path, ann, words):
    _write(tmp_path, _images(3), [ann])
    with pytest.raises(ValueError, match=words):
        load_coco(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not one"):
        load_coco(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no annotations\.json"):
        load_coco(tmp_path)
    _write(tmp_path, _images(3), [])
    (tmp_path / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image id 2: its file '2\.png'"):
        load_coco(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(tmp_path)


def test_load_detection_reads_both_kinds(tmp_path):
    from convattn.data import load_detection

    _write(tmp_path, _images(5), [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    train, test = load_detection(f"coco:{tmp_path}", image_size=16)
    assert len(train) + len(test) == 5 and train.name.startswith("coco:")
    shapes, _ = load_detection("detect_shapes", n_train=3, n_test=2, image_size=32)
    assert len(shapes) == 3 and shapes.images.shape[-1] == 32
    with pytest.raises(ValueError, match="choose detect_shapes or coco:PATH"):
        load_detection("voc")
    with pytest.raises(ValueError, match="do not apply"):
        load_detection(f"coco:{tmp_path}", n_train=3)
