"""Theorem 1 demo: convert a table of Conv2d layers to self-attention and back, and draw one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convattn.analysis.viz import (
    centres_from_rows,
    centres_to_rows,
    draw_attention_heads,
    draw_centres,
    heads_from_rows,
    heads_to_rows,
)
from convattn.convert import CONV_TABLE, check_conversion, conv_to_attention
from convattn.utils.records import read_csv, write_csv

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


def plot(out_dir: Path) -> None:
    """Draw conv_heads.png and conv_centres.png from conv_heads.csv and conv_centres.csv."""
    title = "3x3 conv as attention"
    probs, query = heads_from_rows(read_csv(out_dir / "conv_heads.csv"))
    draw_attention_heads(probs, query, out_dir / "conv_heads.png", title=f"{title}: one head per tap")
    centres, cov = centres_from_rows(read_csv(out_dir / "conv_centres.csv"))
    draw_centres(centres, cov, out_dir / "conv_centres.png", title=f"{title}: head centres")


def run(out_dir: Path, *, seed: int = 0, size: tuple[int, int] = (16, 16)) -> dict[str, Any]:
    """Write `conversion.csv`/`.md`, `conv_heads.png` and `conv_centres.png`; return the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [check_conversion(cfg, size=size, seed=seed) for cfg in CONV_TABLE]
    write_csv(out_dir / "conversion.csv", rows)
    (out_dir / "conversion.md").write_text(markdown_table(rows))
    torch.manual_seed(seed)
    layer = conv_to_attention(nn.Conv2d(8, 8, 3, padding=1)).attention
    probe = torch.zeros(1, layer.in_channels, 11, 11)  # position-only: the attention ignores the values
    write_csv(out_dir / "conv_heads.csv", heads_to_rows(layer.attention_probs(probe, (5, 5))[0], (5, 5)))
    cov = torch.linalg.inv(layer.inverse_covariance().detach().double())  # (heads, 2, 2) Σ
    write_csv(out_dir / "conv_centres.csv", centres_to_rows(layer.centres, cov))
    plot(out_dir)
    return {
        "rows": rows,
        "worst_float32": max(float(r["max_error_float32"]) for r in rows),
        "worst_float64": max(float(r["max_error_float64"]) for r in rows),
        "all_round_trips_identical": all(bool(r["round_trip"]) for r in rows),
        "figures": ["conv_heads.png", "conv_centres.png"],
    }
