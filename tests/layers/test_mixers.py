"""Every spatial mixer: one interface, parity with loop references, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import needs_kernel
from convattn.layers import reference as ref
from convattn.layers.dynamic import image_dwconv2d, pixel_dwconv2d
from convattn.layers.mixers import SASA, create_mixer, list_mixers
from convattn.layers.window import window_attention2d, window_attention2d_qkv

f64 = torch.float64
WINDOW_BACKENDS = ["torch", "sdpa", pytest.param("kernel", marks=needs_kernel("window"))]
OPTIONS = {
    "local_mlp": {"num_heads": 4},
    "sasa": {"num_heads": 4},
    "window": {"num_heads": 4},
    "mhsa": {"num_heads": 4},
}


def test_the_registry_holds_every_mixer_of_the_literature():
    assert set(list_mixers()) == {
        "conv",
        "dwconv",
        "dynamic_dwconv",
        "local_mlp",
        "sasa",
        "sasa_stem",
        "window",
        "mhsa",
    }


@pytest.mark.parametrize("name", list_mixers())
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (9, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_mixer_maps_any_map_and_trains(name, size, stride):
    mixer = create_mixer(name, 16, stride=stride, **OPTIONS.get(name, {}))
    x = torch.randn(2, 16, *size, requires_grad=True)
    y = mixer(x)
    H, W = size
    assert y.shape == (2, 16, -(-H // stride), -(-W // stride))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not [n for n, p in mixer.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", ["conv", "sasa", "window", "mhsa", "sasa_stem"])
def test_mixers_that_change_width(name):
    y = create_mixer(name, 16, out_dim=8, **OPTIONS.get(name, {}))(torch.randn(1, 16, 6, 6))
    assert y.shape == (1, 8, 6, 6)


@pytest.mark.parametrize("backend", WINDOW_BACKENDS)
@pytest.mark.parametrize(
    ("size", "window", "shift", "d"),
    [
        ((5, 7), (3, 3), (0, 0), 3),
        ((5, 7), (3, 3), (1, 1), 3),
        ((4, 4), (4, 4), (2, 2), 3),
        ((3, 5), (7, 7), (3, 3), 3),  # window larger than the map
        ((6, 5), (2, 3), (1, 2), 3),  # even window
        ((1, 1), (7, 7), (3, 3), 3),
        ((9, 9), (9, 8), (4, 3), 17),  # 72-pixel windows: past the register-held softmax; d past a vector
    ],
)
def test_window_attention_matches_reference(size, window, shift, d, backend):
    heads = 2
    q, k = (torch.randn(1, *size, heads, d, dtype=f64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, *size, heads, 4, dtype=f64, requires_grad=True)
    bias = torch.randn(heads, 2 * window[0] - 1, 2 * window[1] - 1, dtype=f64, requires_grad=True)
    out = window_attention2d(q, k, v, window, shift=shift, bias=bias, backend=backend)
    expected = ref.window_attention2d(q, k, v, window, shift, bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, [q, k, v, bias], g),
        torch.autograd.grad(expected, [q, k, v, bias], g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@needs_kernel("window")
@pytest.mark.parametrize("shift", [0, 3])
def test_window_kernel_matches_the_torch_path_in_float32_on_odd_maps(shift):
    q, k, v = (torch.randn(2, 23, 30, 3, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(3, 13, 13, requires_grad=True)
    fast = window_attention2d(q, k, v, 7, shift=shift, bias=bias, backend="kernel")
    slow = window_attention2d(q, k, v, 7, shift=shift, bias=bias, backend="torch")
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(fast)
    for a, b in zip(
        torch.autograd.grad(fast, [q, k, v, bias], g),
        torch.autograd.grad(slow, [q, k, v, bias], g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@needs_kernel("window")
def test_window_inference_matches_training_forward():
    q, k, v = (torch.randn(2, 9, 11, 2, 16) for _ in range(3))
    with torch.no_grad():
        fast = window_attention2d(q, k, v, 4, shift=2)
    torch.testing.assert_close(fast, window_attention2d(q, k, v.requires_grad_(), 4, shift=2), atol=0, rtol=0)


@pytest.mark.parametrize("backend", WINDOW_BACKENDS)
@pytest.mark.parametrize(
    ("size", "window", "shift", "d"),
    [((5, 7), (3, 3), (1, 1), 3), ((9, 11), (4, 4), (2, 2), 17), ((1, 1), 7, 3, 2)],
)
def test_packed_window_attention_matches_reference(size, window, shift, d, backend):
    qkv = torch.randn(2, *size, 3, 2, d, dtype=f64, requires_grad=True)
    w = (window, window) if isinstance(window, int) else window
    s = (shift, shift) if isinstance(shift, int) else shift
    bias = torch.randn(2, 2 * w[0] - 1, 2 * w[1] - 1, dtype=f64, requires_grad=True)
    out = window_attention2d_qkv(qkv, window, shift=shift, bias=bias, backend=backend)
    expected = ref.window_attention2d(*qkv.unbind(3), w, s, bias)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, [qkv, bias], g), torch.autograd.grad(expected, [qkv, bias], g), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@needs_kernel("window")
def test_packed_kernel_computes_the_same_bits_as_separate_q_k_v():
    qkv = torch.randn(3, 23, 30, 3, 4, 16, requires_grad=True)
    bias = torch.randn(4, 13, 13, requires_grad=True)
    g = torch.randn(3, 23, 30, 4, 16)
    packed = window_attention2d_qkv(qkv, 7, shift=3, bias=bias)
    apart = window_attention2d(*qkv.unbind(3), 7, shift=3, bias=bias)
    assert torch.equal(packed, apart)
    for a, b in zip(
        torch.autograd.grad(packed, [qkv, bias], g), torch.autograd.grad(apart, [qkv, bias], g), strict=True
    ):
        assert torch.equal(a, b)
    with torch.no_grad():  # inference: no probabilities kept, the same output
        assert torch.equal(window_attention2d_qkv(qkv, 7, shift=3, bias=bias), packed)


def test_window_mixer_runs_packed_and_matches_its_separate_q_k_v():
    mixer = create_mixer("window", 32, window=4, num_heads=4, shift=2)
    x = torch.randn(2, 32, 9, 10)
    q, k, v = mixer.qkv(x).chunk(3, dim=1)
    torch.testing.assert_close(mixer(x), mixer.proj(mixer._attend(q, k, v)), atol=1e-6, rtol=1e-5)


def test_packed_window_attention_rejects_bad_input():
    with pytest.raises(ValueError, match="qkv"):
        window_attention2d_qkv(torch.randn(1, 4, 4, 2, 3), 2)
    with pytest.raises(ValueError, match=r"qkv must be \(B, H, W, 3, heads, d\)"):
        window_attention2d_qkv(torch.randn(1, 4, 4, 2, 2, 3), 2)
    with pytest.raises(ValueError, match="shift"):
        window_attention2d_qkv(torch.randn(1, 4, 4, 3, 2, 3), 2, shift=2)


def test_window_attention_rejects_bad_input():
    q = torch.randn(1, 4, 4, 2, 3)
    with pytest.raises(ValueError, match="backend"):
        window_attention2d(q, q, q, 2, backend="cuda")
    with pytest.raises(TypeError, match="dtype"):
        window_attention2d(q, q.double(), q, 2)
    with pytest.raises(ValueError, match="shift"):
        window_attention2d(q, q, q, 2, shift=2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("kernel", marks=needs_kernel())])
@pytest.mark.parametrize("size", [(5, 6), (3, 19), (1, 1)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_dynamic_convs_match_reference(dilation, size, backend):
    x = torch.randn(2, 4, *size, dtype=f64, requires_grad=True)
    per_pixel = torch.randn(2, 2, 9, *size, dtype=f64, requires_grad=True)
    out = pixel_dwconv2d(x, per_pixel, dilation=dilation, backend=backend)
    expected = ref.pixel_dwconv2d(x, per_pixel, dilation)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, [x, per_pixel], g),
        torch.autograd.grad(expected, [x, per_pixel], g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    per_image = torch.randn(2, 4, 3, 3, dtype=f64, requires_grad=True)
    bias = torch.randn(4, dtype=f64, requires_grad=True)
    out = image_dwconv2d(x, per_image, bias, dilation=dilation, backend=backend)
    expected = ref.image_dwconv2d(x, per_image, bias, dilation)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, [x, per_image, bias], g),
        torch.autograd.grad(expected, [x, per_image, bias], g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@needs_kernel("dwconv")
@pytest.mark.parametrize(("shape", "k", "dilation"), [((3, 33, 13, 19), 7, 1), ((1, 17, 3, 30), 5, 3)])
def test_per_image_kernel_matches_the_torch_path_past_full_vectors(shape, k, dilation):
    x = torch.randn(*shape, requires_grad=True).to(memory_format=torch.channels_last)
    kernels = torch.randn(shape[0], shape[1], k, k, requires_grad=True)
    fast = image_dwconv2d(x, kernels, dilation=dilation, backend="kernel")
    slow = image_dwconv2d(x, kernels, dilation=dilation, backend="torch")
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(fast)
    for a, b in zip(
        torch.autograd.grad(fast, [x, kernels], g), torch.autograd.grad(slow, [x, kernels], g), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_dynamic_dwconv_kernels_change_with_the_input_and_local_mlp_kernels_do_not():
    torch.manual_seed(0)
    for mode in ("homogeneous", "inhomogeneous"):
        layer = create_mixer("dynamic_dwconv", 16, mode=mode, kernel_size=3).double().eval()
        x = torch.randn(1, 16, 6, 6, dtype=f64)
        # Linear in x for fixed kernels: doubling x would double the output of a static conv.
        assert not torch.allclose(
            layer(2 * x) - layer.bias[None, :, None, None], 2 * (layer(x) - layer.bias[None, :, None, None])
        )
    mlp = create_mixer("local_mlp", 16, num_heads=4, kernel_size=3).double()
    x = torch.randn(1, 16, 6, 6, dtype=f64)
    kernels = mlp.weight.repeat_interleave(4, 0).reshape(1, 16, 9, 1, 1).expand(1, 16, 9, 6, 6)
    torch.testing.assert_close(
        mlp(x), ref.pixel_dwconv2d(x, kernels) + mlp.bias[None, :, None, None], atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("mode", ["homogeneous", "inhomogeneous"])
@pytest.mark.parametrize("k", [3, 7])
def test_dynamic_dwconv_taps_start_at_the_scale_of_a_static_depthwise_conv(mode, k):
    static = nn.Conv2d(64, 64, k, groups=64).weight.std()
    layer = create_mixer("dynamic_dwconv", 64, kernel_size=k, mode=mode)  # training mode, as it starts
    x = torch.randn(8, 64, 8, 8)
    with torch.no_grad():
        assert 1 / 1.5 < layer.kernels(x).std() / static < 1.5
        layer.expand.reset_parameters()  # torch's default, as before: 2x (k = 3) to 5x (k = 7) too large
        assert layer.kernels(x).std() / static > 1.5


def _sasa_grads(out, layer, x, g):
    params = [x, layer.q.weight, layer.kv.weight, layer.rel_row, layer.rel_col]
    return torch.autograd.grad(out, params, g)


@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((5, 6), {}),
        ((1, 1), {}),
        ((3, 7), {"kernel_size": 5, "out_dim": 4}),  # window taller than the map, fewer channels
        ((6, 5), {"border": "zeros", "stride": 2}),  # the popular port's zero keys; odd pooled border
        ((7, 6), {"border": "shift", "dilation": 2}),
        ((4, 5), {"scale": "sqrt"}),
        ((4, 5), {"scale": 0.3, "num_heads": 1}),
    ],
)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_sasa_matches_the_papers_formula(size, options, memory_format):
    """The fast path against the loop over eq. 2-3, forward and backward, in float64, with NCHW and
    channels_last inputs (the projection keeps the input's format, and the kernel reads either)."""
    layer = SASA(6, **{"kernel_size": 3, "num_heads": 2, **options}).double()
    scale = {None: 1.0, "sqrt": layer.d**-0.5}.get(options.get("scale"), options.get("scale"))
    x = torch.randn(2, 6, *size, dtype=f64).contiguous(memory_format=memory_format).requires_grad_()
    out, expected = layer(x), ref.sasa2d(layer, x, scale=scale)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    for a, b in zip(_sasa_grads(out, layer, x, g), _sasa_grads(expected, layer, x, g), strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_sasa_scores_have_no_scale_unless_asked():
    layer = SASA(8, kernel_size=3, num_heads=2).double()
    assert layer.scale == 1.0 and SASA(8, num_heads=2, scale="sqrt").scale == 0.5
    x = torch.randn(1, 8, 5, 5, dtype=f64)
    # the scaled form (the layer before it followed the paper) is another function
    assert not torch.allclose(layer(x), ref.sasa2d(layer, x, scale=layer.d**-0.5))


def test_sasa_relative_table_is_row_then_column_split_into_heads():
    layer = SASA(8, kernel_size=3, num_heads=2)
    table = layer.rel_table()  # (5, 5, 2, 4)
    full = table.reshape(5, 5, 8)
    torch.testing.assert_close(full[1 + 1, 1 + 0, :4], layer.rel_row[1 + 1 - 1])  # δ_r = +1 -> row entry
    torch.testing.assert_close(full[1 + 1, 1 + 2, 4:], layer.rel_col[2])  # δ_c = +1
    assert full[0, :, :4].abs().sum() == 0  # δ_r = -2 is never used by a 3x3 "mask" window


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("conv", {"kernel_size": 4}, "kernel_size=4"),
        ("sasa", {"kernel_size": 0}, "kernel_size=0"),
        ("sasa", {"num_heads": 3}, "dim=16, num_heads=3"),
        ("window", {"num_heads": 5}, "num_heads=5"),
        ("window", {"window": 4, "shift": 4}, "shift=4"),
        ("dwconv", {"out_dim": 24}, "out_dim=24"),
        ("dynamic_dwconv", {"mode": "static"}, "mode='static'"),
        ("sasa", {"border": "wrap"}, "border='wrap'"),
        ("sasa", {"dilation": 0}, "dilation=0"),
        ("sasa", {"scale": "log"}, "scale='log'"),
        ("sasa", {"scale": 0.0}, "scale=0.0"),
        ("local_mlp", {"stride": 0}, "stride=0"),
        ("nope", {}, "unknown mixer 'nope'"),
    ],
)
def test_bad_options_are_named(name, options, words):
    with pytest.raises(ValueError, match=words):
        create_mixer(name, 16, **options)


