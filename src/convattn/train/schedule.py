"""The learning-rate schedule: a linear warm-up, then a half cosine from the peak down to a floor.

A pure function of the step, so a resumed run needs no scheduler state: the step alone is saved.
Loshchilov & Hutter 2017 (SGDR, eq. 5, one cycle without restarts) after Goyal et al. 2017's warm-up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convattn.train.config import TrainConfig

__all__ = ["lr_at", "warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """The learning rate of step `step` (counted from 0) of `total` steps.

    Steps 0..warmup-1 rise linearly to `peak` (step s gets peak·(s+1)/warmup); the remaining steps
    follow floor + (peak − floor)·½(1 + cos(π·p)), p = (step − warmup)/(total − warmup) clamped to 1,
    so the last step of a run ends near `floor` and steps past `total` stay there.

    Args:
        step: the optimiser step, from 0.
        total: the number of steps of the whole run.
        warmup: steps of linear warm-up (0: none).
        peak: the rate at the end of the warm-up (1.0 gives a multiplier, as `LambdaLR` wants).
        floor: the rate the cosine decays to.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """The trainer's rate: warm-up over the fraction cfg.warmup of the steps, then cosine to zero."""
    return warmup_cosine(step, total, int(cfg.warmup * total), cfg.lr)
