"""Nadaraya–Watson attention pooling against its loop reference, and its demo."""

from __future__ import annotations

import pytest
import torch

from convattn.attention import NadarayaWatson, leave_one_out, nadaraya_watson
from convattn.layers import reference as ref

f64 = torch.float64


@pytest.mark.parametrize("per_query", [False, True])
def test_matches_loop_reference_and_gradcheck(per_query):
    q = torch.rand(4, dtype=f64, requires_grad=True) * 5
    shape = (4, 6) if per_query else (6,)
    k = (torch.rand(*shape, dtype=f64) * 5).requires_grad_()
    v = torch.randn(*shape, dtype=f64, requires_grad=True)
    w = torch.tensor(1.7, dtype=f64, requires_grad=True)
    pooled, weights = nadaraya_watson(q, k, v, w)
    torch.testing.assert_close(pooled, ref.nadaraya_watson(q, k, v, w), atol=1e-12, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, dtype=f64))
    assert torch.autograd.gradcheck(lambda *a: nadaraya_watson(*a)[0], (q, k, v, w))


def test_leave_one_out_drops_exactly_the_own_pair():
    x = torch.arange(5.0)
    y = x * 10
    keys, values = leave_one_out(x, y)
    assert keys.shape == values.shape == (5, 4)
    for i in range(5):
        assert keys[i].tolist() == [float(j) for j in range(5) if j != i]
    torch.testing.assert_close(values, keys * 10)


def test_large_width_is_nearest_neighbour_and_zero_width_is_the_mean():
    keys = torch.tensor([0.0, 1.0, 2.0, 3.0])
    values = torch.tensor([5.0, -1.0, 2.0, 7.0])
    sharp, _ = nadaraya_watson(torch.tensor([0.9, 2.2]), keys, values, 100.0)
    torch.testing.assert_close(sharp, torch.tensor([-1.0, 2.0]))
    flat, _ = nadaraya_watson(torch.tensor([0.9]), keys, values, 0.0)
    torch.testing.assert_close(flat, values.mean()[None])


def test_module_width_is_learnable():
    model = NadarayaWatson(width=2.0)
    out = model(torch.rand(3), torch.rand(5), torch.randn(5))
    out.sum().backward()
    assert model.w.grad is not None and model.attention_weights.shape == (3, 5)


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ((torch.rand(3), torch.rand(4), torch.rand(5)), ValueError, "keys and values must match"),
        ((torch.rand(3), torch.rand(2, 4), torch.rand(2, 4)), ValueError, "Q=3"),
        ((torch.rand(3, 1), torch.rand(4), torch.rand(4)), ValueError, r"queries.shape=\(3, 1\)"),
        (
            (torch.rand(3), torch.rand(4), torch.rand(4), torch.rand(2)),
            ValueError,
            "width must be a scalar",
        ),
    ],
)
def test_bad_input_is_named(args, error, words):
    with pytest.raises(error, match=words):
        nadaraya_watson(*args)
