"""The training configuration: one frozen dataclass, saved as config.json in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig"]

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (the run folder holds it as config.json).

    Attributes:
        model: a name of `convattn.list_models()`.
        data: a data spec of `convattn.data.load` ("digits", "shapes", "cifar10:PATH", ...).
        epochs: passes over the training set.
        out: the run folder.
        model_options: keyword overrides for the model (e.g. {"dropout": 0.0}).
        batch_size: the global batch (split evenly over processes under torchrun).
        optimizer: "sgd" (momentum, Nesterov off) or "adamw".
        lr: peak learning rate, reached after the warm-up.
        momentum: SGD momentum (AdamW: beta1).
        weight_decay: decoupled for AdamW, L2 for SGD; never on norms, biases, attention centres/spreads.
        warmup: fraction of all steps spent in linear warm-up, then cosine decay to 0.
        label_smoothing: of the cross-entropy.
        clip_grad: clip the global gradient norm to this value (0: off).
        crop_pad: random-crop padding of the augmentation (0: off; -1: the data set's default).
        flip: random horizontal flips (digits are not flipped by default).
        seed: of the model, the shuffle order, the augmentation and dropout.
        threads: torch CPU threads (0: torch's default); runs are bit-reproducible at a fixed count.
        device: "cpu" or "cuda".
        data_seed: seed of generated data sets, and of the `n_train` subset of a fixed one.
        n_train: train on this many images (0: the whole training split); a fixed data set keeps a
            nested class-stratified subset of its training split, a generated one is generated at this
            size (`convattn.data.load`). The test split is always the whole one.
    """

    model: str
    data: str = "digits"
    epochs: int = 10
    out: str = "runs/train"
    model_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup: float = 0.05
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
    crop_pad: int = -1
    flip: bool = False
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    data_seed: int = 0
    eval_every: int = 1
    n_train: int = 0  # the default keeps config.json files written before the field loadable

    def __post_init__(self) -> None:
        def positive(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")

        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("eval_every", self.eval_every)
        if isinstance(self.n_train, bool) or not isinstance(self.n_train, int) or self.n_train < 0:
            raise ValueError(
                f"n_train must be an int >= 0 (0: the whole training split), got n_train={self.n_train!r}"
            )
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be positive, got lr={self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got optimizer={self.optimizer!r}")
        for name in ("weight_decay", "clip_grad", "label_smoothing", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got warmup={self.warmup!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got device={self.device!r}")
        if not isinstance(self.model_options, dict):
            raise TypeError(f"model_options must be a dict, got {type(self.model_options).__name__}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"config.json has unknown fields {sorted(unknown)}: not a convattn training run")
        return cls(**raw)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_json(path.read_text())
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"cannot read the run configuration {path}: {err}") from err

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ, ignoring `out` (a run folder may be moved)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if f.name != "out" and getattr(self, f.name) != getattr(other, f.name)
        ]
