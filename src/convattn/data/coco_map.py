"""COCO box mAP, computed as pycocotools' `COCOeval` computes it (iouType "bbox", area "all", 100 dets).

The metric of Lin et al. 2014 (Microsoft COCO), step for step as the reference evaluator does it, so
that the numbers agree with it to rounding:

1. Per image and class: detections sorted by score, highest first (stable mergesort, so ties keep
   their input order), and cut to `max_dets`. A ground truth is ignored if it is a crowd or its area
   lies outside [0, 1e10]. IoU of (x, y, w, h) boxes; for a crowd box the union is the detection's
   own area.
2. Greedy matching at each IoU threshold t in 0.5, 0.55, …, 0.95: in score order, a detection takes
   the free ground truth of highest IoU ≥ min(t, 1 - 1e-10) (the last one on ties), trying regular
   ground truths before ignored ones. Crowd boxes stay free, so they can absorb many detections. A
   detection on an ignored ground truth is itself ignored, as is an unmatched one of area > 1e10.
3. Per class, over all images: detections sorted by score (stable), cumulative true and false
   positives, recall = tp / n_gt and precision = tp / (tp + fp + eps); precision made monotone from the
   right and read at 101 recall points 0, 0.01, …, 1 (0 past the highest recall reached).
4. AP@[.5:.95] is the mean of those precisions over thresholds, recall points and classes. A class
   with no regular ground truth scores -1 and is left out of every mean; a mean of nothing is -1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from convattn.layers.boxes import check_boxes

__all__ = ["IOU_THRESHOLDS", "RECALL_POINTS", "coco_map"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # as pycocotools builds them (not arange: it overshoots)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_AREA_MAX = 1e5**2  # the "all" area range is [0, 1e10]


def _array(value: Any) -> np.ndarray:
    """A tensor, array or list as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(name: str, value: Any) -> np.ndarray:
    """(N, 4) float64 xywh boxes with w, h > 0; an empty input reads as no boxes."""
    boxes = np.asarray(_array(value), dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    check_boxes(name, torch.from_numpy(boxes), fmt="xywh")
    return boxes


def _vector(name: str, value: Any, n: int, kind: str) -> np.ndarray:
    """A (n,) array of integers ("int"), booleans ("bool") or finite float64 ("float")."""
    arr = _array(value)
    if arr.size == 0:
        arr = arr.reshape(0)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its boxes, got {arr.shape}")
    if kind == "int":
        if not np.issubdtype(arr.dtype, np.integer) and arr.size:
            raise TypeError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    if kind == "bool":
        return arr.astype(bool)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}[{i}] = {arr[i]} is not finite")
    return arr


