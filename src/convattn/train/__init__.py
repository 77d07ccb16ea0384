"""Training: a frozen config, a resumable loop with atomic checkpoints, DDP under torchrun, evaluation."""

from convattn.train.config import TrainConfig
from convattn.train.loop import Interrupted, RunResult, evaluate, evaluate_weights, load_weights, train

__all__ = ["Interrupted", "RunResult", "TrainConfig", "evaluate", "evaluate_weights", "load_weights", "train"]
