"""Boxes for set prediction: conversions, IoU and generalised IoU (Rezatofighi et al. 2019).

Convention: inside convattn a box is (cx, cy, w, h), normalised by the image's width and height, so a
box of the whole image is (0.5, 0.5, 1, 1). COCO files hold (x, y, w, h) in pixels, corners-based
formulas want (x0, y0, x1, y1): `cxcywh_to_xyxy`, `xyxy_to_cxcywh` and `xywh_to_xyxy` convert. Every
function takes (..., 4) tensors; the pairwise ones take (N, 4) and (M, 4) and return (N, M).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "check_boxes",
    "cxcywh_to_xyxy",
    "generalized_box_iou",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
]


def _check_last_dim(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a tensor of boxes, got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have 4 numbers per box in its last axis, got shape {tuple(boxes.shape)}"
        )


def check_boxes(name: str, boxes: Tensor, *, fmt: str = "cxcywh") -> Tensor:
    """Refuse boxes a loss or a metric cannot use: non-finite numbers, or a width or height ≤ 0.

    `fmt` is "cxcywh" or "xywh" (w, h are the last two numbers) or "xyxy" (x1 > x0, y1 > y0).

    Raises:
        ValueError: naming the first bad box and its numbers.
    """
    _check_last_dim(name, boxes)
    if fmt not in ("cxcywh", "xywh", "xyxy"):
        raise ValueError(f"unknown box format {fmt!r}; choose cxcywh, xywh or xyxy")
    flat = boxes.reshape(-1, 4)
    bad = ~torch.isfinite(flat).all(-1)
    if fmt == "xyxy":
        bad |= (flat[:, 2] <= flat[:, 0]) | (flat[:, 3] <= flat[:, 1])
    else:
        bad |= (flat[:, 2] <= 0) | (flat[:, 3] <= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        what = "x1 > x0 and y1 > y0" if fmt == "xyxy" else "w > 0 and h > 0"
        raise ValueError(
            f"{name}[{i}] = {flat[i].tolist()} ({fmt}) is not a box: need finite numbers, {what}"
        )
    return boxes


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    _check_last_dim("boxes", boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    _check_last_dim("boxes", boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO's (x, y, w, h) with (x, y) the top-left corner -> (x0, y0, x1, y1)."""
    _check_last_dim("boxes", boxes)
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (..., 4) xyxy boxes."""
    _check_last_dim("boxes", boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    _check_last_dim("boxes1", a)
    _check_last_dim("boxes2", b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2): the intersection's top-left
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2): its bottom-right
    wh = (rb - lt).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter  # (N, M)
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes: (N, M). Two empty boxes have IoU 0, not NaN."""
    inter, union = _inter_union(boxes1, boxes2)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU of (N, 4) and (M, 4) xyxy boxes, in [-1, 1]: (N, M).

    GIoU = IoU - (|C| - |A ∪ B|) / |C| with C the smallest box enclosing A and B (Rezatofighi et al.).
    Unlike IoU it still has a gradient when the boxes do not overlap.
    """
    inter, union = _inter_union(boxes1, boxes2)
    tiny = torch.finfo(union.dtype).tiny
    iou = torch.where(union > 0, inter / union.clamp(min=tiny), 0.0)
    lt = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2): the enclosing box
    rb = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - torch.where(hull > 0, (hull - union) / hull.clamp(min=tiny), 0.0)
