"""Learning a convolution: can gradient descent turn quadratic self-attention into a 3×3 conv?

Cordonnier et al. 2020 (Theorem 1) show that K² quadratic heads can *express* any K×K convolution, and
`convattn.convert.conv_to_attention` builds that layer exactly. `fit_conv` asks whether it is *learned*:
one `MultiHeadSelfAttention2d(C_in, C_out, num_heads=9, encoding="quadratic", value_proj=False)`, freshly
initialised (centres Δ^h ~ N(0, 2²), spreads s_h ≈ 1, W_out from nn.Linear's init), is fitted by AdamW to
the outputs of a fixed random 3×3 `nn.Conv2d` (padding 1) on N(0, 1) images. The input is padded as the
conv pads, by `ConvAsAttention`, the wrapper of the exact construction.

Measures (all on the head centres Δ (9, 2), in (row, col) offsets from the query):

    relative error   ‖attn(x) - conv(x)‖² / ‖conv(x)‖², summed over fresh held-out N(0, 1) images
    max error        max |attn(x) - conv(x)| on the same images
    distinct offsets the number of distinct offsets among round(clip(Δ^h, -1, 1)): the nearest point of
                     {-1, 0, 1}² to each head (9: every tap of the conv has its own head)
    mean distance    `grid_likeness(Δ).mean_distance`: the best one-to-one match to the 3×3 offsets (px)

The recipe (`FitConvRecipe`): full-batch AdamW on 16 fixed training images, W_out at lr 1e-2, centres and
spreads at lr 5e-2 (Adam's per-parameter scaling lets the spreads grow from 1 to ~3.5 in a few hundred
steps: heads become nearly one-hot), a cosine decay over 2000 steps, and three remedies, each a field
that can be switched off. Single-start numbers are for seeds 0-39 (one thread, ~3 s a fit):

* A floor on the spreads, s ≥ 0.35 (heads at most ~3 px wide). Without it a head that starts far from
  the window widens until it is nearly uniform, its W_out block decays, and it stops moving: 5-6 of 20
  seeds reach the targets.
* Weight decay 1.0 (decoupled) on W_out's weight. Any 9 heads whose masses A[h, t] on the 3×3 taps form
  an invertible matrix (and that leak nothing outside the window) give the conv exactly, with
  W_out = taps · A⁻¹. Without decay or noise gradient descent finds such mixtures: the function error
  reaches ~4e-6, but the heads sit between pixels (5-7 distinct offsets, 0.49 px from the grid; 16 of 40
  seeds reach ≥ 8). A⁻¹ of a mixture is large, so decay prefers one-hot heads: 9 distinct offsets,
  ~0.07 px from the grid, 38 of 40 seeds.
* Restarts: a fresh random initialisation while the *training* error stays above `TARGET_ERROR` (at most
  `max_attempts`). A single start fails on 2 of 40 seeds (14 and 31): a tap is left without a head
  (7 distinct offsets, error 1e-2 to 4e-2); their second start succeeds, so all 40 reach the targets.

`centre_noise` (annealed Gaussian noise on the centres) also breaks the between-pixel solutions without
decay (39 of 40 seeds, but 0.23 px from the grid); with decay it adds nothing measurable and is off.

None of these knows the grid or the conv, and the centres start at random: the experiment can fail, and
a single start does fail on 2 of 40 seeds. The fit runs in float32 on CPU; set `torch.set_num_threads`
before calling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from convattn.analysis.centres import grid_likeness
from convattn.analysis.viz import draw_centre_panel
from convattn.convert import ConvAsAttention, conv_to_attention
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.utils.checks import check_positive, check_positive_int
from convattn.utils.plotting import plt, save_figure

__all__ = [
    "KERNEL",
    "TARGET_DISTINCT",
    "TARGET_ERROR",
    "FitConvRecipe",
    "FitConvResult",
    "distinct_offsets",
    "fit_conv",
    "fit_conv_rows",
    "fit_conv_summary",
    "plot_fit_conv",
]

KERNEL = 3  # the conv to learn is 3×3, so the layer has 9 heads
TARGET_ERROR = 1e-3  # a fit succeeds with relative error at most this ...
TARGET_DISTINCT = 8  # ... and at least this many heads on distinct 3×3 offsets
NOISE_END = 0.5  # the centre noise decays to zero at this fraction of the steps
TEST_IMAGES = 64


@dataclass(frozen=True)
class FitConvRecipe:
    """How `fit_conv` trains (see the module docstring for why each part is there).

    Attributes:
        steps: AdamW steps on the full training set, learning rates decayed by a cosine to 0.
        lr: learning rate of W_out (weight and bias).
        position_lr: learning rate of the centres and spreads.
        weight_decay: decoupled weight decay on W_out's weight (0: heads may settle between pixels).
        centre_noise: px per step of Gaussian noise on the centres, fading linearly to 0 at half the steps.
        spread_floor: lower bound on the spreads after each step (0 switches it off).
        train_images: size of the fixed training set of N(0, 1) images.
        max_attempts: fresh random initialisations to try; a new one only while the *training* error of
            the last stays above `TARGET_ERROR` (1: a single start).
    """

    steps: int = 2000
    lr: float = 1e-2
    position_lr: float = 5e-2
    weight_decay: float = 1.0
    centre_noise: float = 0.0
    spread_floor: float = 0.35
    train_images: int = 16
    max_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("steps", "train_images", "max_attempts"):
            check_positive_int(name, getattr(self, name))
        for name in ("lr", "position_lr"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "centre_noise", "spread_floor"):
            _check_nonnegative(name, getattr(self, name))


@dataclass(frozen=True, eq=False)
class FitConvResult:
    """What `fit_conv` measured. Every field but `seconds` is a function of the arguments.

    The curve, the initial heads and the final heads are those of the last attempt (the one kept).

    Attributes:
        steps: (L,) the logged steps (0 is the random initialisation, the last is `recipe.steps`).
        train_error: (L,) relative squared error ‖attn - conv‖² / ‖conv‖² on the training images.
        test_error: relative squared error of the fitted layer on fresh held-out images.
        test_max_error: max |attn(x) - conv(x)| on those images.
        test_rms: root-mean-square of conv(x) on them (the scale of `test_max_error`).
        init_test_error, init_max_error: the same for the random initialisation.
        init_centres, final_centres: (9, 2) head centres Δ^h, (row, col) offsets.
        init_spreads, final_spreads: (9,) spreads s_h (Σ_h⁻¹ = s_h² I, 1-σ radius 1/|s_h| px).
        distinct_offsets, init_distinct_offsets: heads on distinct 3×3 offsets (see `distinct_offsets`).
        mean_distance, init_mean_distance: `grid_likeness` mean distance to the 3×3 offsets (px).
        fraction_within, init_fraction_within: `grid_likeness` fraction of heads within 0.5 px.
        attempt_errors: the final training error of every attempt, in order (the last is kept).
        seed: the seed of the conv, the layers and the data.
        seconds: wall time of the training loops, all attempts.
    """

    steps: tuple[int, ...]
    train_error: tuple[float, ...]
    test_error: float
    test_max_error: float
    test_rms: float
    init_test_error: float
    init_max_error: float
    init_centres: np.ndarray
    final_centres: np.ndarray
    init_spreads: np.ndarray
    final_spreads: np.ndarray
    distinct_offsets: int
    init_distinct_offsets: int
    mean_distance: float
    init_mean_distance: float
    fraction_within: float
    init_fraction_within: float
    attempt_errors: tuple[float, ...]
    seed: int
    seconds: float

    @property
    def attempts(self) -> int:
        """How many random initialisations were trained."""
        return len(self.attempt_errors)

    @property
    def success(self) -> bool:
        """Relative error ≤ `TARGET_ERROR` and at least `TARGET_DISTINCT` heads on distinct offsets."""
        return self.test_error <= TARGET_ERROR and self.distinct_offsets >= TARGET_DISTINCT


def distinct_offsets(centres: Any, kernel: int = KERNEL) -> int:
    """How many distinct K×K offsets the heads (heads, 2) round to (each to its nearest grid point)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or not np.isfinite(c).all():
        raise ValueError(f"centres must be finite with shape (heads, 2), got shape {c.shape}")
    check_positive_int("kernel", kernel)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (integer offsets centred on the query), got {kernel=}")
    r = (kernel - 1) // 2
    nearest = np.floor(np.clip(c, -r, r) + 0.5).astype(np.int64)  # (heads, 2): the nearest grid point
    return len({(int(a), int(b)) for a, b in nearest})


