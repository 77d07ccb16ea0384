"""The training configuration: one frozen dataclass, saved as config.json in the run folder.

Each field carries its description (and, where it has them, its allowed values) in its metadata: the
class docstring, `convattn train --help` and the checks of `__post_init__` all read them there.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_origin, get_type_hints

__all__ = ["DEVICES", "METHODS", "OPTIMIZERS", "TrainConfig"]

OPTIMIZERS = ("sgd", "adamw")
METHODS = ("supervised", "moco")
DEVICES = ("cpu", "cuda")


def _opt(default: Any, doc: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A field with a default, its description and, if any, its allowed values."""
    meta: dict[str, Any] = {"help": doc, **({"choices": choices} if choices else {})}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (the run folder holds it as config.json).

    Numbers are checked for type (a bool is refused: `lr=True` is a mistake, not 1.0) and range.
    """

    model: str = field(metadata={"help": "a name of `convattn.list_models()` (`convattn models`)"})
    data: str = _opt(
        "digits",
        "a data spec of `convattn.data.load`: digits, digits32, shapes, long_range, cifar10:PATH, "
        "folder:PATH; for a detection model (detr_*) one of `convattn.data.load_detection`: "
        "detect_shapes, coco:PATH",
    )
    epochs: int = _opt(10, "passes over the training set")
    out: str = _opt("runs/train", "the run folder")
    model_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": 'keyword overrides for the model (e.g. {"dropout": 0.0})'}
    )
    batch_size: int = _opt(64, "the global batch (split evenly over processes under torchrun)")
    optimizer: str = _opt("adamw", "sgd (momentum, Nesterov off) or adamw", choices=OPTIMIZERS)
    lr: float = _opt(2e-3, "peak learning rate, reached after the warm-up")
    momentum: float = _opt(0.9, "SGD momentum (AdamW: beta1)")
    weight_decay: float = _opt(
        0.05, "decoupled for AdamW, L2 for SGD; never on norms, biases, attention centres/spreads"
    )
    position_lr_scale: float = _opt(
        1.0,
        "multiplies lr for the quadratic attention centres Δ (not their spreads): Adam moves a parameter "
        "by about its rate per step, so at lr 1e-3 a centre travels at most ~1 px in 1,000 steps",
    )
    warmup: float = _opt(0.05, "fraction of all steps spent in linear warm-up, then cosine decay to 0")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy")
    clip_grad: float = _opt(0.0, "clip the global gradient norm to this value (0: off)")
    crop_pad: int = _opt(-1, "random-crop padding of the augmentation (0: off; -1: the data set's default)")
    flip: bool = _opt(False, "random horizontal flips (digits are not flipped by default)")
    seed: int = _opt(0, "seed of the model, the shuffle order, the augmentation and dropout")
    channels_last: bool = _opt(
        True,
        "keep the model's 4-D weights and the image batches channels-last in memory, the faster layout "
        "of CPU convolutions (the results differ from the default layout's only in rounding)",
    )
    threads: int = _opt(
        0, "torch CPU threads (0: torch's default); runs are bit-reproducible at a fixed count"
    )
    device: str = _opt("cpu", "the device to train on", choices=DEVICES)
    data_seed: int = _opt(
        0, "seed of generated data sets, and of the `n_train` subset and `holdout` split of any data set"
    )
    eval_every: int = _opt(
        1,
        "evaluate on the test split (on the validation split with a `holdout`) every this many epochs, "
        "and after the last",
    )
    n_train: int = _opt(  # the default keeps config.json files written before the field loadable
        0,
        "train on this many images (0: the whole training split, less the holdout); a fixed data set "
        "keeps a nested class-stratified subset of its training split, a generated one is generated at "
        "this size, plus the holdout (`convattn.data.load`). The test split is always the whole one",
    )
    holdout: int = _opt(  # the default keeps config.json files written before the field loadable
        0,
        "hold out this many training images, class-stratified by data_seed, as a validation split: the "
        "run trains on the rest (n_train of them, if set) and evaluates on the validation split instead "
        "of the test split, which it never reads; normalised with the statistics of the rest (0: no "
        "holdout, evaluate on the test split)",
    )

    init_from: str = _opt(  # the default keeps config.json files written before the field loadable
        "",
        "a folder with an exported model (a finished run's folder: model.safetensors) whose weights "
        "initialise this model wherever a tensor of the same name and shape exists; a detector's "
        "backbone takes a classifier's stem and blocks (e.g. a resnet_tiny trained on shapes for "
        "detr_tiny). Empty: start from the seeded initialisation",
    )

    method: str = _opt(  # the defaults keep config.json files written before these fields loadable
        "supervised",
        "supervised (the labels' loss) or moco: self-supervised MoCo v2 pre-training of the model as an "
        "encoder (its head becomes the projection; `convattn.ssl`), monitored by k-NN accuracy on the "
        "labelled evaluation split; the export is the encoder, for --init-from",
        choices=METHODS,
    )
    moco_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "MoCo's settings (`convattn.ssl.MoCo`): dim, hidden, queue_size, momentum, "
                  "temperature, split_bn, e.g. --moco queue_size=1024"},
    )  # fmt: skip
    train_only: str = _opt(
        "",
        "train only the parameters whose names start with this (e.g. head: a linear probe of a frozen "
        "encoder from --init-from; the frozen batch norms keep their statistics). Empty: train all",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
            choices = f.metadata.get("choices", ())
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {f.name}={getattr(self, f.name)!r}")
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {f.name}={value!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {name}={getattr(self, name)!r}")
        if self.n_train < 0:
            raise ValueError(
                f"n_train must be an int >= 0 (0: the whole training split), got n_train={self.n_train!r}"
            )
        if self.holdout < 0:
            raise ValueError(
                f"holdout must be an int >= 0 (0: no validation split), got holdout={self.holdout!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got lr={self.lr!r}")
        if not self.position_lr_scale > 0:
            raise ValueError(f"position_lr_scale must be positive, got {self.position_lr_scale!r}")
        for name in ("weight_decay", "clip_grad", "label_smoothing", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got warmup={self.warmup!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum (AdamW: beta1) must be in [0, 1), got momentum={self.momentum!r}")
        if self.moco_options and self.method != "moco":
            raise ValueError(f"moco_options apply to method='moco' only, got method={self.method!r}")
        if self.crop_pad < -1:
            raise ValueError(
                "crop_pad must be >= 0 (0: no random crop) or -1 (the data set's default), got "
                f"crop_pad={self.crop_pad!r}"
            )

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


# The Attributes section, from the fields' own descriptions: one text for help(), the docs and the CLI.
TrainConfig.__doc__ = f"{TrainConfig.__doc__ or ''}\n    Attributes:\n" + "".join(
    f"        {f.name}: {f.metadata['help']}.\n" for f in fields(TrainConfig)
)


_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    int: ((int,), "an int"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    bool: ((bool,), "True or False"),
    dict: ((dict,), "a dict"),
}


@cache
def _field_types() -> dict[str, Any]:
    """TrainConfig's field types as classes (the annotations are strings under `from __future__`)."""
    return get_type_hints(TrainConfig)


def _check_type(name: str, value: Any, kind: Any) -> None:
    """A TypeError naming the field unless `value` has the field's type (a bool is never a number)."""
    allowed, what = _KINDS[get_origin(kind) or kind]
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise TypeError(f"{name} must be {what}, got {name}={value!r} ({type(value).__name__})")
