"""convattn's dropout: the distribution, scale and gradient of F.dropout, from counter-based draws that
the C++ kernel, the PyTorch path and the Python-integer reference compute alike."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import needs_kernel
from convattn.layers import reference as ref
from convattn.layers.dropout import Dropout, dropout, dropout_draws
from convattn.layers.kernels import dropout_kernel

BACKENDS = ["torch", pytest.param("kernel", marks=needs_kernel("dropout"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_survives_with_probability_one_minus_p_scaled_by_its_inverse(p, backend):
    torch.manual_seed(0)
    x = torch.rand(400_000) + 1.0  # never zero, so a zero output means "dropped"
    out = dropout(x, p, backend=backend)
    kept = out != 0
    n = x.numel()
    # within 6 binomial standard deviations: a wrong rate (even p ± 0.005) fails, chance does not
    assert abs(kept.sum().item() - n * (1 - p)) < 6 * math.sqrt(n * p * (1 - p))
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), atol=0, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_are_independent_of_position_and_between_calls(backend):
    torch.manual_seed(1)
    ones = torch.ones(2, 200_000)
    a, b = (dropout(ones, 0.5, backend=backend) != 0 for _ in range(2))
    # halves of one draw, neighbours and two draws agree on about half the elements, as independent
    # coins do (6 sigma of a fair coin over 200k pairs is 0.0067)
    for u, v in ((a[0], a[1]), (a[0, :-1], a[0, 1:]), (a[0], b[0])):
        assert abs((u == v).float().mean().item() - 0.5) < 0.0067


def test_every_bit_of_the_draws_is_a_fair_coin_and_neighbouring_draws_are_uncorrelated():
    draws = dropout_draws(200_000, seed=123456789)
    bits = (draws[:, None] >> torch.arange(32)) & 1  # (n, 32)
    assert (bits.double().mean(0) - 0.5).abs().max() < 6 * 0.5 / math.sqrt(200_000)
    u = draws.double() / 2**32
    r = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(r.item()) < 6 / math.sqrt(200_000)
    # counters that differ in one bit (index i and i + 2**k) and seeds that differ by one draw apart
    for shift in (1, 2**10, 2**16):
        assert abs(torch.corrcoef(torch.stack([u[:-shift], u[shift:]]))[0, 1].item()) < 6 / math.sqrt(2e5)
    other = dropout_draws(200_000, seed=123456790).double() / 2**32
    assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1].item()) < 6 / math.sqrt(200_000)


@pytest.mark.parametrize("seed", [0, 987654321, 2**62 + 12345])
def test_the_torch_draws_are_the_reference_draws_also_past_index_two_to_the_32(seed):
    for start in (0, 2**32 - 40):  # the second run crosses into the counter's high word
        draws = dropout_draws(80, seed, start=start)
        assert draws.tolist() == [ref.dropout_draw(start + i, seed) for i in range(80)]


@needs_kernel("dropout")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_computes_the_torch_path_bits_at_any_offset_and_thread_count(dtype):
    x = torch.randn(5, 7, 3001, dtype=dtype)  # 105k elements: several of the kernel's tasks
    threshold, scale = round(0.3 * 2**32), 1 / 0.7
    for seed, offset in ((5, 0), (2**40 + 3, 2**32 - 50_000)):
        keep = dropout_draws(x.numel(), seed, start=offset).view(x.shape) >= threshold
        expected = x * keep.to(dtype).mul_(scale)
        threads = torch.get_num_threads()
        try:
            for n in (1, 2):
                torch.set_num_threads(n)
                assert torch.equal(dropout_kernel(x, seed, threshold, scale, offset), expected)
        finally:
            torch.set_num_threads(threads)


@needs_kernel("dropout")
def test_both_backends_give_the_same_bits_and_gradients_for_strided_inputs():
    base = torch.randn(6, 40, 30, dtype=torch.float64)
    x = base.transpose(1, 2).requires_grad_()  # not contiguous: elements count in x's row-major order
    g = torch.randn(6, 30, 40, dtype=torch.float64)
    outs, grads = [], []
    for backend in ("torch", "kernel"):
        torch.manual_seed(7)
        out = dropout(x, 0.2, backend=backend)
        outs.append(out)
        grads.append(torch.autograd.grad(out, x, g)[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert torch.equal(grads[1], g * (outs[1] != 0).to(g.dtype).mul_(1 / 0.8))


@needs_kernel("dropout")
def test_the_kernel_gradients_pass_gradcheck_and_gradgradcheck():
    x = torch.randn(4, 33, dtype=torch.float64, requires_grad=True)
    threshold = round(0.4 * 2**32)

    def fn(t):
        return dropout_kernel(t, 11, threshold, 1 / 0.6)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_draws_repeat_and_the_gradient_is_the_scaled_mask(backend):
    x = torch.randn(64, 8, 8, 16, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    out = dropout(x, 0.25, backend=backend)
    torch.manual_seed(5)
    assert torch.equal(dropout(x.detach(), 0.25, backend=backend), out.detach())
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    mask = (out != 0).to(x.dtype) / 0.75
    assert torch.equal(grad, mask)
    assert out.dtype == torch.float64


def test_half_precision_takes_the_torch_path_with_the_same_mask():
    x = torch.rand(1000) + 1.0
    torch.manual_seed(3)
    full = dropout(x, 0.5)
    torch.manual_seed(3)
    half = dropout(x.to(torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16 and torch.equal(half != 0, full != 0)


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
    with pytest.raises(ValueError, match="backend='fast'"):
        dropout(torch.ones(3), 0.1, backend="fast")