def _check_nonnegative(name: str, value: object) -> float:
    """Raise unless `value` is a real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {name}={value!r}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value}")
    return float(value)


def _stream(*keys: int) -> int:
    """A 63-bit seed for the random stream named by `keys` (seed, purpose, attempt)."""
    return int(np.random.SeedSequence(keys).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _target(in_channels: int, out_channels: int, seed: int) -> nn.Conv2d:
    """The fixed random 3×3 conv (padding 1, bias) to learn."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_stream(seed, 0))
        conv = nn.Conv2d(in_channels, out_channels, KERNEL, padding=KERNEL // 2)
    return conv.requires_grad_(False)


def _student(conv: nn.Conv2d, seed: int, attempt: int) -> ConvAsAttention:
    """The exact construction's wrapper (the conv's padding and read-out) around a fresh random layer."""
    with torch.random.fork_rng(devices=[]):
        model = conv_to_attention(conv)
        torch.manual_seed(_stream(seed, 1, attempt))
        model.attention = MultiHeadSelfAttention2d(
            conv.in_channels, conv.out_channels, num_heads=KERNEL**2, encoding="quadratic", value_proj=False
        )
    return model


@torch.no_grad()
def _errors(model: nn.Module, conv: nn.Conv2d, x: Tensor) -> tuple[float, float, float]:
    """(relative squared error, max abs error, rms of conv(x)) of the layer against the conv on x."""
    y = conv(x)  # (B, C_out, H, W)
    diff = model(x) - y
    return (
        float(diff.square().sum() / y.square().sum()),
        float(diff.abs().max()),
        float(y.square().mean().sqrt()),
    )


def _optimiser(layer: MultiHeadSelfAttention2d, recipe: FitConvRecipe) -> torch.optim.AdamW:
    """AdamW: weight decay on W_out's weight only; centres and spreads at their own learning rate."""
    return torch.optim.AdamW(
        [
            {"params": [layer.W_o.weight], "lr": recipe.lr, "weight_decay": recipe.weight_decay},
            {"params": [layer.W_o.bias], "lr": recipe.lr, "weight_decay": 0.0},
            {"params": [layer.centres, layer.spreads], "lr": recipe.position_lr, "weight_decay": 0.0},
        ]
    )


@torch.no_grad()
def _constrain(layer: MultiHeadSelfAttention2d, noise: float, floor: float, gen: torch.Generator) -> None:
    """The projection s ≥ floor and the centre noise of one step (see the module docstring)."""
    layer.spreads.clamp_(min=floor)
    if noise > 0:
        layer.centres.add_(noise * torch.randn(layer.centres.shape, generator=gen))


def _train(
    model: ConvAsAttention, x: Tensor, y: Tensor, recipe: FitConvRecipe, log_every: int, gen: torch.Generator
) -> tuple[list[int], list[float]]:
    """Full-batch AdamW with a cosine decay; the logged steps and training errors."""
    layer, steps = model.attention, recipe.steps
    opt = _optimiser(layer, recipe)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    norm = y.square().sum()
    logged, errors = [], []
    for step in range(steps + 1):
        loss = (model(x) - y).square().sum() / norm  # relative squared error
        if step % log_every == 0 or step == steps:
            logged.append(step)
            errors.append(loss.item())
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        fade = max(0.0, 1.0 - step / (NOISE_END * steps))
        _constrain(layer, recipe.centre_noise * fade, recipe.spread_floor, gen)
    return logged, errors


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """The heads and held-out errors of the layer at one moment (initialisation or the end)."""

    centres: np.ndarray  # (9, 2)
    spreads: np.ndarray  # (9,)
    distinct: int
    mean_distance: float
    fraction_within: float
    error: float
    max_error: float
    rms: float


def _snapshot(model: ConvAsAttention, conv: nn.Conv2d, x_test: Tensor) -> _Snapshot:
    layer = model.attention
    centres = layer.centres.detach().double().numpy().copy()
    fit = grid_likeness(centres)
    return _Snapshot(
        centres,
        layer.spreads.detach().double().numpy().copy(),
        distinct_offsets(centres),
        fit.mean_distance,
        fit.fraction_within,
        *_errors(model, conv, x_test),
    )


def fit_conv(
    *,
    in_channels: int = 4,
    out_channels: int = 4,
    size: int = 12,
    seed: int = 0,
    log_every: int = 50,
    recipe: FitConvRecipe | None = None,
) -> FitConvResult:
    """Fit a random quadratic 9-head attention layer to a random 3×3 conv and measure it.

    Deterministic for given arguments and torch thread count (only `seconds` varies).

    Args:
        in_channels, out_channels: the conv's (and the layer's) channels.
        size: side of the square N(0, 1) training and held-out images (before the conv's padding).
        seed: an int >= 0; seeds the conv, every attempt's initialisation, the images and the noise.
        log_every: steps between points of the learning curve.
        recipe: the training recipe (default `FitConvRecipe()`).
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("size", size)):
        check_positive_int(name, value)
    check_positive_int("log_every", log_every)
    if size < KERNEL:
        raise ValueError(f"size must be at least the kernel ({KERNEL}), got {size=}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got seed={seed!r}")
    if recipe is not None and not isinstance(recipe, FitConvRecipe):
        raise TypeError(f"recipe must be a FitConvRecipe, got {type(recipe).__name__}")
    recipe = recipe or FitConvRecipe()
    conv = _target(in_channels, out_channels, seed)
    data, held = (torch.Generator().manual_seed(_stream(seed, k)) for k in (2, 3))
    x = torch.randn(recipe.train_images, in_channels, size, size, generator=data)  # (N, C_in, size, size)
    x_test = torch.randn(TEST_IMAGES, in_channels, size, size, generator=held)
    start, attempt_errors = time.perf_counter(), []
    for attempt in range(recipe.max_attempts):
        model = _student(conv, seed, attempt)
        init = _snapshot(model, conv, x_test)
        noise = torch.Generator().manual_seed(_stream(seed, 4, attempt))
        logged, errors = _train(model, x, conv(x), recipe, log_every, noise)
        attempt_errors.append(errors[-1])
        if errors[-1] <= TARGET_ERROR:
            break
    seconds = time.perf_counter() - start
    final = _snapshot(model, conv, x_test)
    return _result((tuple(logged), tuple(errors)), init, final, tuple(attempt_errors), seed, seconds)


def _result(
    curve: tuple[tuple[int, ...], tuple[float, ...]],
    init: _Snapshot,
    final: _Snapshot,
    attempt_errors: tuple[float, ...],
    seed: int,
    seconds: float,
) -> FitConvResult:
    return FitConvResult(
        steps=curve[0],
        train_error=curve[1],
        test_error=final.error,
        test_max_error=final.max_error,
        test_rms=final.rms,
        init_test_error=init.error,
        init_max_error=init.max_error,
        init_centres=init.centres,
        final_centres=final.centres,
        init_spreads=init.spreads,
        final_spreads=final.spreads,
        distinct_offsets=final.distinct,
        init_distinct_offsets=init.distinct,
        mean_distance=final.mean_distance,
        init_mean_distance=init.mean_distance,
        fraction_within=final.fraction_within,
        init_fraction_within=init.fraction_within,
        attempt_errors=attempt_errors,
        seed=seed,
        seconds=seconds,
    )


def fit_conv_summary(result: FitConvResult) -> dict[str, Any]:
    """One table row of a fit: errors, head measures for the fit and for its random initialisation."""
    return {
        "seed": result.seed,
        "test_error": result.test_error,
        "test_max_error": result.test_max_error,
        "test_rms": result.test_rms,
        "distinct_offsets": result.distinct_offsets,
        "mean_distance": result.mean_distance,
        "fraction_within": result.fraction_within,
        "init_test_error": result.init_test_error,
        "init_distinct_offsets": result.init_distinct_offsets,
        "init_mean_distance": result.init_mean_distance,
        "attempts": result.attempts,
        "success": int(result.success),
        "seconds": result.seconds,
    }


def fit_conv_rows(result: FitConvResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """CSV rows of a fit: the learning curve (step, train_error) and the heads (stage, head, centre_row,
    centre_col, spread, width) at the stages "init" and "final"; width = 1/|s| is the 1-σ radius."""
    curve = [{"step": s, "train_error": e} for s, e in zip(result.steps, result.train_error, strict=True)]
    heads = []
    stages = (
        ("init", result.init_centres, result.init_spreads),
        ("final", result.final_centres, result.final_spreads),
    )
    for stage, centres, spreads in stages:
        for h, ((row, col), s) in enumerate(zip(centres.tolist(), spreads.tolist(), strict=True)):
            width = 1.0 / max(abs(s), 1e-12)
            heads.append(
                {"stage": stage, "head": h, "centre_row": row, "centre_col": col, "spread": s, "width": width}
            )
    return curve, heads


def _centre_axis(ax: Any, rows: list[dict[str, Any]], stage: str) -> None:
    """One stage's centres over the 3×3 grid, titled with its distinct offsets and grid distance."""
    centres = [[float(r["centre_row"]), float(r["centre_col"])] for r in rows]
    span = max(1.8, *(max(abs(a), abs(b)) + 0.6 for a, b in centres))
    draw_centre_panel(ax, [{k: str(v) for k, v in r.items()} for r in rows], span)
    fit = grid_likeness(centres)
    title = (
        f"{stage}: {distinct_offsets(centres)}/9 distinct offsets, {fit.mean_distance:.2f} px from the grid"
    )
    ax.set_title(title, fontsize=7)


def plot_fit_conv(curve: list[dict[str, Any]], heads: list[dict[str, Any]], path: Path) -> Path:
    """The learning curve (log scale) and the initial and final centres, from `fit_conv_rows` rows
    (or the same rows read back from CSV)."""
    if not curve:
        raise ValueError("plot_fit_conv needs learning-curve rows, got none")
    stages = {stage: [r for r in heads if r["stage"] == stage] for stage in ("init", "final")}
    empty = [stage for stage, rows in stages.items() if not rows]
    if empty:
        raise ValueError(f"plot_fit_conv needs head rows for the stages init and final, missing {empty}")
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.4))
    steps = [float(r["step"]) for r in curve]
    axes[0].semilogy(steps, [float(r["train_error"]) for r in curve])
    axes[0].axhline(TARGET_ERROR, color="0.5", ls="--", lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("‖attn − conv‖² / ‖conv‖² (train)")
    axes[0].grid(alpha=0.3)
    for ax, (stage, rows) in zip(axes[1:], stages.items(), strict=True):
        _centre_axis(ax, sorted(rows, key=lambda r: int(r["head"])), stage)
    fig.suptitle("learning a 3×3 conv: centres with 1-σ circles; + conv offsets, □ query", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
