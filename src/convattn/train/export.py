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


def load_weights(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model exported in `folder` (model.safetensors + model.json); strict key/shape check."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{folder} holds no exported model ({err.filename} is missing)") from err
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise ValueError(f"{folder} holds a corrupt export: {err}") from err
    model = create_model(
        meta["model"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        image_size=meta["image_size"],
        **meta.get("model_options", {}),
    )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
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
