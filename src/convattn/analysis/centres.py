"""Head-centre measures: where a head of an image attention layer looks, and how grid-like K² heads are.

Cordonnier et al. 2020 (§3, Theorem 1) show that K² heads whose attention is centred on the K×K
offsets around the query form a K×K convolution; these functions measure how close trained heads come.

    empirical centre c  c = E_q E_{k~p(·|q)} [k - q]: the expected key offset (key minus query) under
                        the attention, averaged over the interior queries q (at least `MARGIN` pixels
                        from every border).
    empirical spread    √(E_q E_k ‖k - q - c‖²): the root-mean-square distance of the attended offsets
                        from c (a 2-D radius: √2 σ for an isotropic Gaussian far from the borders).
    grid-likeness       the best one-to-one assignment of K² centres to the K×K offsets
                        {-(K-1)/2, ..., (K-1)/2}² minimising the summed distance (Hungarian algorithm):
                        the mean distance in pixels (0: a K×K conv grid exactly) and the fraction of
                        heads within `GRID_TOL` px of their offset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from convattn.layers.mhsa2d import MultiHeadSelfAttention2d, pixel_positions

__all__ = [
    "GRID_TOL",
    "INIT_CENTRE_STD",
    "MARGIN",
    "GridFit",
    "empirical_centres",
    "grid_likeness",
    "grid_offsets",
    "interior_queries",
    "quadratic_params",
    "query_maps",
    "random_grid_reference",
    "uniform_spread",
]

MARGIN = 2  # interior queries lie at least this many pixels from every border
GRID_TOL = 0.5  # px: a head "sits on the grid" within this distance of its offset
INIT_CENTRE_STD = 2.0  # the quadratic initialisation draws centres ~ N(0, 2²) (reference code)
RANDOM_DRAWS = 2000


def grid_offsets(kernel: int) -> np.ndarray:
    """(K², 2) (row, col) offsets of a K×K convolution centred on the query, row-major."""
    axis = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)  # (K², 2)


@dataclass(frozen=True)
class GridFit:
    """The best one-to-one match of K² head centres to the K×K conv offsets.

    Attributes:
        mean_distance: mean Euclidean distance (px) of the centres to their assigned offsets.
        fraction_within: fraction of the heads within `tol` px of their offset.
        offsets: (K², 2) the offset assigned to each head, in head order.
        distances: (K²,) each head's distance to its offset.
    """

    mean_distance: float
    fraction_within: float
    offsets: np.ndarray
    distances: np.ndarray


def grid_likeness(centres: Any, *, tol: float = GRID_TOL) -> GridFit:
    """Match K² head centres (K², 2) one-to-one to the K×K offsets, minimising the summed distance."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] == 0:
        raise ValueError(f"centres must have shape (heads, 2), got shape {c.shape}")
    kernel = math.isqrt(c.shape[0])
    if kernel * kernel != c.shape[0]:
        raise ValueError(f"grid_likeness needs a square number of heads (K²), got heads={c.shape[0]}")
    if not np.isfinite(c).all():
        raise ValueError("centres must be finite")
    grid = grid_offsets(kernel)
    cost = np.linalg.norm(c[:, None, :] - grid[None, :, :], axis=-1)  # (heads, K²)
    heads, taps = linear_sum_assignment(cost)
    distances = cost[heads, taps]
    return GridFit(float(distances.mean()), float((distances <= tol).mean()), grid[taps], distances)


def random_grid_reference(
    heads: int, *, std: float = INIT_CENTRE_STD, draws: int = RANDOM_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """(mean, 5th percentile) of the grid-likeness distance of `heads` centres drawn ~ N(0, std²)."""
    rng = np.random.default_rng(seed)
    values = [grid_likeness(rng.normal(0.0, std, size=(heads, 2))).mean_distance for _ in range(draws)]
    return float(np.mean(values)), float(np.percentile(values, 5))


def empirical_centres(maps: Tensor, queries: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Every head's empirical centre (heads, 2) and spread (heads,) from its attention maps.

    Args:
        maps: (Q, heads, H, W) attention of each query over the map (each sums to 1).
        queries: the Q query pixels (row, col).
    """
    if maps.dim() != 4 or maps.shape[0] != len(queries):
        raise ValueError(f"maps must be (Q={len(queries)}, heads, H, W), got shape {tuple(maps.shape)}")
    H, W = maps.shape[-2:]
    pos = pixel_positions(H, W, dtype=torch.float64, device=maps.device)  # (T, 2)
    q = torch.tensor(queries, dtype=torch.float64, device=maps.device).reshape(-1, 2)  # (Q, 2)
    delta = pos[None] - q[:, None]  # (Q, T, 2): key - query
    p = maps.double().flatten(2)  # (Q, heads, T)
    p = p / p.sum(-1, keepdim=True)
    centre = torch.einsum("qht,qtd->hd", p, delta) / len(queries)  # (heads, 2)
    second = torch.einsum("qht,qt->h", p, (delta**2).sum(-1)) / len(queries)  # (heads,)
    # E‖δ - c‖² = E‖δ‖² - ‖c‖² because c is the mean of δ over the queries and the attention.
    return centre, (second - (centre**2).sum(-1)).clamp(min=0).sqrt()


def interior_queries(height: int, width: int, margin: int = MARGIN) -> list[tuple[int, int]]:
    """The pixels at least `margin` from every border of an height×width map, row-major."""
    if not 0 <= margin or 2 * margin >= min(height, width):
        raise ValueError(f"no interior pixels with {margin=} in a {height}x{width} map")
    return [(i, j) for i in range(margin, height - margin) for j in range(margin, width - margin)]


def uniform_spread(height: int, width: int) -> float:
    """The empirical spread of a head attending uniformly over the map (the least localised head)."""
    queries = interior_queries(height, width)
    maps = torch.ones(len(queries), 1, height, width, dtype=torch.float64)
    return float(empirical_centres(maps, queries)[1][0])


@torch.no_grad()
def query_maps(layer: MultiHeadSelfAttention2d, x: Tensor, queries: list[tuple[int, int]]) -> Tensor:
    """(Q, heads, H, W): each query's attention, averaged over the images of x."""
    return torch.stack([layer.attention_probs(x, q).mean(0) for q in queries])


def quadratic_params(layer: MultiHeadSelfAttention2d) -> tuple[Tensor, Tensor]:
    """Δ (heads, 2) and σ = √(tr Σ / 2) (heads,) of a quadratic layer."""
    cov = torch.linalg.inv(layer.inverse_covariance().detach().double())  # (heads, 2, 2) Σ
    return layer.centres.detach().double(), (torch.diagonal(cov, dim1=1, dim2=2).sum(-1) / 2).sqrt()
