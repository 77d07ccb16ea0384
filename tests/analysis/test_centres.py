"""Head-centre measures (`convattn.analysis.centres`): grid-likeness, empirical centres and spreads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convattn.analysis.centres import (
    empirical_centres,
    grid_likeness,
    grid_offsets,
    interior_queries,
    random_grid_reference,
)
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d


def _grid(kernel: int = 3) -> np.ndarray:
    return grid_offsets(kernel)


# -- grid-likeness -------------------------------------------------------------------------------------


def test_grid_offsets_are_the_conv_taps():
    assert _grid(3).tolist() == [[a, b] for a in (-1, 0, 1) for b in (-1, 0, 1)]
    assert _grid(2).tolist() == [[a, b] for a in (-0.5, 0.5) for b in (-0.5, 0.5)]


@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
def test_an_exact_grid_scores_zero(kernel):
    fit = grid_likeness(_grid(kernel))
    assert fit.mean_distance == 0.0 and fit.fraction_within == 1.0
    np.testing.assert_array_equal(fit.offsets, _grid(kernel))


def test_a_permuted_grid_scores_zero_and_each_head_gets_its_own_offset():
    perm = np.random.default_rng(0).permutation(9)
    centres = _grid()[perm]
    fit = grid_likeness(centres)
    assert fit.mean_distance == 0.0 and fit.fraction_within == 1.0
    np.testing.assert_array_equal(fit.offsets, centres)


@pytest.mark.parametrize(("shift", "distance", "within"), [((0.6, 0.8), 1.0, 0.0), ((0.15, -0.2), 0.25, 1.0)])
def test_a_shifted_grid_scores_the_length_of_the_shift(shift, distance, within):
    # Σ|g_i + v - g_π(i)| >= |Σ(g_i + v - g_π(i))| = 9|v|: the identity assignment is optimal.
    fit = grid_likeness(_grid() + np.array(shift))
    assert fit.mean_distance == pytest.approx(distance, abs=1e-12)
    assert fit.fraction_within == within
    np.testing.assert_allclose(fit.distances, distance, atol=1e-12)


def test_nine_centres_on_the_query_score_the_mean_tap_distance():
    fit = grid_likeness(np.zeros((9, 2)))
    assert fit.mean_distance == pytest.approx((4 + 4 * math.sqrt(2)) / 9)
    assert fit.fraction_within == pytest.approx(1 / 9)


def test_grid_likeness_beats_any_single_permutation():
    centres = np.random.default_rng(1).normal(0, 2, size=(9, 2))
    fit = grid_likeness(centres)
    rng = np.random.default_rng(2)
    for _ in range(200):
        perm = rng.permutation(9)
        assert fit.mean_distance <= np.linalg.norm(centres - _grid()[perm], axis=1).mean() + 1e-12


@pytest.mark.parametrize("bad", [np.zeros((8, 2)), np.zeros((9, 3)), np.zeros(9), np.full((9, 2), np.nan)])
def test_grid_likeness_rejects_bad_centres(bad):
    with pytest.raises(ValueError, match=r"centres|square"):
        grid_likeness(bad)


def test_random_reference_is_reproducible_and_far_from_a_grid():
    mean, p05 = random_grid_reference(9, draws=300, seed=3)
    assert (mean, p05) == random_grid_reference(9, draws=300, seed=3)
    assert 1.0 < p05 < mean


# -- empirical centres ---------------------------------------------------------------------------------


def _quadratic_layer(centres: np.ndarray, spread: float) -> MultiHeadSelfAttention2d:
    layer = MultiHeadSelfAttention2d(4, num_heads=len(centres), encoding="quadratic").double()
    with torch.no_grad():
        layer.centres.copy_(torch.as_tensor(centres))
        layer.spreads.fill_(spread)
    return layer


@pytest.mark.parametrize(
    ("spread", "shift"),
    [(6.0, (0.0, 0.0)), (1.0, (0.3, -0.45))],  # sharp heads on the taps; σ = 1 heads between pixels
)
def test_empirical_centre_of_a_quadratic_head_is_its_delta(spread, shift):
    """Far from the borders a discretised Gaussian's mean is Δ (to ~1e-8 for σ = 1) and its RMS radius √2σ."""
    centres = _grid() + np.array(shift)
    layer = _quadratic_layer(centres, spread)
    x = torch.randn(2, 4, 17, 17, dtype=torch.float64)
    queries = interior_queries(17, 17, margin=7)  # 9 queries: Gaussians never reach a border
    maps = torch.stack([layer.attention_probs(x, q).mean(0) for q in queries])  # (Q, heads, H, W)
    centre, rms = empirical_centres(maps, queries)
    torch.testing.assert_close(centre, torch.as_tensor(centres), atol=1e-5, rtol=0)
    if spread == 1.0:
        torch.testing.assert_close(
            rms, torch.full((9,), math.sqrt(2.0), dtype=torch.float64), atol=1e-5, rtol=0
        )
    else:
        assert rms.max() < 0.01  # one-hot on q + Δ


def test_uniform_attention_is_centred_with_the_uniform_spread():
    queries = interior_queries(8, 8)
    centre, rms = empirical_centres(torch.ones(len(queries), 3, 8, 8), queries)
    torch.testing.assert_close(centre, torch.zeros(3, 2, dtype=torch.float64))
    assert torch.allclose(rms, rms[0]) and rms[0] > 3


def test_interior_queries_and_bad_maps_are_checked():
    assert interior_queries(8, 8) == [(i, j) for i in range(2, 6) for j in range(2, 6)]
    with pytest.raises(ValueError, match="interior"):
        interior_queries(4, 8, margin=2)
    with pytest.raises(ValueError, match="maps must be"):
        empirical_centres(torch.ones(2, 3, 8, 8), [(3, 3)])