def test_public_names():
    import convattn
    import convattn.functional as cf

    assert convattn.list_mixers() == list_mixers()
    assert (
        callable(convattn.create_mixer)
        and callable(cf.neighborhood_attention2d)
        and callable(cf.window_attention2d)
        and callable(cf.window_attention2d_qkv)
    )


def test_dynamic_convs_name_bad_input():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"\(B, C\)=\(2, 4\)"):
        image_dwconv2d(x, torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        image_dwconv2d(x, torch.randn(2, 4, 2, 2))
    with pytest.raises(TypeError, match="dtype"):
        image_dwconv2d(x, torch.randn(2, 4, 3, 3, dtype=f64))
    with pytest.raises(ValueError, match="backend"):
        image_dwconv2d(x, torch.randn(2, 4, 3, 3), backend="gpu")
    with pytest.raises(ValueError, match="G dividing C=4"):
        pixel_dwconv2d(x, torch.randn(2, 3, 9, 5, 5))
    with pytest.raises(ValueError, match="k·k taps"):
        pixel_dwconv2d(x, torch.randn(2, 2, 8, 5, 5))


def test_depthwise_mixer_is_a_conv2d_that_runs_in_channels_last():
    mixer = create_mixer("dwconv", 8, kernel_size=5)
    plain = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8)
    plain.load_state_dict(mixer.state_dict())  # same parameters and names as nn.Conv2d
    x = torch.randn(2, 8, 9, 7, dtype=f64)
    mixer, plain = mixer.double(), plain.double()
    y = mixer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, plain(x), atol=1e-12, rtol=0)
