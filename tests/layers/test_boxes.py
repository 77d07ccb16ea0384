"""Box conversions, IoU and generalised IoU against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from convattn.layers.boxes import (
    box_iou,
    check_boxes,
    cxcywh_to_xyxy,
    generalized_box_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
)

f64 = torch.float64

# (box a, box b, IoU, GIoU), xyxy, worked out by hand
TABLE = [
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7, 1 / 7 - 2 / 9),  # overlap 1, union 7, hull 9
    ((0, 0, 1, 1), (2, 0, 3, 1), 0.0, -1 / 3),  # apart: union 2, hull 3
    ((0, 0, 1, 1), (0, 0, 1, 1), 1.0, 1.0),
    ((0, 0, 4, 4), (1, 1, 2, 2), 1 / 16, 1 / 16),  # nested: the hull is the outer box
    ((0, 0, 1, 1), (9, 9, 10, 10), 0.0, -98 / 100),
    ((0, 0, 2, 1), (1, 0, 3, 1), 1 / 3, 1 / 3),  # side by side, touching the same hull
]


@pytest.mark.parametrize(("a", "b", "iou", "giou"), TABLE)
def test_iou_and_giou_match_the_hand_table(a, b, iou, giou):
    A, B = torch.tensor([a], dtype=f64), torch.tensor([b], dtype=f64)
    assert box_iou(A, B).item() == pytest.approx(iou, abs=1e-15)
    assert generalized_box_iou(A, B).item() == pytest.approx(giou, abs=1e-15)
    assert generalized_box_iou(B, A).item() == pytest.approx(giou, abs=1e-15)  # symmetric


def test_pairwise_shapes_and_bounds():
    g = torch.Generator().manual_seed(0)
    a = cxcywh_to_xyxy(torch.rand(7, 4, generator=g, dtype=f64) * 0.5 + 0.1)
    b = cxcywh_to_xyxy(torch.rand(5, 4, generator=g, dtype=f64) * 0.5 + 0.1)
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (7, 5)
    assert (iou >= 0).all() and (iou <= 1).all() and (giou >= -1).all() and (giou <= iou + 1e-15).all()


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(3, 6, 4, generator=g, dtype=f64)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(boxes)), boxes, atol=1e-15, rtol=0)
    assert xywh_to_xyxy(torch.tensor([2.0, 3.0, 4.0, 5.0])).tolist() == [2.0, 3.0, 6.0, 8.0]
    assert cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 1.0, 1.0])).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_giou_has_a_gradient_when_boxes_do_not_overlap():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=f64, requires_grad=True)
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=f64)
    assert box_iou(a, b).sum().requires_grad
    (grad,) = torch.autograd.grad(generalized_box_iou(a, b).sum(), a)
    assert grad[0, 2] > 0  # moving the right edge towards b raises GIoU
    assert torch.autograd.gradcheck(lambda x: generalized_box_iou(x, b), (a + 0.1,))


def test_degenerate_boxes_give_numbers_not_nans():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=f64)
    assert box_iou(point, point).item() == 0.0 and generalized_box_iou(point, point).item() == 0.0


@pytest.mark.parametrize(
    ("boxes", "fmt", "words"),
    [
        ([[0.5, 0.5, 0.0, 0.2]], "cxcywh", r"boxes\[0\] = \[0.5, 0.5, 0.0, 0.2\]"),
        ([[0.5, 0.5, 0.1, 0.2], [0.1, 0.1, 0.2, -0.1]], "cxcywh", r"boxes\[1\]"),
        ([[1.0, 1.0, 0.5, 2.0]], "xyxy", "x1 > x0"),
        ([[float("nan"), 0.5, 0.1, 0.1]], "xywh", "finite"),
    ],
)
def test_bad_boxes_are_named(boxes, fmt, words):
    with pytest.raises(ValueError, match=words):
        check_boxes("boxes", torch.tensor(boxes, dtype=f64), fmt=fmt)


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        cxcywh_to_xyxy(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="list"):
        box_iou([[0, 0, 1, 1]], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="unknown box format"):
        check_boxes("b", torch.ones(1, 4), fmt="yolo")
