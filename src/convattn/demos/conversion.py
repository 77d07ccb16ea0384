"""Theorem 1 demo: convert a table of Conv2d layers to self-attention and back, and draw one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convattn.convert import CONV_TABLE, check_conversion, conv_to_attention
from convattn.records import write_csv
from convattn.viz import plot_attention_heads, plot_quadratic_centres

__all__ = ["markdown_table", "run"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `check_conversion` as a Markdown table."""
    lines = [
        "| convolution | heads | max error fp32 | max error fp64 | round trip |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['conv']} | {r['heads']} | {r['max_error_float32']:.2e} | {r['max_error_float64']:.2e} | "
        f"{'identical' if r['round_trip'] else 'different'} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, seed: int = 0, size: tuple[int, int] = (16, 16)) -> dict[str, Any]:
    """Write `conversion.csv`/`.md`, `conv_heads.png` and `conv_centres.png`; return the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [check_conversion(cfg, size=size, seed=seed) for cfg in CONV_TABLE]
    write_csv(out_dir / "conversion.csv", rows)
    (out_dir / "conversion.md").write_text(markdown_table(rows))
    torch.manual_seed(seed)
    layer = conv_to_attention(nn.Conv2d(8, 8, 3, padding=1)).attention
    title = "3x3 conv as attention"
    plot_attention_heads(layer, out_dir / "conv_heads.png", size=(11, 11), title=f"{title}: one head per tap")
    plot_quadratic_centres(layer, out_dir / "conv_centres.png", title=f"{title}: head centres")
    return {
        "rows": rows,
        "worst_float32": max(float(r["max_error_float32"]) for r in rows),
        "worst_float64": max(float(r["max_error_float64"]) for r in rows),
        "all_round_trips_identical": all(bool(r["round_trip"]) for r in rows),
        "figures": ["conv_heads.png", "conv_centres.png"],
    }
