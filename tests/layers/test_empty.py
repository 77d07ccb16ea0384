"""Empty batches: every operator and mixer returns an empty result, with gradients, on every backend
(the C++ kernels once divided by the batch: SIGFPE)."""

from __future__ import annotations

import pytest
import torch

import convattn.functional as F
from conftest import needs_kernel
from convattn.layers.mixers import create_mixer, list_mixers
from convattn.models.registry import create_model

OPTIONS = {
    "sasa": {"kernel_size": 3, "num_heads": 4},
    "sasa_stem": {"window": 3, "num_heads": 4},
    "window": {"window": 3, "num_heads": 4},
    "mhsa": {"num_heads": 4},
    "dynamic_dwconv": {"kernel_size": 3},
    "dwconv": {"kernel_size": 3},
    "local_mlp": {"kernel_size": 3},
}
KERNEL = ["torch", pytest.param("kernel", marks=needs_kernel())]


def _empty(*shape: int) -> torch.Tensor:
    return torch.randn(0, *shape, requires_grad=True)


def _check(out: torch.Tensor, shape: tuple[int, ...], *inputs: torch.Tensor) -> None:
    assert out.shape == shape
    out.sum().backward()
    for x in inputs:
        assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("name", list_mixers())
@pytest.mark.parametrize("stride", [1, 2])
def test_every_mixer_maps_an_empty_batch(name, stride):
    mixer = create_mixer(name, 8, stride=stride, **OPTIONS.get(name, {}))
    x = _empty(8, 5, 7)
    _check(mixer(x), (0, 8, -(-5 // stride), -(-7 // stride)), x)
    for n, p in mixer.named_parameters():  # nothing was seen: no gradient, or a zero one
        assert p.grad is None or not p.grad.any(), n


@pytest.mark.parametrize("backend", KERNEL)
@pytest.mark.parametrize("border", ["mask", "zeros", "shift"])
def test_neighbourhood_attention_of_an_empty_batch(backend, border):
    q, k, v = _empty(6, 6, 2, 4), _empty(6, 6, 2, 4), _empty(6, 6, 2, 3)
    rel = torch.randn(5, 5, 2, 4, requires_grad=True)
    out = F.neighborhood_attention2d(q, k, v, 3, rel=rel, border=border, backend=backend)
    _check(out, (0, 6, 6, 2, 3), q, k, v, rel)
    assert not rel.grad.any()


@pytest.mark.parametrize("backend", ["torch", "sdpa", pytest.param("kernel", marks=needs_kernel("window"))])
@pytest.mark.parametrize("shift", [0, 1])
def test_window_attention_of_an_empty_batch(backend, shift):
    q, k, v = _empty(6, 6, 2, 4), _empty(6, 6, 2, 4), _empty(6, 6, 2, 3)
    bias = torch.randn(2, 5, 5, requires_grad=True)
    out = F.window_attention2d(q, k, v, 3, shift=shift, bias=bias, backend=backend)
    _check(out, (0, 6, 6, 2, 3), q, k, v, bias)


@pytest.mark.parametrize("backend", ["torch", pytest.param("kernel", marks=needs_kernel("dwconv"))])
def test_dynamic_convolutions_of_an_empty_batch(backend):
    x, kernels = _empty(4, 6, 6), _empty(4, 3, 3)
    _check(F.image_dwconv2d(x, kernels, backend=backend), (0, 4, 6, 6), x, kernels)
    x, pixel = _empty(4, 6, 6), _empty(2, 9, 6, 6)
    _check(F.pixel_dwconv2d(x, pixel, backend=backend), (0, 4, 6, 6), x, pixel)


def test_sequence_attention_of_an_empty_batch():
    q, k, v = _empty(3, 4), _empty(5, 4), _empty(5, 2)
    out = F.dot_product_attention(q, k, v)
    _check(out[0] if isinstance(out, tuple) else out, (0, 3, 2), q, k, v)
    scores = _empty(3, 5)
    _check(F.masked_softmax(scores, torch.zeros(0, dtype=torch.long)), (0, 3, 5), scores)


def test_a_local_attention_resnet_classifies_an_empty_batch():
    model = create_model("resnet_digits", mixer="sasa", mixer_options={"kernel_size": 3, "num_heads": 4})
    assert model.eval()(torch.zeros(0, 1, 8, 8)).shape == (0, 10)
