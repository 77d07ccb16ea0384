"""Multiply-accumulate counts with the attention products included.

`count_macs` runs a forward pass under torch's FlopCounterMode, with a formula added for the CPU
fused attention kernel (which torch counts as 0 on CPU), plus the multiply-adds that convattn's own
operators report (neighbourhood attention, per-pixel convolutions). One MAC = one multiply-add = 2
FLOPs; papers differ (SASA reports FLOPs = 2 × MACs, Swin and DWNet report MACs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from convattn.layers._macs import tally

__all__ = ["count_macs", "sdpa_flops"]


def sdpa_flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of softmax(q kᵀ) v: 2·B·heads·L·S·(E + E_v) (scores and weighted sum; softmax ignored)."""
    *batch, L, E = q_shape
    S, Ev = k_shape[-2], v_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * L * S * (E + Ev)


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops}


def count_macs(fn: Callable[..., Any], *inputs: Any) -> int:
    """Multiply-adds of one forward call `fn(*inputs)` (a module or a function), attention included."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter, tally() as own:
        fn(*inputs)
    return counter.get_total_flops() // 2 + own[0]
