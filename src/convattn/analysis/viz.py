"""Pictures of image self-attention layers: per-head attention of a query pixel, and quadratic centres.

The first is Cordonnier et al.'s figure: for one query pixel, every head's attention probabilities on a
window around it, with contours around the smallest sets of pixels holding 50% and 90% of the mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from convattn.analysis.centres import grid_likeness, grid_offsets
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.utils.plotting import plt, save_figure

__all__ = [
    "centres_from_rows",
    "centres_to_rows",
    "draw_attention_heads",
    "draw_centre_panel",
    "draw_centres",
    "draw_query_map",
    "heads_from_rows",
    "heads_to_rows",
    "mass_levels",
    "plot_attention_heads",
    "plot_quadratic_centres",
    "plot_stage_centres",
    "plot_stage_maps",
]


def mass_levels(probs: Tensor, masses: tuple[float, ...] = (0.5, 0.9)) -> list[float]:
    """Probability thresholds t_m such that the pixels with p >= t_m hold at least mass m (ascending)."""
    flat = probs.detach().double().flatten().sort(descending=True).values
    cumulative = flat.cumsum(0)
    levels = []
    for m in masses:
        idx = int(torch.searchsorted(cumulative, torch.tensor(m * float(cumulative[-1]), dtype=flat.dtype)))
        levels.append(float(flat[min(idx, flat.numel() - 1)]))
    return sorted(levels)


def _window(probs: Tensor, query: tuple[int, int], size: int) -> np.ndarray:
    """A size×size crop of (H, W) `probs` centred on `query`, zero outside the map."""
    H, W = probs.shape
    r = size // 2
    out = np.zeros((size, size))
    i, j = query
    for a in range(size):
        for b in range(size):
            y, x = i - r + a, j - r + b
            if 0 <= y < H and 0 <= x < W:
                out[a, b] = float(probs[y, x])
    return out


def _probe(layer: MultiHeadSelfAttention2d, x: Tensor | None, size: tuple[int, int] | None) -> Tensor:
    if x is not None:
        return x[:1]
    if not layer.position_only:
        raise ValueError(f"encoding={layer.encoding!r} attends by content: pass an input x to draw it")
    if size is None:
        raise ValueError("pass x or size=(H, W) to choose the map the attention is drawn on")
    ref = layer.W_o.weight
    return torch.zeros(1, layer.in_channels, *size, dtype=ref.dtype, device=ref.device)


def plot_attention_heads(
    layer: MultiHeadSelfAttention2d,
    path: Path,
    *,
    x: Tensor | None = None,
    size: tuple[int, int] | None = None,
    query: tuple[int, int] | None = None,
    window: int = 11,
    title: str | None = None,
) -> Path:
    """Draw every head's attention for one query pixel on a window×window crop around it.

    Args:
        layer: any `MultiHeadSelfAttention2d`.
        path: the PNG to write.
        x: an input (its first image is used); needed for content-based encodings.
        size: (H, W) of the map for position-only layers drawn without an input.
        query: the query pixel (default: the centre of the map).
        window: side of the crop, in pixels.
        title: figure title.
    """
    probe = _probe(layer, x, size)
    H, W = probe.shape[-2:]
    query = query or (H // 2, W // 2)
    probs = layer.attention_probs(probe, query)[0]  # (heads, H, W)
    title = title or f"{layer.encoding}: attention of pixel {query} (contours: 50% and 90% of the mass)"
    return draw_attention_heads(probs, query, path, window=window, title=title)


def draw_attention_heads(
    probs: Tensor, query: tuple[int, int], path: Path, *, window: int = 11, title: str
) -> Path:
    """Draw (heads, H, W) attention probabilities of the pixel `query`, one panel per head, cropped."""
    heads = probs.shape[0]
    ncols = math.ceil(math.sqrt(heads))
    nrows = math.ceil(heads / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.9 * nrows), squeeze=False)
    r = window // 2
    for h, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if h >= heads:
            ax.axis("off")
            continue
        crop = _window(probs[h], query, window)
        ax.imshow(crop, cmap="Blues", vmin=0.0, extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5))
        levels = mass_levels(probs[h])
        grid = np.arange(-r, r + 1)
        if crop.max() > 0 and len(set(levels)) == len(levels):
            ax.contour(grid, grid, crop, levels=levels, colors=["#d62728", "#ff7f0e"], linewidths=0.8)
        ax.plot([0], [0], marker="s", ms=4, mfc="none", mec="black", mew=0.8)  # the query pixel
        ax.set_title(f"head {h}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def heads_to_rows(probs: Tensor, query: tuple[int, int]) -> list[dict[str, Any]]:
    """(heads, H, W) attention of `query` as CSV rows: head, query_row, query_col, key_row, key_col, prob."""
    heads, H, W = probs.shape
    flat = probs.detach().double().cpu().tolist()
    return [
        {
            "head": h,
            "query_row": query[0],
            "query_col": query[1],
            "key_row": i,
            "key_col": j,
            "prob": flat[h][i][j],
        }
        for h in range(heads)
        for i in range(H)
        for j in range(W)
    ]


def heads_from_rows(rows: list[dict[str, str]]) -> tuple[Tensor, tuple[int, int]]:
    """The (heads, H, W) probabilities and the query of `heads_to_rows` rows read back from a CSV."""
    heads = 1 + max(int(r["head"]) for r in rows)
    H = 1 + max(int(r["key_row"]) for r in rows)
    W = 1 + max(int(r["key_col"]) for r in rows)
    probs = torch.zeros(heads, H, W, dtype=torch.float64)
    for r in rows:
        probs[int(r["head"]), int(r["key_row"]), int(r["key_col"])] = float(r["prob"])
    return probs, (int(rows[0]["query_row"]), int(rows[0]["query_col"]))


def plot_quadratic_centres(layer: MultiHeadSelfAttention2d, path: Path, *, title: str | None = None) -> Path:
    """Draw each quadratic head's centre Δ^h and its 1-σ ellipse, relative to the query at (0, 0)."""
    if not layer.encoding.startswith("quadratic"):
        raise ValueError(f"centres exist for quadratic encodings only, this layer has {layer.encoding!r}")
    centres = layer.centres.detach().double().cpu()  # (h, 2): (row, col)
    cov = torch.linalg.inv(layer.inverse_covariance().detach().double().cpu())  # (h, 2, 2) Σ
    return draw_centres(centres, cov, path, title=title or "quadratic heads: centres Δ and 1-σ ellipses")


