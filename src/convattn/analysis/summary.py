"""The table behind `convattn models`: every registered model with its parameters and MACs."""

from __future__ import annotations

from typing import Any

import torch

from convattn.analysis.flops import count_macs
from convattn.models.registry import create_model, list_models, model_info

__all__ = ["count_parameters", "format_models", "model_table"]


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable and frozen parameters alike (buffers excluded), as the papers count them."""
    return sum(p.numel() for p in model.parameters())


def model_table(pattern: str | None = None, *, details: bool = False) -> list[dict[str, Any]]:
    """One row per registered model: name, family, description; with `details`, the parameter count and
    the multiply-adds of one image at the preset's input size (attention products included)."""
    rows: list[dict[str, Any]] = []
    for name in list_models(pattern):
        info = model_info(name)
        row: dict[str, Any] = {"name": name, "family": info.family, "description": info.description}
        if details:
            model = create_model(name).eval()
            x = torch.randn(1, info.in_chans, info.image_size, info.image_size)
            row.update(
                params=count_parameters(model),
                macs=count_macs(model, x),
                input=f"{info.in_chans}x{info.image_size}x{info.image_size}",
                num_classes=info.num_classes,
            )
        rows.append(row)
    return rows


def format_models(rows: list[dict[str, Any]], *, details: bool = False) -> list[str]:
    """`model_table`'s rows as text lines: name, family, description; or with `details`, the counts."""
    if details:
        return [
            f"{r['name']:<36} {r['params']:>12,} params {r['macs']:>15,} MACs at {r['input']}" for r in rows
        ]
    return [f"{r['name']:<36} {r['family']:<12} {r['description']}" for r in rows]
