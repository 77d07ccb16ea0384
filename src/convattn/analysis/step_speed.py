"""Training-step speed of the attention-only network, before and after its fast paths, in one process.

"Before" is the network as it first trained here: separable position-only attention mixed as a row
attention then a column attention (`position_mixing="rows_columns"`), torch's dropout and torch's
default AdamW. "After" is what the trainer runs now: `position_mixing="auto"` (the output projection
first, then every head's row-times-column mix summed in one `position_mix`: the C++ kernel where it
builds, on any map; without it, one dense product per image on small maps only),
`convattn.layers.dropout` and the fused AdamW. Both start from the same weights and see the same batch;
their steps alternate, so that the machine's noise falls on both alike, and the speed-up is the median
of the per-repeat ratios, with their interquartile range over the median as its noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convattn.analysis.bench import paired_ratios
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.models.attention_net import AttentionLayer
from convattn.models.registry import create_model

__all__ = ["STEP_MODELS", "StepModel", "step_speedups"]


@dataclass(frozen=True)
class StepModel:
    """A model preset timed on (batch, channels, size, size) images, and the speed-up it is held to."""

    name: str
    channels: int
    size: int
    target: float | None = None


# The study's attention nets: the digits one (8×8 maps) is held to 1.5×; the 16×16-map one projects
# first too where the C++ kernel runs (the row-then-column mix otherwise), and has no target.
STEP_MODELS = (
    StepModel("attention_digits", 1, 8, target=1.5),
    StepModel("attention_net_small", 3, 32),
)


def _make(spec: StepModel, *, fast: bool, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = create_model(spec.name, num_classes=10)
    for m in model.modules():
        if isinstance(m, MultiHeadSelfAttention2d):
            m.position_mixing = "auto" if fast else "rows_columns"
        if isinstance(m, AttentionLayer) and not fast:
            m.drop = nn.Dropout(m.drop.p)  # type: ignore[assignment]  # torch's own dropout, as before
    model.train()
    # The default AdamW (fused=None) as before, the fused one as the trainer now runs it.
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if fast else None)


def _stepper(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], float]:
    def step() -> float:
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step


def step_speedups(
    *,
    batch: int = 64,
    repeats: int = 15,
    warmup: int = 2,
    models: tuple[StepModel, ...] = STEP_MODELS,
    noise_limit: float = 0.2,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per model: images/s before and after, the paired speed-up, its noise and the verdict.

    `met` is "yes"/"no" against the model's target when the noise is at most `noise_limit`, "noisy" when
    it is not (the run cannot decide) and "-" for models without a target.

    Raises:
        ValueError: for a batch, repeats or warm-up that is not a positive integer (warm-up may be 0).
    """
    for name, value, low in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    rows = []
    for spec in models:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, spec.channels, spec.size, spec.size, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        before, after = (_stepper(*_make(spec, fast=fast, seed=seed), x, y) for fast in (False, True))
        for _ in range(warmup):
            before(), after()
        t_before, t_after = [], []
        for _ in range(repeats):
            t_before.append(before())
            t_after.append(after())
        speedup, noise = paired_ratios(t_before, t_after)  # before / after, repeat by repeat
        if spec.target is None:
            met = "-"
        else:
            met = "noisy" if noise > noise_limit else ("yes" if speedup >= spec.target else "no")
        rows.append(
            {
                "model": spec.name,
                "batch": batch,
                "image": f"{spec.channels}x{spec.size}x{spec.size}",
                "before_images_per_s": batch / statistics.median(t_before),
                "after_images_per_s": batch / statistics.median(t_after),
                "speedup": speedup,
                "speedup_noise": noise,
                "target": spec.target if spec.target is not None else float("nan"),
                "met": met,
                "repeats": repeats,
                "threads": torch.get_num_threads(),
            }
        )
        r = rows[-1]
        log(
            f"training step {spec.name:<20} before {r['before_images_per_s']:7.0f} img/s  "
            f"after {r['after_images_per_s']:7.0f} img/s  speed-up {speedup:5.2f}x ±{noise:4.0%}"
            + ("" if spec.target is None else f"  (target {spec.target:.1f}x: {met})")
        )
    return rows
