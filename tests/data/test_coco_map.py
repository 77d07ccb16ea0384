"""COCO box mAP held to pycocotools' COCOeval on random detection sets, plus hand-computed cases."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
import torch

from convattn.data.coco_map import coco_map

COCO = pytest.importorskip("pycocotools.coco").COCO
COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval

Image = dict[str, Any]
TOL = 1e-9


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _pycocotools(detections: list[Image], ground_truth: list[Image], max_dets: int = 100) -> dict[str, Any]:
    """The same metrics read from COCOeval, the categories being the labels present in the gt."""
    labels = sorted({int(c) for g in ground_truth for c in g["labels"]})
    images = [{"id": i + 1} for i in range(len(ground_truth))]
    categories = [{"id": c} for c in labels]
    anns = []
    for i, g in enumerate(ground_truth):
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        area = g.get("area", boxes[:, 2] * boxes[:, 3])
        crowd = g.get("iscrowd", np.zeros(len(boxes)))
        for box, label, a, c in zip(boxes, g["labels"], area, crowd, strict=True):
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label), "iscrowd": int(c)}
            anns.append({**ann, "bbox": [float(v) for v in box], "area": float(a)})
    results = [
        {"image_id": i + 1, "category_id": int(label), "bbox": [float(v) for v in box], "score": float(s)}
        for i, d in enumerate(detections)
        for box, s, label in zip(np.asarray(d["boxes"]).reshape(-1, 4), d["scores"], d["labels"], strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": anns}
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "categories": categories, "annotations": []}
            coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if max_dets != 100:
            E.params.maxDets = [max_dets]
        E.evaluate()
        E.accumulate()
        if max_dets == 100:  # the printed summary assumes maxDets [1, 10, 100]
            E.summarize()
    precision = E.eval["precision"][:, :, :, 0, -1]  # (T, R, K), area "all", the largest maxDets
    out = {
        "AP": _mean_valid(precision),
        "AP50": _mean_valid(precision[0]),
        "AP75": _mean_valid(precision[5]),
        "recall": _mean_valid(E.eval["recall"][:, :, 0, -1]),
        "per_class": {c: _mean_valid(precision[:, :, k]) for k, c in enumerate(labels)},
    }
    if max_dets == 100:  # the summary reads the same numbers
        assert np.allclose(E.stats[[0, 1, 2, 8]], [out[k] for k in ("AP", "AP50", "AP75", "recall")])
    return out


def _max_difference(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    assert ours["per_class"].keys() == ref["per_class"].keys()
    diffs = [abs(ours[k] - ref[k]) for k in ("AP", "AP50", "AP75", "recall")]
    return max(diffs + [abs(ours["per_class"][c] - ref["per_class"][c]) for c in ref["per_class"]])


def _random_boxes(rng: np.random.Generator, n: int, integer: bool) -> np.ndarray:
    boxes = np.concatenate([rng.uniform(0, 200, (n, 2)), rng.uniform(2, 80, (n, 2))], axis=1)
    return np.round(boxes) if integer else boxes


def _jitter(rng: np.random.Generator, boxes: np.ndarray, scale: np.ndarray, integer: bool) -> np.ndarray:
    """Near-duplicates: corners moved by `scale` (N, 1) of the size, sizes scaled by about e^±scale."""
    shift = rng.normal(0, 1, (len(boxes), 2)) * scale * boxes[:, 2:]
    size = boxes[:, 2:] * np.exp(rng.normal(0, 1, (len(boxes), 2)) * scale)
    if integer:
        return np.concatenate([np.round(boxes[:, :2] + shift), np.maximum(np.round(size), 1)], axis=1)
    return np.concatenate([boxes[:, :2] + shift, size], axis=1)


# Two gts at equal IoU 2/3 with the first detection, the second detection on the first gt alone: the
# first detection must take the later gt (pycocotools keeps the last of equal IoUs) for both to hit.
TIE_GT = np.array([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 10.0, 10.0]])
TIE_DT = np.array([[2.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])


def _random_gt(rng: np.random.Generator, classes: np.ndarray, integer: bool) -> Image:
    n = 0 if rng.random() < 0.2 else int(rng.integers(1, 9))
    boxes, labels = _random_boxes(rng, n, integer), rng.choice(classes, n)
    gt: Image = {"boxes": boxes, "labels": labels, "iscrowd": rng.random(len(boxes)) < 0.15}
    if rng.random() < 0.2:  # explicit areas, a few beyond the "all" range (ignored like a crowd)
        gt["area"] = boxes[:, 2] * boxes[:, 3] * np.where(rng.random(len(boxes)) < 0.2, 1e8, 1.0)
    return gt


def _random_detections(rng: np.random.Generator, gt: Image, classes: np.ndarray, integer: bool) -> Image:
    gt_boxes, gt_labels = gt["boxes"], gt["labels"]
    src = np.repeat(np.arange(len(gt_boxes)), rng.integers(0, 4, len(gt_boxes)))  # 0-3 copies of each gt
    if len(gt_boxes) and rng.random() < 0.1:  # a swarm of over 100 on one class's gts
        src = np.append(src, rng.choice(np.flatnonzero(gt_labels == gt_labels[0]), rng.integers(101, 140)))
    scale = rng.choice([0.0, 0.02, 0.1, 0.3], (len(src), 1))  # 0: an exact copy
    boxes = [_jitter(rng, gt_boxes[src], scale, integer)]
    labels = [np.where(rng.random(len(src)) < 0.1, rng.choice(classes, len(src)), gt_labels[src])]
    n_fp = int(rng.integers(0, 6))
    boxes.append(_random_boxes(rng, n_fp, integer))
    labels.append(rng.choice(np.append(classes, 99), n_fp))  # 99: a class never in the ground truth
    if rng.random() < 0.05:  # a huge false positive, area > 1e10: ignored when unmatched
        boxes.append(np.array([[0.0, 0.0, 2e5, 2e5]]))
        labels.append(classes[:1])
    n = sum(len(b) for b in boxes)
    scores = rng.choice([0.2, 0.5, 0.7, 0.9], n) if rng.random() < 0.5 else rng.random(n)
    return {"boxes": np.concatenate(boxes), "scores": scores, "labels": np.concatenate(labels)}


def _add_tie(rng: np.random.Generator, det: Image, gt: Image, label: int) -> tuple[Image, Image]:
    """The two-gt tie, somewhere in the image, its detections ranked first."""
    offset = np.append(rng.integers(0, 150, 2), [0, 0])
    gt = {
        "boxes": np.concatenate([gt["boxes"], TIE_GT + offset]),
        "labels": np.append(gt["labels"], [label, label]),
        "iscrowd": np.append(gt["iscrowd"], [False, False]),
        **({"area": np.append(gt["area"], [100.0, 100.0])} if "area" in gt else {}),
    }
    det = {
        "boxes": np.concatenate([det["boxes"], TIE_DT + offset]),
        "scores": np.append(det["scores"], [2.0, 1.5]),
        "labels": np.append(det["labels"], [label, label]),
    }
    return det, gt


def _random_image(rng: np.random.Generator, classes: np.ndarray, integer: bool) -> tuple[Image, Image]:
    gt = _random_gt(rng, classes, integer)
    if rng.random() < 0.15:
        return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}, gt
    det = _random_detections(rng, gt, classes, integer)
    return _add_tie(rng, det, gt, int(classes[0])) if rng.random() < 0.15 else (det, gt)


def _random_case(seed: int) -> tuple[list[Image], list[Image]]:
    rng = np.random.default_rng(seed)
    classes = rng.choice([0, 1, 2, 5, 9], int(rng.integers(1, 4)), replace=False)
    integer = bool(rng.random() < 0.5)
    pairs = [_random_image(rng, classes, integer) for _ in range(int(rng.integers(1, 7)))]
    detections, ground_truth = map(list, zip(*pairs, strict=True))
    if rng.random() < 0.3:  # a class in the ground truth that is never detected
        g = ground_truth[0]
        ground_truth[0] = {
            "boxes": np.concatenate([g["boxes"], [[5.0, 5.0, 20.0, 30.0]]]),
            "labels": np.append(g["labels"], 42),
            "iscrowd": np.append(g["iscrowd"], False),
        }
    if not any(len(g["labels"]) for g in ground_truth):
        ground_truth[-1] = {"boxes": np.array([[10.0, 10.0, 30.0, 40.0]]), "labels": classes[:1]}
    return detections, ground_truth


@pytest.mark.parametrize("seed", range(150))
def test_matches_pycocotools_on_random_cases(seed):
    detections, ground_truth = _random_case(seed)
    assert _max_difference(coco_map(detections, ground_truth), _pycocotools(detections, ground_truth)) < TOL


@pytest.mark.parametrize("seed", range(10))
def test_matches_pycocotools_with_fewer_max_dets(seed):
    detections, ground_truth = _random_case(1000 + seed)
    ours = coco_map(detections, ground_truth, max_dets=3)
    assert _max_difference(ours, _pycocotools(detections, ground_truth, max_dets=3)) < TOL


def test_over_100_detections_are_cut_per_image_and_class():
    # 150 detections of class 1, the true one scored lowest: past the cut of 100, so AP 0.
    # 150 of class 2 scored below class 1's false positives, the true one first: a cut of 100 per
    # image (not per image and class) would drop it.
    gt = {"boxes": np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 10.0, 10.0]]), "labels": np.array([1, 2])}
    far = np.tile([[100.0, 100.0, 5.0, 5.0]], (149, 1))
    boxes = np.concatenate([far, gt["boxes"][:1], gt["boxes"][1:], far])
    scores = np.concatenate([np.full(149, 0.9), [0.1, 0.3], np.full(149, 0.2)])
    det = {"boxes": boxes, "scores": scores, "labels": np.repeat([1, 2], 150)}
    ours = coco_map([det], [gt])
    assert ours["per_class"][1] == 0.0 and ours["per_class"][2] == pytest.approx(1.0, abs=1e-12)
    assert _max_difference(ours, _pycocotools([det], [gt])) < TOL


def _one_image(gt_boxes: list, det_boxes: list, scores: list, **gt_extra: Any) -> tuple[list, list]:
    gt = {
        "boxes": torch.as_tensor(gt_boxes),
        "labels": torch.ones(len(gt_boxes), dtype=torch.long),
        **gt_extra,
    }
    det = {
        "boxes": torch.tensor(det_boxes).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.ones(len(det_boxes), dtype=torch.long),
    }
    return [det], [gt]


BOX_A, BOX_B, FAR = [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 10.0, 10.0], [100.0, 100.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # Every gt found first: precision 1 everywhere (1/(1 + eps) for the first one, within 1e-15).
        (
            _one_image([BOX_A, BOX_B], [BOX_A, BOX_B], [0.9, 0.8]),
            dict(AP=1.0, AP50=1.0, AP75=1.0, recall=1.0),
        ),
        # One false positive above the true one: precision 1/2 at every recall point.
        (_one_image([BOX_A], [FAR, BOX_A], [0.9, 0.8]), dict(AP=0.5, AP50=0.5, AP75=0.5, recall=1.0)),
        # TP, FP, TP: precision 1 up to recall 0.5 (51 points), 2/3 at the 50 points above.
        (_one_image([BOX_A, BOX_B], [BOX_A, FAR, BOX_B], [0.9, 0.8, 0.7]), dict(AP=(51 + 100 / 3) / 101)),
        # IoU 0.72: a hit at thresholds 0.5 to 0.7 (5 of 10), a miss from 0.75 on.
        (_one_image([BOX_A], [[0.0, 0.0, 10.0, 7.2]], [0.9]), dict(AP=0.5, AP50=1.0, AP75=0.0, recall=0.5)),
        # Detections on a crowd box (two here: it is never used up) are ignored, not false positives.
        (
            _one_image([BOX_A, FAR], [[100.0, 100.0, 5.0, 5.0], FAR, BOX_A], [0.9, 0.9, 0.5], iscrowd=[0, 1]),
            dict(AP=1.0, recall=1.0),
        ),
        # No gt anywhere: nothing to measure, -1 as pycocotools reports it.
        (_one_image(torch.zeros(0, 4), [BOX_A], [0.9]), dict(AP=-1.0, AP50=-1.0, recall=-1.0, per_class={})),
    ],
)
def test_hand_computed_cases(case, expected):
    ours = coco_map(*case)
    for key, value in expected.items():
        assert ours[key] == (value if key == "per_class" else pytest.approx(value, abs=1e-12)), key
    if ours["per_class"]:
        assert _max_difference(ours, _pycocotools(*case)) < TOL


def test_a_class_with_only_crowd_gt_is_left_out():
    ground_truth = [
        {"boxes": np.array([BOX_A, FAR]), "labels": np.array([1, 2]), "iscrowd": np.array([0, 1])}
    ]
    detections = [
        {"boxes": np.array([BOX_A, FAR]), "scores": np.array([0.9, 0.8]), "labels": np.array([1, 2])}
    ]
    ours = coco_map(detections, ground_truth)
    assert ours["per_class"][2] == -1.0
    assert ours["AP"] == ours["per_class"][1] == pytest.approx(1.0, abs=1e-12)
    assert _max_difference(ours, _pycocotools(detections, ground_truth)) < TOL


def test_tensors_arrays_and_lists_agree():
    detections, ground_truth = _random_case(7)
    as_lists = [{k: np.asarray(v).tolist() for k, v in d.items()} for d in detections]
    as_tensors = [{k: torch.as_tensor(np.asarray(v)) for k, v in g.items()} for g in ground_truth]
    assert coco_map(as_lists, as_tensors) == coco_map(detections, ground_truth)


GOOD_GT = {"boxes": np.array([BOX_A]), "labels": np.array([1])}
GOOD_DT = {"boxes": np.array([BOX_A]), "scores": np.array([0.5]), "labels": np.array([1])}


@pytest.mark.parametrize(
    ("detections", "ground_truth", "error", "match"),
    [
        ([GOOD_DT, GOOD_DT], [GOOD_GT], ValueError, r"len\(detections\)=2 and len\(ground_truth\)=1"),
        ([GOOD_DT], [{**GOOD_GT, "boxes": np.zeros((1, 5))}], ValueError, r"\['boxes'\] must have shape"),
        ([{**GOOD_DT, "boxes": np.zeros(4)}], [GOOD_GT], ValueError, r"detections\[0\]\['boxes'\]"),
        ([GOOD_DT], [{**GOOD_GT, "boxes": np.array([[0.0, 0.0, 0.0, 5.0]])}], ValueError, "w > 0 and h > 0"),
        ([{**GOOD_DT, "boxes": np.array([[0, 0, 3, -1]])}], [GOOD_GT], ValueError, r"detections\[0\]"),
        (
            [{**GOOD_DT, "scores": np.array([0.5, 0.4])}],
            [GOOD_GT],
            ValueError,
            r"\['scores'\] must have shape",
        ),
        ([{**GOOD_DT, "labels": np.array([1, 1])}], [GOOD_GT], ValueError, r"\['labels'\] must have shape"),
        ([{**GOOD_DT, "scores": np.array([np.nan])}], [GOOD_GT], ValueError, r"\['scores'\]\[0\] = nan"),
        ([GOOD_DT], [{**GOOD_GT, "iscrowd": np.array([0, 1])}], ValueError, r"\['iscrowd'\] must have"),
        ([GOOD_DT], [{**GOOD_GT, "labels": np.array([1.5])}], TypeError, "integer class labels"),
        ([GOOD_DT], [{"boxes": GOOD_GT["boxes"]}], ValueError, r"lacks the keys \['labels'\]"),
        ([GOOD_DT], [[BOX_A]], TypeError, r"ground_truth\[0\] must be a dict"),
    ],
)
def test_bad_inputs_are_named(detections, ground_truth, error, match):
    with pytest.raises(error, match=match):
        coco_map(detections, ground_truth)


def test_bad_max_dets():
    with pytest.raises(ValueError, match="max_dets=0"):
        coco_map([GOOD_DT], [GOOD_GT], max_dets=0)


def test_empty_images_are_allowed():
    empty_dt = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    empty_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    detections, ground_truth = [empty_dt, GOOD_DT, empty_dt], [GOOD_GT, empty_gt, empty_gt]
    ours = coco_map(detections, ground_truth)
    assert ours["AP"] == 0.0 and ours["recall"] == 0.0  # the one detection lies on an image without gt
    assert _max_difference(ours, _pycocotools(detections, ground_truth)) < TOL
