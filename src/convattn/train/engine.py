"""One epoch of training and one pass of evaluation, as ConvNeXt's engine.py: no files, no set-up.

`train_one_epoch` runs the optimiser over the batches it is given and keeps its place in an
`EpochState` (the next batch, the optimiser step and the running sums), so the caller can checkpoint
the state between any two batches and resume the epoch from it, bit for bit. Its `criterion` turns a
batch's outputs and targets into the loss (cross-entropy by default; `detection_criterion` for a
detector's set prediction). `evaluate` measures a classifier on a data set in eval mode,
`evaluate_detection` a detector (COCO mAP).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.data import DetectionSet, ImageSet, batches, detection_batches

__all__ = [
    "Criterion",
    "Diverged",
    "EpochState",
    "classification_criterion",
    "detection_criterion",
    "evaluate",
    "evaluate_detection",
    "evaluate_knn",
    "moco_criterion",
    "progress_bar",
    "train_one_epoch",
]

# (model outputs, targets) -> (the batch's mean loss, how many of its images were classified right)
Criterion = Callable[[Any, Any], tuple[Tensor, int]]


def classification_criterion(label_smoothing: float = 0.0) -> Criterion:
    """Cross-entropy on (B, K) logits against (B,) labels, and the count of right argmaxes."""

    def criterion(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, int((logits.detach().argmax(1) == labels).sum())

    return criterion


def detection_criterion(num_classes: int, *, across_processes: bool = True) -> Criterion:
    """DETR's set loss (`SetCriterion`: matching, cross-entropy, L1 and GIoU, auxiliary layers); a
    detector has no per-image accuracy, so the count is 0. `across_processes`: as `SetCriterion`'s
    (False when one process evaluates alone)."""
    from convattn.models.set_prediction import SetCriterion

    set_loss = SetCriterion(num_classes, across_processes=across_processes)

    def criterion(outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> tuple[Tensor, int]:
        return set_loss(outputs, targets)["loss"], 0

    return criterion


def moco_criterion(outputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, int]:
    """MoCo's InfoNCE: the (1 + K)-way cross-entropy of its logits, and how many queries picked their own
    key (the pretext task's accuracy; the class labels are not used)."""
    loss = F.cross_entropy(outputs["logits"], outputs["labels"])
    return loss, int((outputs["logits"].detach().argmax(1) == 0).sum())


def _keep_frozen_norms(net: nn.Module) -> None:
    """Batch norms whose parameters are all frozen stay in eval mode: a frozen encoder (a linear probe)
    keeps its statistics too."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                m.eval()


@contextlib.contextmanager
def _evaluating(model: nn.Module, data: ImageSet | DetectionSet) -> Iterator[None]:
    """The block runs `model` in eval mode on `data`, then restores its mode; a ValueError first if
    `data` holds no images (an empty split has no score, not one of 0)."""
    if len(data) == 0:
        raise ValueError(f"the {data.split} split of {data.name} holds no images: nothing to evaluate on")
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _to_device(y: Any, device: torch.device | str) -> Any:
    """Labels (a tensor) or detection targets (a list of dicts of tensors) on `device`."""
    if isinstance(y, Tensor):
        return y.to(device)
    return [{k: v.to(device) for k, v in t.items()} for t in y]


class Diverged(RuntimeError):  # noqa: N818 (a training outcome, named as the command reports it)
    """Training stopped because the loss (or the weights) stopped being finite numbers."""


class _Bar(Protocol):
    def update(self, n: float = 1) -> Any: ...


@dataclass
class EpochState:
    """Where training stands: the next batch of the epoch, the optimiser step, and the epoch's sums.

    Attributes:
        batch: the index of the next batch of the epoch (0 at an epoch boundary).
        step: optimiser steps taken since the start of the run.
        seen: training images of this epoch seen so far (by this process).
        loss_sum: their summed cross-entropy (each batch's mean times its size).
        correct: how many of them the model classified right, before its update.
    """

    batch: int = 0
    step: int = 0
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0

    def sums(self) -> dict[str, Any]:
        """The running sums, as a checkpoint saves them."""
        return {"seen": self.seen, "loss_sum": self.loss_sum, "correct": self.correct}

    def next_epoch(self) -> None:
        """Batch 0 of the next epoch, with empty sums; the step count runs on."""
        self.batch, self.seen, self.loss_sum, self.correct = 0, 0, 0.0, 0


def train_one_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Iterable[tuple[Tensor, Any]],
    state: EpochState,
    *,
    lr: Callable[[int], float],
    device: torch.device | str = "cpu",
    label_smoothing: float = 0.0,
    criterion: Criterion | None = None,
    clip_grad: float = 0.0,
    freeze_norms: bool = False,
    stop: Callable[[], bool] = lambda: False,
    bar: _Bar | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> bool:
    """Train `net` on the batches of `stream`, which starts at batch `state.batch` of the epoch.

    Each batch sets the learning rate `lr(step)`, takes one optimiser step on the (label-smoothed)
    cross-entropy, with the global gradient norm clipped to `clip_grad` (0: off), and adds to the
    sums of `state`, which is updated in place.

    Args:
        criterion: (outputs, targets) -> (loss, right answers); default: `classification_criterion`
            with `label_smoothing`. The targets are labels or, for a detector, a list of dicts.
        freeze_norms: batch norms whose parameters are all frozen stay in eval mode (a linear probe's
            encoder keeps its statistics). Off for MoCo, whose key encoder has no gradient but
            normalises with its batches' statistics.
        stop: asked after every batch; when it answers True the epoch ends there.
        bar: a progress bar, advanced by one per batch.
        memory_format: the layout each (B, C, H, W) batch is moved to the device in.

    Returns:
        True if `stop` ended the epoch early (`state` then names the next batch), else False.

    Raises:
        Diverged: a batch's loss is not finite (NaN or infinite); no update was taken for it.
    """
    criterion = criterion or classification_criterion(label_smoothing)
    net.train()
    if freeze_norms:
        _keep_frozen_norms(net)
    for x, y in stream:
        x, y = x.to(device, memory_format=memory_format), _to_device(y, device)
        for group in optimizer.param_groups:
            group["lr"] = lr(state.step) * group.get("lr_scale", 1.0)
        loss, right = criterion(net(x), y)
        value = loss.item()
        if not math.isfinite(value):  # before the update: the weights of the last step stay as they were
            raise Diverged(f"the loss is {value} at batch {state.batch} (step {state.step})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        optimizer.step()
        state.batch += 1
        state.step += 1
        state.seen += len(y)
        state.loss_sum += value * len(y)
        state.correct += right
        if bar is not None:
            bar.update(1)
        if stop():
            return True
    return False


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `data`, in eval mode, batches in `memory_format`.

    Raises:
        ValueError: `data` holds no images (an empty split has no accuracy, not one of 0).
    """
    with _evaluating(model, data):
        correct, loss, n = 0, 0.0, 0
        for x, y in batches(data, batch_size, seed=0, epoch=0, shuffle=False):
            x, y = x.to(device, memory_format=memory_format), y.to(device)
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return correct / n, loss / n


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    data: DetectionSet,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """COCO mAP of a detector on `data` in eval mode: AP (@[.5:.95]), AP50, AP75, recall (AR@100) and
    the mean set loss per batch ("loss"), every query a ranked detection (`postprocess`). Batches of 32:
    on a CPU, batches of 100 64×64 scenes ran 1.3-1.8× slower per image (their activations leave the cache).

    Raises:
        ValueError: `data` holds no images.
    """
    from convattn.data.coco_map import coco_map
    from convattn.models.detr import postprocess, targets_to_coco

    with _evaluating(model, data):
        criterion = detection_criterion(data.num_classes, across_processes=False)  # the main process alone
        H, W = data.images.shape[-2:]
        detections: list[dict[str, Tensor]] = []
        loss, n = 0.0, 0
        for x, targets in detection_batches(data, batch_size, seed=0, epoch=0, shuffle=False):
            outputs = model(x.to(device, memory_format=memory_format))
            loss += criterion(outputs, _to_device(targets, device))[0].item() * len(targets)
            n += len(targets)
            detections += [{k: v.cpu() for k, v in d.items()} for d in postprocess(outputs, H, W)]
    truth = targets_to_coco(data.targets(range(len(data))), H, W)
    scores = coco_map(detections, truth)
    return {k: float(scores[k]) for k in ("AP", "AP50", "AP75", "recall")} | {"loss": loss / n}


@torch.no_grad()
def evaluate_knn(
    model: nn.Module,
    bank: ImageSet,
    data: ImageSet,
    k: int = 200,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    """Weighted k-NN accuracy of a MoCo model's features (`convattn.ssl.knn_accuracy`, temperature
    0.07): the features of `bank` (the training images, no augmentation) vote for those of `data`."""
    from convattn.ssl import knn_accuracy

    def features(split: ImageSet) -> tuple[Tensor, Tensor]:
        parts = [
            model.features(x.to(device, memory_format=memory_format)).cpu()  # type: ignore[operator]
            for x, _ in batches(split, 256, seed=0, epoch=0, shuffle=False)
        ]
        return torch.cat(parts), split.labels

    with _evaluating(model, data):
        (f_bank, y_bank), (f_data, y_data) = features(bank), features(data)
    return knn_accuracy(f_bank, y_bank, f_data, y_data, k=k, num_classes=data.num_classes)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal when `enabled`, else a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)
