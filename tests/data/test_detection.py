"""The generated detection set: deterministic, tight boxes, bounded overlap, checked containers."""

from __future__ import annotations

import pytest
import torch

from convattn.data.detection import MAX_OVERLAP, DetectionSet, detect_shapes, shape_scene
from convattn.data.generated import FOREGROUND, NOISE
from convattn.layers.boxes import box_iou, cxcywh_to_xyxy


def test_same_seed_same_bits_and_independent_splits():
    a_train, a_test = detect_shapes(n_train=20, n_test=10, image_size=32, seed=3)
    b_train, _ = detect_shapes(n_train=20, n_test=10, image_size=32, seed=3)
    assert torch.equal(a_train.images, b_train.images)
    assert all(torch.equal(x, y) for x, y in zip(a_train.boxes, b_train.boxes, strict=True))
    assert not torch.equal(a_train.images[:10], a_test.images)
    c_train, _ = detect_shapes(n_train=20, n_test=10, image_size=32, seed=4)
    assert not torch.equal(a_train.images, c_train.images)
    assert a_test.mean == a_train.mean  # the test split is normalised with training statistics


@pytest.mark.parametrize("size", [16, 48, 100])
def test_boxes_are_the_tight_boxes_of_the_foreground(size):
    g = torch.Generator().manual_seed(size)
    for _ in range(20):
        image, boxes, labels = shape_scene(size, 3, g)
        assert 1 <= len(labels) <= 3 and boxes.shape == (len(labels), 4) and boxes.dtype == torch.float32
        xyxy = cxcywh_to_xyxy(boxes.double()) * size
        assert (xyxy >= 0).all() and (xyxy <= size).all()
        if len(labels) > 1:
            iou = box_iou(xyxy, xyxy) - torch.eye(len(labels), dtype=torch.float64)
            assert float(iou.max()) <= MAX_OVERLAP + 1e-12
        foreground = (image.max(0).values >= FOREGROUND) & (image.min(0).values >= FOREGROUND)
        assert image.max() >= FOREGROUND and int(image.min()) < NOISE
        # the last-drawn object is wholly visible: its box has foreground on all four edges (tight);
        # and every foreground pixel lies in some box
        x0, y0, x1, y1 = (round(v) for v in xyxy[-1].tolist())
        inside = foreground[y0:y1, x0:x1]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        covered = torch.zeros_like(foreground)
        for b in xyxy.round().long().tolist():
            covered[b[1] : b[3], b[0] : b[2]] = True
        assert not (foreground & ~covered).any()


def test_default_set_has_every_count_and_class():
    train, test = detect_shapes(n_train=200, n_test=50)
    counts = torch.tensor([len(y) for y in train.labels])
    assert set(counts.tolist()) == {1, 2, 3, 4} and train.max_objects == 4
    assert set(torch.cat(train.labels).tolist()) == {0, 1, 2, 3}
    assert train.images.shape == (200, 3, 64, 64) and len(test) == 50
    assert "200" in repr(train) and train.targets([0, 1])[1]["boxes"] is train.boxes[1]
    x = train.normalize(train.images)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_train": 0}, "n_train=0"),
        ({"image_size": 8}, "at least 16"),
        ({"max_objects": -1}, "max_objects=-1"),
    ],
)
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        detect_shapes(**kwargs)


def test_the_container_refuses_bad_targets():
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    good_b, good_y = torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([1])
    args = (("a",) * 2, "x", "train", (0.0,) * 3, (1.0,) * 3)
    DetectionSet(images, (good_b, good_b), (good_y, good_y), *args)
    with pytest.raises(ValueError, match=r"w > 0 and h > 0"):
        DetectionSet(images, (good_b, torch.tensor([[0.5, 0.5, 0.0, 0.2]])), (good_y, good_y), *args)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[2\]"):
        DetectionSet(images, (good_b, good_b), (good_y, torch.tensor([2])), *args)
    with pytest.raises(ValueError, match="2 images, 1 box tensors"):
        DetectionSet(images, (good_b,), (good_y, good_y), *args)


def test_first_keeps_the_leading_images_and_the_split_statistics():
    train, _ = detect_shapes(n_train=12, n_test=4, image_size=32, seed=1)
    head = train.first(5)
    assert len(head) == 5 and torch.equal(head.images, train.images[:5])
    assert all(torch.equal(a, b) for a, b in zip(head.boxes, train.boxes[:5], strict=True))
    assert head.labels == train.labels[:5] and (head.mean, head.split) == (train.mean, "train")
    assert len(train.first(100)) == 12  # fewer images than asked: all of them
    with pytest.raises(ValueError, match="n=0"):
        train.first(0)


def test_one_shape_mask_is_that_shape_of_the_four():
    from convattn.data.generated import SHAPE_CLASSES, _all_masks, shape_mask

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cy, cx = (4 + 20 * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
        r = 2 + 6 * float(torch.rand((), generator=g, dtype=torch.float64))
        every = _all_masks(*(torch.tensor([[[v]]], dtype=torch.float64) for v in (cy, cx, r)), 28)
        for label in range(len(SHAPE_CLASSES)):
            assert torch.equal(shape_mask(label, cy, cx, r, 28), every[label, 0])
        assert len({every[i, 0].sum().item() for i in range(4)}) > 1  # four different shapes
    with pytest.raises(ValueError, match="label=4"):
        shape_mask(4, 10.0, 10.0, 3.0, 28)
