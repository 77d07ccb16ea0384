"""convattn's dropout: the distribution, scale and gradient of F.dropout, from its own draws."""

from __future__ import annotations

import math

import pytest
import torch

from convattn.layers.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_survives_with_probability_one_minus_p_scaled_by_its_inverse(p):
    torch.manual_seed(0)
    x = torch.rand(400_000) + 1.0  # never zero, so a zero output means "dropped"
    out = dropout(x, p)
    kept = out != 0
    n = x.numel()
    # within 6 binomial standard deviations: a wrong rate (even p ± 0.005) fails, chance does not
    assert abs(kept.sum().item() - n * (1 - p)) < 6 * math.sqrt(n * p * (1 - p))
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), atol=0, rtol=1e-6)


def test_masks_are_independent_of_position_and_between_calls():
    torch.manual_seed(1)
    ones = torch.ones(2, 200_000)
    a, b = (dropout(ones, 0.5) != 0 for _ in range(2))
    # halves of one draw and two draws agree on about half the elements, as independent coins do
    for u, v in ((a[0], a[1]), (a[0], b[0])):
        assert abs((u == v).float().mean().item() - 0.5) < 0.01


def test_seeded_draws_repeat_and_the_gradient_is_the_scaled_mask():
    x = torch.randn(64, 8, 8, 16, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    out = dropout(x, 0.25)
    torch.manual_seed(5)
    assert torch.equal(dropout(x.detach(), 0.25), out.detach())
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    mask = (out != 0).to(x.dtype) / 0.75
    assert torch.equal(grad, mask)
    assert out.dtype == torch.float64


def test_evaluation_and_p0_return_the_input():
    x = torch.randn(3, 5, requires_grad=True)
    assert dropout(x, 0.7, training=False) is x and dropout(x, 0.0) is x


def test_the_module_is_active_in_training_only():
    m = Dropout(0.5)
    x = torch.ones(1000)
    assert (m(x) == 0).any() and m.extra_repr() == "p=0.5"
    m.eval()
    assert m(x) is x


def test_bad_inputs_are_named():
    for p in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"p={p}"):
            dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match="p"):
        Dropout(-0.1)
    with pytest.raises(TypeError, match=r"x\.dtype=torch\.int64"):
        dropout(torch.ones(3, dtype=torch.long), 0.1)
