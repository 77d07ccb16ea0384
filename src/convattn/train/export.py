"""A finished run's export: model.safetensors and model.json, what `convattn eval` rebuilds the model from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from convattn.data import ImageSet, load
from convattn.models.registry import create_model
from convattn.train.config import TrainConfig
from convattn.train.engine import evaluate
from convattn.utils.checks import check_device
from convattn.utils.records import atomic_write_bytes

__all__ = ["evaluate_weights", "export_model", "load_weights"]


def export_model(out: Path, model: nn.Module, cfg: TrainConfig, data: ImageSet) -> None:
    """Write model.safetensors and model.json (the model's name, options, shape and data) into `out`."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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


def evaluate_weights(folder: Path, data: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Test accuracy and loss of the model exported in `folder`, on its own data set or on `data`.

    On its own data set the test split is normalised as during training: with the statistics of the
    training images its `n_train` and `holdout` left (a model.json without them: the whole split). A
    run with a holdout never saw the test split; this is where its test score is measured.
    """
    check_device(device)
    model, meta = load_weights(folder)
    # The normalisation the model trained with; another data set: that set's own statistics.
    n_train = None if data else meta.get("n_train") or None
    holdout = 0 if data else meta.get("holdout", 0)
    seed = meta.get("data_seed", 0)
    test = load(data or meta["data"], "test", seed=seed, n_train=n_train, holdout=holdout)
    acc, loss = evaluate(model.to(device), test, device=device)
    return {
        "weights": str(folder),
        "data": data or meta["data"],
        "test_acc": acc,
        "test_loss": loss,
        "n": len(test),
    }
