"""One epoch of training and one pass of evaluation, as ConvNeXt's engine.py: no files, no set-up.

`train_one_epoch` runs the optimiser over the batches it is given and keeps its place in an
`EpochState` (the next batch, the optimiser step and the running sums), so the caller can checkpoint
the state between any two batches and resume the epoch from it, bit for bit. `evaluate` measures a
model on a data set in eval mode.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.data import ImageSet, batches

__all__ = ["Diverged", "EpochState", "evaluate", "progress_bar", "train_one_epoch"]


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
    stream: Iterable[tuple[Tensor, Tensor]],
    state: EpochState,
    *,
    lr: Callable[[int], float],
    device: torch.device | str = "cpu",
    label_smoothing: float = 0.0,
    clip_grad: float = 0.0,
    stop: Callable[[], bool] = lambda: False,
    bar: _Bar | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> bool:
    """Train `net` on the batches of `stream`, which starts at batch `state.batch` of the epoch.

    Each batch sets the learning rate `lr(step)`, takes one optimiser step on the (label-smoothed)
    cross-entropy, with the global gradient norm clipped to `clip_grad` (0: off), and adds to the
    sums of `state`, which is updated in place.

    Args:
        stop: asked after every batch; when it answers True the epoch ends there.
        bar: a progress bar, advanced by one per batch.
        memory_format: the layout each (B, C, H, W) batch is moved to the device in.

    Returns:
        True if `stop` ended the epoch early (`state` then names the next batch), else False.

    Raises:
        Diverged: a batch's loss is not finite (NaN or infinite); no update was taken for it.
    """
    net.train()
    for x, y in stream:
        x, y = x.to(device, memory_format=memory_format), y.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr(state.step) * group.get("lr_scale", 1.0)
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
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
        state.correct += int((logits.argmax(1) == y).sum())
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
    if len(data) == 0:
        raise ValueError(f"the {data.split} split of {data.name} holds no images: nothing to evaluate on")
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in batches(data, batch_size, seed=0, epoch=0, shuffle=False):
        x, y = x.to(device, memory_format=memory_format), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return correct / n, loss / n


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal when `enabled`, else a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)
