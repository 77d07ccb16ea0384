"""Attention pooling as Nadaraya–Watson kernel regression (D2L 11.2; Nadaraya 1964, Watson 1964).

f(x) = Σ_i softmax_i(-((x - x_i)·w)² / 2) y_i: a query x pools the values y_i with weights given by a
Gaussian kernel on its distance to the keys x_i. w = 1 is the non-parametric estimator; a learned w
(the parametric one) is trained with leave-one-out keys, so that no training point can attend to
itself and the trivial solution w → ∞ is not a minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.utils.checks import check_tensor

__all__ = ["NadarayaWatson", "leave_one_out", "nadaraya_watson"]


def nadaraya_watson(
    queries: Tensor, keys: Tensor, values: Tensor, width: Tensor | float = 1.0
) -> tuple[Tensor, Tensor]:
    """Gaussian-kernel attention pooling of scalar values.

    Args:
        queries: (Q,) query positions.
        keys: (K,) keys shared by every query, or (Q, K) keys per query (e.g. leave-one-out).
        values: same shape as `keys`.
        width: w, a float or 0-dim tensor (learnable in the parametric model).

    Returns:
        (predictions (Q,), attention weights (Q, K)).
    """
    check_tensor("queries", queries, 1)
    check_tensor("keys", keys, (1, 2))
    check_tensor("values", values, (1, 2))
    if keys.shape != values.shape:
        raise ValueError(f"keys and values must match, got {tuple(keys.shape)=}, {tuple(values.shape)=}")
    if keys.dim() == 2 and keys.shape[0] != queries.shape[0]:
        raise ValueError(
            f"per-query keys must be (Q, K) with Q={queries.shape[0]}, got keys.shape={tuple(keys.shape)}"
        )
    if isinstance(width, Tensor) and width.numel() != 1:
        raise ValueError(f"width must be a scalar, got width.shape={tuple(width.shape)}")
    diff = queries[:, None] - (keys if keys.dim() == 2 else keys[None])  # (Q, K)
    weights = F.softmax(-((diff * width) ** 2) / 2, dim=-1)  # (Q, K)
    pooled = (weights * (values if values.dim() == 2 else values[None])).sum(-1)  # (Q,)
    return pooled, weights


def leave_one_out(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values for training on (x, y): row i holds every pair but the i-th, (n, n-1) each."""
    check_tensor("x", x, 1)
    check_tensor("y", y, 1)
    n = x.shape[0]
    if y.shape[0] != n or n < 2:
        raise ValueError(f"need x and y of one length >= 2, got {x.shape[0]=}, {y.shape[0]=}")
    others = ~torch.eye(n, dtype=torch.bool, device=x.device)  # (n, n): False on the diagonal
    return x.expand(n, n)[others].reshape(n, n - 1), y.expand(n, n)[others].reshape(n, n - 1)


class NadarayaWatson(nn.Module):
    """Parametric Nadaraya–Watson regression with one learnable kernel width w (D2L 11.2.4)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(width)))
        self.attention_weights: Tensor | None = None

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        pooled, weights = nadaraya_watson(queries, keys, values, self.w)
        self.attention_weights = weights.detach()
        return pooled
