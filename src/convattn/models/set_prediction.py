"""Set prediction for detection (Carion et al. 2020): Hungarian matching and DETR's loss.

A detector with Q queries predicts, for every query, class logits over K classes plus "no object"
(index K) and a box (cx, cy, w, h), normalised to the image (`convattn.layers.boxes`). Training needs
no anchors and no non-maximum suppression: each image's predictions are matched one-to-one to its
targets by the assignment of least total cost

    cost(q, t) = w_class · (-p_q[label_t]) + w_L1 · ‖b_q - b_t‖₁ + w_GIoU · (-GIoU(b_q, b_t)),

(`HungarianMatcher`, scipy's `linear_sum_assignment`, weights 1, 5, 2), and `SetCriterion` then
applies cross-entropy to every query (unmatched ones learn "no object", down-weighted by `eos_coef`
= 0.1) and L1 + GIoU losses to the matched boxes, normalised by the number of target boxes, which is
averaged over processes under torchrun. With auxiliary outputs (one per decoder layer) every layer's
predictions are matched and scored alike, and the losses are summed.

Targets are a list with one dict per image: "labels" (N,) int64 in [0, K) and "boxes" (N, 4) cxcywh.
Images without objects are allowed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from convattn.layers.boxes import check_boxes, cxcywh_to_xyxy, generalized_box_iou
from convattn.utils.checks import check_probability

__all__ = ["HungarianMatcher", "SetCriterion", "check_targets"]

Target = dict[str, Tensor]


def check_targets(targets: Any, num_classes: int, num_queries: int) -> list[Target]:
    """Refuse targets a detector cannot learn from, naming the image and the value.

    Raises:
        TypeError: when `targets` is not a list of dicts with "labels" and "boxes" tensors.
        ValueError: for labels outside [0, num_classes), boxes with w or h ≤ 0 or not (N, 4), label and
            box counts that differ, or an image with more objects than the detector has queries.
    """
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts, one per image, got {type(targets).__name__}")
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or not all(isinstance(t.get(k), Tensor) for k in ("labels", "boxes")):
            raise TypeError(f"targets[{i}] must be a dict with 'labels' and 'boxes' tensors")
        labels, boxes = t["labels"], t["boxes"]
        if labels.ndim != 1 or boxes.ndim != 2 or boxes.shape != (labels.numel(), 4):
            raise ValueError(
                f"targets[{i}] needs labels (N,) and boxes (N, 4), got {tuple(labels.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        if labels.numel() > num_queries:
            raise ValueError(
                f"targets[{i}] has {labels.numel()} objects, more than the detector's {num_queries} queries"
            )
        if labels.is_floating_point() or (
            labels.numel() and not (0 <= labels.min() <= labels.max() < num_classes)
        ):
            raise ValueError(
                f"targets[{i}] labels must be integers in [0, {num_classes}), got {labels.tolist()}"
            )
        check_boxes(f"targets[{i}] boxes", boxes)
    return list(targets)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of each image's predictions to its targets at least total cost.

    Args:
        cost_class, cost_bbox, cost_giou: the weights of -p(label), the L1 box distance and -GIoU.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}")
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("the matching costs cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, target: Target) -> Tensor:
        """(Q, N) matching cost of one image's Q predictions against its N targets."""
        prob = logits.softmax(-1)  # (Q, K + 1)
        cost = -self.cost_class * prob[:, target["labels"]]  # (Q, N)
        cost = cost + self.cost_bbox * torch.cdist(boxes, target["boxes"].to(boxes.dtype), p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target["boxes"].to(boxes.dtype)))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, logits: Tensor, boxes: Tensor, targets: list[Target]) -> list[tuple[Tensor, Tensor]]:
        """logits (B, Q, K + 1), boxes (B, Q, 4) -> per image (query indices, target indices), int64,
        sorted by query, each of length N_i (every target gets exactly one query)."""
        out = []
        for b, target in enumerate(targets):
            n = target["labels"].numel()
            if n == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[b].float(), boxes[b].float(), target).cpu()  # (Q, N)
            rows, cols = linear_sum_assignment(cost.numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out


class SetCriterion(nn.Module):
    """DETR's loss: matching, then cross-entropy, L1 and GIoU, with auxiliary decoder losses.

    Args:
        num_classes: K, object classes (the logits have K + 1 entries, the last one "no object").
        matcher: the assignment (default `HungarianMatcher()` with weights 1, 5, 2).
        eos_coef: weight of the "no object" class in the cross-entropy (0.1).
        weights: weights of the "ce", "bbox" and "giou" terms in the total (1, 5, 2).
        across_processes: under torchrun, average the number of target boxes over the processes (as
            training needs); False for a loss one process computes alone (an evaluation), which would
            otherwise wait for the others forever.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        weights: dict[str, float] | None = None,
        across_processes: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.eos_coef = check_probability("eos_coef", eos_coef)
        self.weights = {"ce": 1.0, "bbox": 5.0, "giou": 2.0, **(weights or {})}
        self.across_processes = bool(across_processes)
        unknown = set(self.weights) - {"ce", "bbox", "giou"}
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; the terms are ce, bbox and giou")

    def num_boxes(self, targets: list[Target], device: torch.device) -> float:
        """Target boxes per process, averaged over processes under torchrun; at least 1."""
        n = torch.tensor(float(sum(t["labels"].numel() for t in targets)), device=device)
        if self.across_processes and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return max(float(n), 1.0)

    def layer_losses(
        self, logits: Tensor, boxes: Tensor, targets: list[Target], num_boxes: float
    ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """The three terms for one set of predictions (B, Q, K + 1) and (B, Q, 4), and its matching."""
        B, Q, _ = logits.shape
        match = self.matcher(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(match)]).to(logits.device)
        query_idx = torch.cat([q for q, _ in match]).to(logits.device)
        classes = torch.full((B, Q), self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, match, strict=True)]
        ).to(logits.device)
        weight = torch.ones(self.num_classes + 1, dtype=logits.dtype, device=logits.device)
        weight[-1] = self.eos_coef  # "no object" counts eos_coef as much as an object
        ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=weight)  # (B, K + 1, Q) vs (B, Q)
        pred = boxes[batch_idx, query_idx]  # (M, 4)
        true = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, match, strict=True)]).to(pred)
        l1 = F.l1_loss(pred, true, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(true)))
        return {"ce": ce, "bbox": l1, "giou": (1 - giou).sum() / num_boxes}, match

    def forward(self, outputs: dict[str, Any], targets: list[Target]) -> dict[str, Tensor]:
        """outputs: "logits" (B, Q, K + 1), "boxes" (B, Q, 4), optional "aux" (a list of such dicts, one
        per earlier decoder layer). Returns every term ("ce", "bbox", "giou", and "ce_0", ... for the
        auxiliary layers) and their weighted sum as "loss"."""
        logits, boxes = outputs["logits"], outputs["boxes"]
        if (
            logits.ndim != 3
            or logits.shape[-1] != self.num_classes + 1
            or boxes.shape != (*logits.shape[:2], 4)
        ):
            raise ValueError(
                f"expected logits (B, Q, {self.num_classes + 1}) and boxes (B, Q, 4), got "
                f"{tuple(logits.shape)} and {tuple(boxes.shape)}"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
        targets = check_targets(targets, self.num_classes, logits.shape[1])
        n = self.num_boxes(targets, logits.device)
        terms, _ = self.layer_losses(logits, boxes, targets, n)
        for i, aux in enumerate(outputs.get("aux", [])):
            aux_terms, _ = self.layer_losses(aux["logits"], aux["boxes"], targets, n)
            terms.update({f"{k}_{i}": v for k, v in aux_terms.items()})
        terms["loss"] = torch.stack([self.weights[k.split("_")[0]] * v for k, v in terms.items()]).sum()
        return terms