def _entry(name: str, entry: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """`entry` as a dict holding `keys`."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{name} must be a dict with keys {keys}, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{name} lacks the keys {missing}")
    return entry


def _read_gt(i: int, entry: Any) -> dict[str, np.ndarray]:
    """One image's ground truth: boxes, labels, crowd flags, ignore flags."""
    name = f"ground_truth[{i}]"
    entry = _entry(name, entry, ("boxes", "labels"))
    boxes = _boxes(f"{name}['boxes']", entry["boxes"])
    n = len(boxes)
    labels = _vector(f"{name}['labels']", entry["labels"], n, "int")
    crowd, area = entry.get("iscrowd"), entry.get("area")
    crowd = _vector(f"{name}['iscrowd']", np.zeros(n) if crowd is None else crowd, n, "bool")
    area = _vector(f"{name}['area']", boxes[:, 2] * boxes[:, 3] if area is None else area, n, "float")
    ignore = crowd | (area < 0) | (area > _AREA_MAX)
    return {"boxes": boxes, "labels": labels, "crowd": crowd, "ignore": ignore}


def _read_dt(i: int, entry: Any) -> dict[str, np.ndarray]:
    """One image's detections: boxes, scores, labels."""
    name = f"detections[{i}]"
    entry = _entry(name, entry, ("boxes", "scores", "labels"))
    boxes = _boxes(f"{name}['boxes']", entry["boxes"])
    scores = _vector(f"{name}['scores']", entry["scores"], len(boxes), "float")
    labels = _vector(f"{name}['labels']", entry["labels"], len(boxes), "int")
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes in pycocotools' float order; a crowd gt's union is the detection's area."""
    dx, dy, dw, dh = (c[:, None] for c in dt.T)  # (D, 1) each
    gx, gy, gw, gh = (c[None, :] for c in gt.T)  # (1, G) each
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    d_area, g_area = dw * dh, gw * gh
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _match(ious: np.ndarray, crowd: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching at every threshold: (T, D) matched and (T, D) matched-to-an-ignored-gt flags.

    `ious` is (D, G) with detections in score order. The reference sorts ignored ground truths last
    (stably) and stops at them once it holds a regular match; choosing within each group is the same.
    """
    T, (D, G) = len(IOU_THRESHOLDS), ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    taken = np.zeros((T, G), dtype=bool)
    matched = np.zeros((T, D), dtype=bool)
    on_ignored = np.zeros((T, D), dtype=bool)
    if D == 0 or G == 0:
        return matched, on_ignored
    rows = np.arange(T)
    for d in range(D):
        ok = (~taken | crowd) & (ious[d] >= thresholds)  # (T, G)
        regular = ok & ~ignore
        # A regular ground truth wins over any ignored one; only without one do ignored ones count.
        cand = np.where(regular.any(1, keepdims=True), regular, ok)
        found = cand.any(1)
        # The reference keeps the last gt of the highest IoU: an equal IoU later on replaces a match.
        best = G - 1 - np.where(cand, ious[d], -np.inf)[:, ::-1].argmax(1)
        matched[:, d] = found
        on_ignored[:, d] = found & ignore[best]
        taken[rows[found], best[found]] = True
    return matched, on_ignored


def _precision(
    scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, R) interpolated precision and (T,) final recall of one class from its pooled detections."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)  # (T, D)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    recall = tp / n_gt
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    D = len(scores)
    out = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        hit = idx < D
        out[t, hit] = envelope[t, idx[hit]]
    final = recall[:, -1] if D else np.zeros(len(IOU_THRESHOLDS))
    return out, final


def _evaluate_class(
    label: int, gts: list[dict[str, np.ndarray]], dts: list[dict[str, np.ndarray]], max_dets: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, R) precision and (T,) recall of one class over all images; -1 where it has no regular gt."""
    scores, matched, ignored, n_gt = [], [], [], 0
    for gt, dt in zip(gts, dts, strict=True):
        g, d = gt["labels"] == label, dt["labels"] == label
        g_boxes, crowd, ignore = gt["boxes"][g], gt["crowd"][g], gt["ignore"][g]
        d_order = np.argsort(-dt["scores"][d], kind="mergesort")[:max_dets]
        d_boxes, d_scores = dt["boxes"][d][d_order], dt["scores"][d][d_order]
        hit, on_ignored = _match(_box_iou(d_boxes, g_boxes, crowd), crowd, ignore)
        too_big = d_boxes[:, 2] * d_boxes[:, 3] > _AREA_MAX
        scores.append(d_scores)
        matched.append(hit)
        ignored.append(on_ignored | (~hit & too_big))
        n_gt += int((~ignore).sum())
    T, R = len(IOU_THRESHOLDS), len(RECALL_POINTS)
    if n_gt == 0:
        return -np.ones((T, R)), -np.ones(T)
    return _precision(np.concatenate(scores), np.hstack(matched), np.hstack(ignored), n_gt)


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def coco_map(
    detections: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box AP@[.5:.95], AP50, AP75, per-class AP and AR@max_dets, equal to pycocotools' numbers.

    Classes are the labels present in `ground_truth`; detections of other labels are not scored.

    Args:
        detections: one dict per image with "boxes" (M, 4) xywh in pixels, "scores" (M,) and
            "labels" (M,) integers.
        ground_truth: one dict per image, in the same order, with "boxes" (N, 4) xywh in pixels,
            "labels" (N,), and optionally "iscrowd" (N,) (default all 0) and "area" (N,) (default w·h).
        max_dets: detections kept per image and class, highest scores first.

    Returns:
        {"AP", "AP50", "AP75", "recall", "per_class": {label: AP}} as floats; -1 marks a value with
        no regular (non-crowd) ground truth to measure it on, as in pycocotools.

    Raises:
        ValueError: for lists of different lengths, boxes not (N, 4) or with w, h ≤ 0, labels, scores or
            flags whose length differs from their boxes', or scores that are not finite.
        TypeError: for an entry that is not a dict, or labels that are not integers.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"need one detections entry per image, got {len(detections)=} and {len(ground_truth)=}"
        )
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive int, got {max_dets=!r}")
    gts = [_read_gt(i, g) for i, g in enumerate(ground_truth)]
    dts = [_read_dt(i, d) for i, d in enumerate(detections)]
    labels = sorted({int(c) for g in gts for c in g["labels"]})
    T, R = len(IOU_THRESHOLDS), len(RECALL_POINTS)
    precision, recall = np.empty((T, R, len(labels))), np.empty((T, len(labels)))
    for k, label in enumerate(labels):
        precision[:, :, k], recall[:, k] = _evaluate_class(label, gts, dts, max_dets)
    return {
        "AP": _mean_valid(precision),
        "AP50": _mean_valid(precision[0]),
        "AP75": _mean_valid(precision[5]),
        "recall": _mean_valid(recall),
        "per_class": {label: _mean_valid(precision[:, :, k]) for k, label in enumerate(labels)},
    }
