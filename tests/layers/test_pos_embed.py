"""Sinusoidal encodings against their closed form, and the properties that make them useful."""

from __future__ import annotations

import math

import pytest
import torch

from convattn.attention import (
    PositionalEncoding,
    PositionalEncoding2d,
    sinusoidal_1d,
    sinusoidal_2d,
)
from convattn.layers import reference as ref

f64 = torch.float64


@pytest.mark.parametrize(("T", "d"), [(1, 2), (7, 6), (60, 32), (1000, 4)])
def test_1d_matches_closed_form(T, d):
    torch.testing.assert_close(sinusoidal_1d(T, d, dtype=f64), ref.sinusoidal_1d(T, d), atol=1e-12, rtol=0)


def test_float32_table_is_accurate_at_long_range():
    torch.testing.assert_close(sinusoidal_1d(5000, 8), ref.sinusoidal_1d(5000, 8).float(), atol=1e-6, rtol=0)


def test_offset_is_a_rotation_of_each_frequency_pair():
    """P[p + k] = R(k ω_j) P[p] per (sin, cos) pair: relative positions are linear maps (D2L 11.6.3)."""
    d, k = 16, 5
    P = sinusoidal_1d(40, d, dtype=f64).reshape(40, d // 2, 2)  # (T, d/2, [sin, cos])
    for j in range(d // 2):
        w = 1 / 10000 ** (2 * j / d)
        c, s = math.cos(k * w), math.sin(k * w)
        rot = torch.tensor([[c, s], [-s, c]], dtype=f64)  # [sin, cos](p+k) = rot @ [sin, cos](p)
        torch.testing.assert_close(P[k:, j], P[:-k, j] @ rot.T, atol=1e-12, rtol=0)


def test_2d_splits_channels_between_rows_and_columns():
    H, W, d = 5, 7, 12
    P = sinusoidal_2d(H, W, d, dtype=f64)
    assert P.shape == (d, H, W)
    rows, cols = ref.sinusoidal_1d(H, d // 2), ref.sinusoidal_1d(W, d // 2)
    for i in range(H):
        for j in range(W):
            torch.testing.assert_close(P[: d // 2, i, j], rows[i], atol=1e-12, rtol=0)
            torch.testing.assert_close(P[d // 2 :, i, j], cols[j], atol=1e-12, rtol=0)


def test_2d_encodes_every_pixel_uniquely():
    P = sinusoidal_2d(9, 11, 16, dtype=f64).flatten(1).T  # (H·W, d)
    assert torch.cdist(P, P).add(torch.eye(99, dtype=f64)).min() > 1e-3


def test_modules_add_the_table_and_accept_any_size():
    x = torch.randn(2, 9, 8, dtype=f64)
    pe = PositionalEncoding(8).double()
    torch.testing.assert_close(pe(x), x + ref.sinusoidal_1d(9, 8))
    # Position t fed alone with offset t equals position t of the whole sequence.
    torch.testing.assert_close(pe(x[:, 4:5], offset=4), pe(x)[:, 4:5])
    img = torch.randn(2, 8, 3, 13, dtype=f64)
    torch.testing.assert_close(PositionalEncoding2d(8)(img), img + sinusoidal_2d(3, 13, 8, dtype=f64))


def test_gradcheck_modules():
    x = torch.randn(1, 3, 4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(PositionalEncoding(4), (x,))
    img = torch.randn(1, 4, 2, 3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(PositionalEncoding2d(4), (img,))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: sinusoidal_1d(5, 7), ValueError, "dim=7"),
        (lambda: sinusoidal_1d(0, 4), ValueError, "num_positions=0"),
        (lambda: sinusoidal_2d(4, 4, 6), ValueError, "multiple of 4.*dim=6"),
        (lambda: PositionalEncoding(5), ValueError, "dim=5"),
        (lambda: PositionalEncoding(4)(torch.randn(2, 3, 6)), ValueError, r"x.shape=\(2, 3, 6\)"),
        (
            lambda: PositionalEncoding2d(8)(torch.randn(2, 4, 3, 3)),
            ValueError,
            r"x.shape=\(2, 4, 3, 3\)",
        ),
        (lambda: PositionalEncoding(4)(torch.randn(3, 4)), ValueError, "3 dims"),
        (lambda: sinusoidal_1d(4, 2.0), TypeError, "dim=2.0"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()
