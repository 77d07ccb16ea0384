"""A finished run's export: model.safetensors and model.json, what `convattn eval` rebuilds the model from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from convattn.data import DetectionSet, ImageSet, load, load_detection
from convattn.models.registry import create_model, model_info
from convattn.train.config import TrainConfig
from convattn.train.engine import evaluate, evaluate_detection
from convattn.utils.checks import check_device
from convattn.utils.records import atomic_write_bytes

__all__ = ["evaluate_weights", "export_model", "init_from_export", "load_weights"]


def export_model(out: Path, model: nn.Module, cfg: TrainConfig, data: ImageSet | DetectionSet) -> None:
    """Write model.safetensors and model.json (the model's name, options, shape and data) into `out`.

    A MoCo run exports its query encoder without the projection head, under the classifier's names
    (what --init-from reads); model.json then says method "moco", and it has no classifier to evaluate.
    """
    from safetensors.torch import save

    state = model.state_dict()
    if cfg.method == "moco":
        encoder = getattr(model, "encoder_q")  # noqa: B009 (a MoCo model)
        state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(out / "model.safetensors", save(tensors))
    meta = {
        "model": cfg.model,
        "model_options": cfg.model_options,
        "num_classes": data.num_classes,
        "in_chans": int(data.images.shape[1]),
        "image_size": int(data.images.shape[-1]),
        "data": cfg.data,
        "data_seed": cfg.data_seed,
        "n_train": cfg.n_train,
        "holdout": cfg.holdout,  # with n_train, the statistics the inputs were normalised with
        "method": cfg.method,
    }
    atomic_write_bytes(out / "model.json", json.dumps(meta, indent=2, sort_keys=True).encode())


_META_KEYS = ("model", "num_classes", "in_chans", "image_size", "data")


def _check_meta(path: Path, meta: object) -> None:
    """A ValueError naming `path` unless it holds what `export_model` writes."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}: not a convattn export")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a convattn export")
    if not isinstance(meta.get("model_options", {}), dict):
        raise ValueError(f"{path}: model_options must be an object, got {meta['model_options']!r}")
    if not isinstance(meta["data"], str):
        raise ValueError(f"{path}: data must be a data spec string, got {meta['data']!r}")


def load_weights(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model exported in `folder` (model.safetensors + model.json); strict key/shape check.

    Raises:
        FileNotFoundError: a file is missing (named).
        ValueError: a corrupt file, a model.json that is not an export's, or weights that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{folder} holds no exported model ({err.filename} is missing)") from err
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
        raise ValueError(f"{folder} holds a corrupt export: {err}") from err
    _check_meta(folder / "model.json", meta)
    if meta.get("method") == "moco":
        raise ValueError(
            f"{folder} holds a MoCo encoder without a classifier: probe it with `convattn train --model "
            f"{meta['model']} --init-from {folder} --train-only head`, or fine-tune it without --train-only"
        )
    try:
        model = create_model(
            meta["model"],
            num_classes=meta["num_classes"],
            in_chans=meta["in_chans"],
            image_size=meta["image_size"],
            **meta.get("model_options", {}),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder / 'model.json'} describes no model convattn can build: {err}") from None
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # a shape that differs: torch lists every one, the first says enough
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(
            f"{folder}: weights do not fit {meta['model']!r} as model.json describes it ({first})"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit {meta['model']!r} (missing {missing}, unexpected {unexpected})"
        )
    return model, meta


def init_from_export(model: nn.Module, folder: Path) -> tuple[list[str], list[str]]:
    """Copy the exported weights in `folder` into `model` wherever they fit; (copied, skipped) names.

    A saved tensor goes to the parameter or buffer of the same name, or, for a model with a
    ``backbone`` (a detector), of the name under it: a classifier's "stem.0.weight" initialises a
    detector's "backbone.stem.0.weight". Tensors whose shapes differ (a head for other classes) are
    skipped and named; tensors with no counterpart (a classifier's head in a detector) are left out.

    Raises:
        FileNotFoundError: `folder` holds no model.safetensors.
        ValueError: the file is corrupt, or not one tensor fits `model`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"init_from={str(folder)!r} holds no exported model ({path} is missing)")
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"init_from: {path} is corrupt: {err}") from err
    ours = model.state_dict()
    copied, skipped = [], []
    for name, tensor in saved.items():
        target = name if name in ours else f"backbone.{name}" if f"backbone.{name}" in ours else None
        if target is None:
            continue
        if ours[target].shape != tensor.shape:
            skipped.append(f"{target} {tuple(tensor.shape)} != {tuple(ours[target].shape)}")
            continue
        ours[target] = tensor.to(ours[target].dtype)
        copied.append(target)
    if not copied:
        raise ValueError(
            f"init_from: no tensor of {path} fits this model (its names: {', '.join(list(saved)[:3])}, ...; "
            f"this model's: {', '.join(list(ours)[:3])}, ...)"
        )
    model.load_state_dict(ours)
    return copied, skipped


def evaluate_weights(folder: Path, data: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Test accuracy and loss of the model exported in `folder`, on its own data set or on `data`.

    On its own data set the test split is normalised as during training: with the statistics of the
    training images its `n_train` and `holdout` left (a model.json without them: the whole split). A
    run with a holdout never saw the test split; this is where its test score is measured. A detector
    is scored on the test split of its detection data: test_loss, test_AP, test_AP50, test_AP75 and
    test_recall instead of the accuracy.
    """
    check_device(device)
    model, meta = load_weights(folder)
    # The normalisation the model trained with; another data set: that set's own statistics.
    n_train = None if data else meta.get("n_train") or None
    holdout = 0 if data else meta.get("holdout", 0)
    seed = meta.get("data_seed", 0)
    spec = data or meta["data"]
    if model_info(meta["model"]).task == "detection":  # detection data at the size it trained on
        _, test_set = load_detection(spec, image_size=meta["image_size"], seed=seed, n_train=n_train)
        scores = evaluate_detection(model.to(device), test_set, device=device)
        return {"weights": str(folder), "data": spec, **{f"test_{k}": v for k, v in scores.items()},
                "n": len(test_set)}  # fmt: skip
    test = load(spec, "test", seed=seed, n_train=n_train, holdout=holdout)
    acc, loss = evaluate(model.to(device), test, device=device)
    return {"weights": str(folder), "data": spec, "test_acc": acc, "test_loss": loss, "n": len(test)}
