"""Training: a frozen config, a resumable loop with atomic checkpoints, DDP under torchrun, evaluation."""

from convattn.train.config import TrainConfig
from convattn.train.loop import (
    Interrupted,
    RunResult,
    build_model,
    evaluate,
    evaluate_weights,
    load_weights,
    lr_at,
    read_history,
    train,
)

__all__ = [
    "Interrupted",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate",
    "evaluate_weights",
    "load_weights",
    "lr_at",
    "read_history",
    "train",
]
