"""Attention can express convolution (Theorem 1): a table of Conv2d layers to attention and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convattn.analysis.conversion import CONV_TABLE, check_conversion
from convattn.analysis.viz import (
    centres_from_rows,
    centres_to_rows,
    draw_attention_heads,
    draw_centres,
    heads_from_rows,
    heads_to_rows,
)
from convattn.convert import conv_to_attention
from convattn.study.section import Description, Section, register_section
from convattn.utils.records import read_csv, write_csv

__all__ = ["SECTION", "describe", "plot", "run"]


def plot(out_dir: Path) -> None:
    """Draw conv_heads.png and conv_centres.png from conv_heads.csv and conv_centres.csv."""
    title = "3x3 conv as attention"
    probs, query = heads_from_rows(read_csv(out_dir / "conv_heads.csv"))
    draw_attention_heads(probs, query, out_dir / "conv_heads.png", title=f"{title}: one head per tap")
    centres, cov = centres_from_rows(read_csv(out_dir / "conv_centres.csv"))
    draw_centres(centres, cov, out_dir / "conv_centres.png", title=f"{title}: head centres")


def run(out_dir: Path, *, seed: int = 0, size: tuple[int, int] = (16, 16)) -> dict[str, Any]:
    """Write `conversion.csv`, `conv_heads.png` and `conv_centres.png` (with their CSVs); return the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [check_conversion(cfg, size=size, seed=seed) for cfg in CONV_TABLE]
    write_csv(out_dir / "conversion.csv", rows)
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


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Cordonnier et al. (2020, Theorem 1): a multi-head self-attention layer with K² heads and a "
        "relative positional encoding can express any K×K convolution exactly."
    )
    exact = m["worst_float64"] < 1e-10
    text = (
        f"This run supports the claim{'' if exact else ' only approximately'}: each of {len(m['rows'])} "
        "Conv2d layers (strides, dilations, even and non-square kernels, the four padding modes, groups, "
        "no bias) became attention with one quadratic head per kernel tap. The largest error against the "
        f"conv is {m['worst_float32']:.1e} in float32 and {m['worst_float64']:.1e} in float64. Converting "
        "back gave "
        + ("identical convolutions every time." if m["all_round_trips_identical"] else "a different conv.")
    )
    figures = [
        ("conv_heads.png", "A 3×3 conv as attention: the attention of the centre query, one head per tap."),
        ("conv_centres.png", "The same layer's head centres Δ with their 1-σ ellipses."),
    ]
    return Description(
        claim, text, figures, [("conversion.csv", "Conversion error per Conv2d configuration.")]
    )


SECTION = register_section(
    Section(
        "conversion", "Attention can express convolution (Theorem 1)",
        lambda d, ctx: run(d, seed=ctx.seed), plot, describe,
    )
)  # fmt: skip
