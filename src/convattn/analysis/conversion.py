"""Theorem 1, checked: a table of Conv2d layers covering every option, each converted to attention and
back (`convattn.convert`), with its error against the conv in float32 and float64."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from convattn.convert import attention_to_conv, conv_to_attention

__all__ = [
    "CONV_TABLE",
    "EXACT_FLOAT32",
    "EXACT_FLOAT64",
    "check_conversion",
    "conversion_table",
    "describe_conv",
]


# A table of convolutions covering every Conv2d option: the `convattn convert` default.
CONV_TABLE: tuple[dict[str, object], ...] = (
    {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"in_channels": 8, "out_channels": 16, "kernel_size": 5, "stride": 2, "padding": 2},
    {"in_channels": 8, "out_channels": 8, "kernel_size": (2, 4), "padding": "same"},
    {
        "in_channels": 8,
        "out_channels": 8,
        "kernel_size": 3,
        "dilation": 2,
        "padding": 2,
        "padding_mode": "reflect",
    },
    {
        "in_channels": 8,
        "out_channels": 12,
        "kernel_size": 3,
        "padding": 1,
        "groups": 4,
        "padding_mode": "circular",
    },
    {"in_channels": 8, "out_channels": 8, "kernel_size": 7, "padding": 3, "groups": 8},
    {
        "in_channels": 8,
        "out_channels": 4,
        "kernel_size": (1, 3),
        "stride": (1, 2),
        "padding": "valid",
        "bias": False,
    },
    {
        "in_channels": 8,
        "out_channels": 8,
        "kernel_size": 4,
        "stride": 3,
        "padding": (2, 1),
        "padding_mode": "replicate",
    },
    {"in_channels": 3, "out_channels": 8, "kernel_size": 1},
)


def describe_conv(conv: nn.Conv2d) -> str:
    """One line naming every option of a conv."""
    pad = conv.padding if isinstance(conv.padding, str) else "x".join(map(str, conv.padding))
    return (
        f"{conv.in_channels}->{conv.out_channels} k={'x'.join(map(str, conv.kernel_size))} "
        f"s={'x'.join(map(str, conv.stride))} p={pad} d={'x'.join(map(str, conv.dilation))} "
        f"g={conv.groups} {conv.padding_mode}{'' if conv.bias is not None else ' no-bias'}"
    )


def check_conversion(
    config: dict[str, object], *, size: tuple[int, int] = (16, 16), seed: int = 0
) -> dict[str, object]:
    """Convert a default-initialised conv with `config` both ways and measure it on a unit-normal input.

    Returns:
        conv (description), heads, max_error_float32, max_error_float64 (of conv_to_attention against the
        conv), and round_trip (attention_to_conv gives back identical weights and geometry).

    Raises:
        ValueError: `config` describes no convolution (naming its settings), or `size` is too small.
    """
    row: dict[str, object] = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(seed)
        try:
            conv = nn.Conv2d(**config).to(dtype)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError) as bad:  # torch's own checks name no value
            given = ", ".join(f"{k}={v!r}" for k, v in config.items())
            raise ValueError(f"invalid convolution ({given}): {bad}") from None
        x = torch.randn(2, conv.in_channels, *size, dtype=dtype)
        attn = conv_to_attention(conv)
        with torch.no_grad(), warnings.catch_warnings():  # the caller's warning filters stay as they were
            warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
            err = float((attn(x) - conv(x)).abs().max())
        row |= {"conv": describe_conv(conv), "heads": attn.attention.num_heads}
        row[f"max_error_{str(dtype).removeprefix('torch.')}"] = err
        if dtype == torch.float64:
            back = attention_to_conv(attn).conv
            same = torch.equal(back.weight, conv.weight) and all(
                getattr(back, a) == getattr(conv, a)
                for a in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
            )
            row["round_trip"] = same and (back.bias is None) == (conv.bias is None)
    return row


EXACT_FLOAT32, EXACT_FLOAT64 = 1e-5, 1e-10  # the largest errors against the conv that count as exact


def conversion_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], bool]:
    """`check_conversion` rows as the lines of a text table, and whether every row is exact: within
    EXACT_FLOAT32 and EXACT_FLOAT64 of the conv, and converted back to an identical conv."""
    header = f"{'convolution':<46} {'heads':>5} {'max err fp32':>13} {'max err fp64':>13}  round trip"
    lines, exact = [header, "-" * len(header)], True
    for r in rows:
        f32, f64 = r["max_error_float32"], r["max_error_float64"]
        exact &= bool(f32 <= EXACT_FLOAT32 and f64 <= EXACT_FLOAT64 and r["round_trip"])
        back = "identical" if r["round_trip"] else "DIFFERENT"
        lines.append(f"{r['conv']:<46} {r['heads']:>5} {f32:>13.2e} {f64:>13.2e}  {back}")
    return lines, exact
