"""Figures as PNG files through matplotlib's Agg backend (no display needed).

A leaf module: it takes numbers (tensors or arrays) and a path, and imports nothing from convattn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["heatmaps", "line_plot", "save_figure"]

Panel = tuple[Any, str, Sequence[str] | None, Sequence[str] | None]
Series = tuple[Any, Any]  # (x, y): sequences, arrays or tensors


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


def save_figure(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def heatmaps(
    panels: Sequence[Panel],
    path: Path,
    *,
    ncols: int = 4,
    xlabel: str = "",
    ylabel: str = "",
    suptitle: str | None = None,
    vmax: float | None = None,
) -> Path:
    """A grid of heat-maps; each panel is (2-D values, title, row labels or None, column labels or None)."""
    if not panels:
        raise ValueError("heatmaps needs at least one panel")
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (values, title, rows, cols) in zip(axes.flat, panels, strict=False):
        data = _as_array(values)
        if data.ndim != 2:
            raise ValueError(f"heat-map panel {title!r} must be 2-D, got shape {data.shape}")
        im = ax.imshow(data, cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=6)
        for setter, labels in ((ax.set_yticks, rows), (ax.set_xticks, cols)):
            if labels is not None:
                setter(range(len(labels)), labels=list(labels), fontsize=6)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def line_plot(
    series: dict[str, Series],
    path: Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logy: bool = False,
    points: dict[str, Series] | None = None,
) -> Path:
    """Named (x, y) curves on one axis, with optional scatter `points`."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (x, y) in (points or {}).items():
        ax.plot(_as_array(x), _as_array(y), "o", ms=3, alpha=0.5, label=name)
    for name, (x, y) in series.items():
        ax.plot(_as_array(x), _as_array(y), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def bar_plot(
    labels: list[str],
    values: list[float],
    path: Path,
    *,
    errors: list[float] | None = None,
    ylabel: str = "",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    log: bool = False,
    hlines: dict[str, float] | None = None,
) -> Path:
    """Horizontal bars with optional error bars (one per label); `log` puts the values on a log axis;
    `hlines` draws a labelled reference line across the bars at each value (e.g. a floor)."""
    fig, ax = plt.subplots(figsize=(6.0, 0.35 * len(labels) + 1.2))
    pos = np.arange(len(labels))
    ax.barh(pos, values, xerr=errors, color="#4c78a8", ecolor="#333", capsize=3)
    ax.set_yticks(pos, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    if ylim:
        ax.set_xlim(*ylim)
    if log:
        ax.set_xscale("log")
    for (name, value), style in zip((hlines or {}).items(), ("--", ":", "-."), strict=False):
        ax.axvline(value, ls=style, color="#d62728", lw=1.0, label=f"{name}: {value:.3f}")
    if hlines:
        ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