def draw_centres(centres: Tensor, cov: Tensor, path: Path, *, title: str) -> Path:
    """Draw centres (heads, 2), as (row, col) offsets, with the 1-σ ellipses of covariances (heads, 2, 2)."""
    centres, cov = centres.double(), cov.double()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    t = torch.linspace(0, 2 * math.pi, 60, dtype=torch.float64)
    circle = torch.stack([t.sin(), t.cos()])  # (2, 60): (row, col)
    for h in range(centres.shape[0]):
        vals, vecs = torch.linalg.eigh(cov[h])
        ellipse = vecs @ (vals.clamp(min=0).sqrt()[:, None] * circle) + centres[h][:, None]  # (2, 60)
        ax.plot(ellipse[1], ellipse[0], lw=0.8, alpha=0.7)
        ax.plot(centres[h, 1], centres[h, 0], "o", ms=3, color="black")
        ax.annotate(
            str(h),
            (float(centres[h, 1]), float(centres[h, 0])),
            fontsize=6,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.plot([0], [0], marker="s", ms=7, mfc="none", mec="#d62728", label="query")
    span = float(centres.abs().max()) + 2.0
    ax.set_xlim(-span, span)
    ax.set_ylim(span, -span)  # rows grow downwards, as in the image
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("column offset")
    ax.set_ylabel("row offset")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def centres_to_rows(centres: Tensor, cov: Tensor) -> list[dict[str, Any]]:
    """Centres (heads, 2) and covariances (heads, 2, 2) as CSV rows (head, centre_row, centre_col, cov_*)."""
    c, s = centres.detach().double().cpu().tolist(), cov.detach().double().cpu().tolist()
    return [
        {"head": h, "centre_row": c[h][0], "centre_col": c[h][1], "cov_rr": s[h][0][0], "cov_rc": s[h][0][1],
         "cov_cc": s[h][1][1]}
        for h in range(len(c))
    ]  # fmt: skip


def centres_from_rows(rows: list[dict[str, str]]) -> tuple[Tensor, Tensor]:
    """Centres (heads, 2) and covariances (heads, 2, 2) from `centres_to_rows` rows read from a CSV."""
    rows = sorted(rows, key=lambda r: int(r["head"]))
    centres = torch.tensor(
        [[float(r["centre_row"]), float(r["centre_col"])] for r in rows], dtype=torch.float64
    )
    cov = torch.tensor(
        [[[float(r["cov_rr"]), float(r["cov_rc"])], [float(r["cov_rc"]), float(r["cov_cc"])]] for r in rows],
        dtype=torch.float64,
    )
    return centres, cov


def draw_centre_panel(ax: Any, rows: list[dict[str, str]], span: float) -> None:
    """One panel: each head's centre with its 1-σ circle, the K×K offsets (+) and the query (square)."""
    cmap = plt.get_cmap("tab10")
    grid = grid_offsets(math.isqrt(len(rows)))  # K² heads: the K×K offsets
    ax.plot(grid[:, 1], grid[:, 0], "+", color="0.55", ms=7, mew=1.0, zorder=1)
    for r in rows:
        h, row, col = int(r["head"]), float(r["centre_row"]), float(r["centre_col"])
        colour = cmap(h % 10)
        ax.add_patch(plt.Circle((col, row), float(r["width"]), fill=False, color=colour, lw=0.8, alpha=0.8))
        ax.plot(col, row, "o", ms=3, color=colour, zorder=3)
        ax.annotate(str(h), (col, row), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.plot([0], [0], marker="s", ms=7, mfc="none", mec="#d62728", zorder=4)
    ax.set_xlim(-span, span)
    ax.set_ylim(span, -span)  # rows grow downwards, as in the image
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=6)


def draw_query_map(ax: Any, probs: np.ndarray, query: tuple[int, int]) -> None:
    """One panel: a query pixel's attention (H, W) in offsets from the query, with 50%/90% contours."""
    H, W = probs.shape
    qr, qc = query
    extent = (-qc - 0.5, W - 1 - qc + 0.5, H - 1 - qr + 0.5, -qr - 0.5)
    xs, ys = np.arange(W) - qc, np.arange(H) - qr
    # A floor on vmax keeps (nearly) uniform maps pale instead of saturated; they get no contours.
    ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=max(probs.max(), 4.0 / probs.size), extent=extent)
    levels = mass_levels(torch.from_numpy(probs))
    if probs.max() >= 2.0 / probs.size and levels[0] < levels[1] < probs.max():
        ax.contour(xs, ys, probs, levels=levels, colors=["#d62728", "#ff7f0e"], linewidths=0.7)
    ax.plot([0], [0], marker="s", ms=3, mfc="none", mec="black", mew=0.6)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_stage_centres(rows: list[dict[str, str]], stages: Sequence[str], name: str, path: Path) -> None:
    """Cordonnier et al.'s Fig. 4 layout from head rows (stage, layer, head, centre_row, centre_col,
    width, centre_source): one panel per layer, a row per stage (e.g. init, trained)."""
    layers = sorted({int(r["layer"]) for r in rows})
    span = max(
        2.5,
        *(max(abs(float(r["centre_row"])), abs(float(r["centre_col"]))) + float(r["width"]) for r in rows),
    )
    fig, axes = plt.subplots(len(stages), len(layers), figsize=(2.8 * len(layers), 2.8 * len(stages)),
                             squeeze=False)  # fmt: skip
    for s, stage in enumerate(stages):
        for c, layer in enumerate(layers):
            mine = [r for r in rows if r["stage"] == stage and int(r["layer"]) == layer]
            fit = grid_likeness([[float(r["centre_row"]), float(r["centre_col"])] for r in mine])
            ax = axes[s, c]
            draw_centre_panel(ax, mine, span)
            ax.set_title(f"{stage}, layer {layer}: {fit.mean_distance:.2f} px from the grid", fontsize=7)
    source = rows[0]["centre_source"]
    fig.suptitle(f"{name}: head centres ({source}) with 1-σ circles; + conv offsets, □ query", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_stage_maps(rows: list[dict[str, str]], stages: Sequence[str], name: str, path: Path) -> None:
    """Cordonnier et al.'s Fig. 5/6 layout from map rows (stage, layer, head, query_row/col, key_row/col,
    prob): a row per (stage, layer), a column per head, the query pixel's attention."""
    layers = sorted({int(r["layer"]) for r in rows})
    heads = sorted({int(r["head"]) for r in rows})
    H = 1 + max(int(r["key_row"]) for r in rows)
    W = 1 + max(int(r["key_col"]) for r in rows)
    qr, qc = int(rows[0]["query_row"]), int(rows[0]["query_col"])
    maps: dict[tuple[str, int, int], np.ndarray] = {}
    for r in rows:
        key = (r["stage"], int(r["layer"]), int(r["head"]))
        maps.setdefault(key, np.zeros((H, W)))[int(r["key_row"]), int(r["key_col"])] = float(r["prob"])
    panels = [(stage, layer) for stage in stages for layer in layers]
    fig, axes = plt.subplots(len(panels), len(heads), figsize=(1.15 * len(heads), 1.2 * len(panels)),
                             squeeze=False)  # fmt: skip
    for p, (stage, layer) in enumerate(panels):
        for h in heads:
            ax = axes[p, h]
            draw_query_map(ax, maps[stage, layer, h], (qr, qc))
            if p == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if h == heads[0]:
                ax.set_ylabel(f"{stage}\nlayer {layer}", fontsize=7)
    fig.suptitle(
        f"{name}: attention of pixel ({qr}, {qc}) per head (contours: 50% and 90% of the mass)",
        fontsize=8,
    )
    fig.tight_layout()
    save_figure(fig, path)
