import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_gradients
from convattn.layers.pointwise import pointwise_conv2d

f64 = torch.float64


def _inputs(shape, out, layout):
    B, C, H, W = shape
    x = torch.randn(B, C, H, W, dtype=f64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other channel of a wider map: neither layout is contiguous
        x = torch.randn(B, 2 * C, H, W, dtype=f64)[:, ::2]
    return x.requires_grad_(), torch.randn(out, C, 1, 1, dtype=f64, requires_grad=True)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 4, 4), (3, 4, 1, 1), (2, 64, 8, 8)], ids=str)
def test_pointwise_conv_matches_conv2d_forward_and_backward(shape, layout):
    x, w = _inputs(shape, 6, layout)
    out, expected = pointwise_conv2d(x, w), F.conv2d(x, w)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert_same_gradients(out, expected, (x, w), atol=1e-12)


def test_nchw_inputs_take_the_matrix_products_and_keep_their_layout():
    x, w = _inputs((2, 5, 7, 3), 6, "nchw")
    out = pointwise_conv2d(x, w)
    assert type(out.grad_fn).__name__ == "_PointwiseFunctionBackward"
    assert out.is_contiguous()
    dx, dw = torch.autograd.grad(out, (x, w), torch.randn_like(out))
    assert dx.is_contiguous() and dw.shape == w.shape
    xc, wc = _inputs((2, 5, 7, 3), 6, "channels_last")
    out = pointwise_conv2d(xc, wc)
    assert "Convolution" in type(out.grad_fn).__name__  # mkldnn's channels-last conv
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("needs", ["x", "weight"])
def test_only_the_gradients_asked_for_are_computed(needs):
    x, w = _inputs((2, 5, 4, 4), 3, "nchw")
    x.requires_grad_(needs == "x")
    w.requires_grad_(needs == "weight")
    out = pointwise_conv2d(x, w)
    (grad,) = torch.autograd.grad(out, (x if needs == "x" else w,), torch.ones_like(out))
    want = torch.autograd.grad(F.conv2d(x, w), (x if needs == "x" else w,), torch.ones_like(out))[0]
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=0)


def test_pointwise_conv_names_bad_inputs():
    x = torch.randn(2, 5, 4, 4)
    with pytest.raises(
        ValueError, match=r"weight must be \(out_channels, 5, 1, 1\).*weight.shape=\(3, 4, 1, 1\)"
    ):
        pointwise_conv2d(x, torch.randn(3, 4, 1, 1))
    with pytest.raises(ValueError, match=r"weight.shape=\(3, 5, 3, 3\)"):
        pointwise_conv2d(x, torch.randn(3, 5, 3, 3))
    with pytest.raises(TypeError, match="weight must match x's dtype"):
        pointwise_conv2d(x, torch.randn(3, 5, 1, 1, dtype=f64))
    with pytest.raises(ValueError, match="x must have 4 dims"):
        pointwise_conv2d(torch.randn(5, 4, 4), torch.randn(3, 5, 1, 1))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        pointwise_conv2d(torch.ones(2, 5, 4, 4, dtype=torch.long), torch.randn(3, 5, 1, 1))
