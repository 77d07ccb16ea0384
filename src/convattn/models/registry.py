"""The model registry: every network of the literature by name, each family with a `tiny` preset.

A registered builder takes keyword overrides (num_classes, image_size, in_chans, ...) and returns an
nn.Module mapping (B, in_chans, H, W) images to (B, num_classes) logits, or, for the detection models
(`task="detection"`), to a dict of per-query class logits and boxes. Each entry records the image
sizes it supports so that a wrong size is refused with a message before any tensor is built.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model", "register_preset"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model before building it.

    Attributes:
        name: registry name, e.g. "resnet18_cifar".
        family: e.g. "resnet", "cordonnier", "sasa_resnet", "vit", "swin", "dwnet", "digits".
        builder: keyword overrides -> nn.Module.
        defaults: the preset's keyword arguments (overrides replace them).
        description: one line for `convattn models`.
        image_size: the default input size (square).
        in_chans: default input channels.
        num_classes: default number of classes.
        divisor: input sides must be multiples of this (1: any size).
        min_size: smallest supported input side.
        task: "classification" ((B, num_classes) logits) or "detection" (a dict of per-query class
            logits and boxes, `convattn.models.detr`).
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    image_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    divisor: int = 1
    min_size: int = 1
    task: str = "classification"


TASKS = ("classification", "detection")
_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    family: str,
    *,
    description: str = "",
    image_size: int = 32,
    in_chans: int = 3,
    num_classes: int = 10,
    divisor: int = 1,
    min_size: int = 1,
    task: str = "classification",
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `builder(**kwargs)` under `name` with preset keyword `defaults`.

    The same builder may be registered under several names (presets) by stacking decorators.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got task={task!r}")
        _MODELS[name] = ModelInfo(
            name,
            family,
            builder,
            dict(defaults),
            description,
            image_size,
            in_chans,
            num_classes,
            divisor,
            min_size,
            task,
        )
        return builder

    return wrap


def register_preset(
    family: str,
    builder: Callable[..., nn.Module],
    name: str,
    description: str,
    *,
    image_size: int = 32,
    in_chans: int = 3,
    num_classes: int = 10,
    divisor: int | None = None,
    min_size: int | None = None,
    task: str = "classification",
    **preset: Any,
) -> None:
    """Register `builder` (a model class) as `name`: it is called with the `preset` keywords.

    image_size, in_chans and num_classes are the entry's defaults, which the registry passes on to
    the builder. Input sides must be multiples of `divisor`, by default the preset's patch_size (1
    without one), and at least `min_size`, by default the divisor.
    """
    divisor = preset.get("patch_size", 1) if divisor is None else divisor
    register_model(
        name,
        family,
        description=description,
        image_size=image_size,
        in_chans=in_chans,
        num_classes=num_classes,
        divisor=divisor,
        min_size=divisor if min_size is None else min_size,
        task=task,
        **preset,
    )(builder)


def _load_builtin() -> None:
    """Import the modules that register the built-in models (once)."""
    from convattn.models import attention_net, detr, dwnet, resnet, sasa_resnet, small, swin, vit  # noqa: F401


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered names, sorted; `pattern` filters with shell wildcards ("resnet*", "*tiny"), `task`
    keeps one task's models ("classification" or "detection")."""
    _load_builtin()
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got task={task!r}")
    names = sorted(n for n in _MODELS if task is None or _MODELS[n].task == task)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_info(name: str) -> ModelInfo:
    """The registry entry of `name`; an unknown name is a ValueError that suggests the closest names."""
    _load_builtin()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`convattn models` lists them all)")
    return _MODELS[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model `name`; `overrides` replace the preset's keyword arguments.

    num_classes must be a positive int; image_size (if given) must suit the model.

    Raises:
        ValueError: an unknown name (close names suggested), a bad num_classes or image_size.
        TypeError: a name that is not a string, or an override the model has no option for (named).
    """
    info = model_info(name)
    base = {"num_classes": info.num_classes, "in_chans": info.in_chans, "image_size": info.image_size}
    accepted = inspect.signature(info.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    base = {k: v for k, v in base.items() if takes_any or k in accepted}
    unknown = [k for k in overrides if not takes_any and k not in accepted]
    if unknown:
        options = ", ".join(k for k in accepted if k != "self")
        raise TypeError(f"model {name!r} has no option {unknown[0]!r} (its options: {options})")
    kwargs = {**base, **info.defaults, **overrides}
    classes = kwargs["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got num_classes={classes!r}")
    size = kwargs.get("image_size", info.image_size)
    check_image_size(info, size)
    return info.builder(**kwargs)


def check_image_size(info: ModelInfo, size: int | tuple[int, int]) -> None:
    """Raise ValueError when an input of `size` (side or (H, W)) does not suit the model."""
    sides = (size, size) if isinstance(size, int) else tuple(size)
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or side < info.min_size or side % info.divisor:
            rule = f"a multiple of {info.divisor}" if info.divisor > 1 else "an int"
            raise ValueError(
                f"model {info.name!r} takes image sides that are {rule} and at least {info.min_size}, "
                f"got image_size={size!r}"
            )
