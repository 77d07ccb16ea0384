"""The model registry: every preset trains, the published parameter counts, and bad input."""

from __future__ import annotations

import pytest
import torch

from convattn.analysis.summary import count_parameters, model_table
from convattn.layers.mixers import list_mixers
from convattn.models.registry import create_model, list_models, model_info

TINY = [n for n in list_models() if n.endswith("_tiny") or n.endswith("digits")]


def test_every_family_has_a_tiny_preset():
    families = {model_info(n).family for n in list_models()}
    tiny_families = {model_info(n).family for n in list_models("*tiny*")}
    assert families - {"digits"} <= tiny_families | {"digits"}


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_preset_trains_and_every_parameter_gets_a_gradient(name):
    info = model_info(name)
    model = create_model(name)
    x = torch.randn(2, info.in_chans, info.image_size, info.image_size)
    y = model(x)
    assert y.shape == (2, info.num_classes) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18_cifar", 11_173_962),  # the common CIFAR ResNet-18 (3x3 stem, no max-pool)
        ("attention_net_quadratic", 12_086_844),  # Cordonnier et al.'s code
        ("attention_net_relative", 12_278_682),
        ("attention_net_relative_content", 29_601_882),
    ],
)
def test_published_parameter_counts(name, expected):
    assert count_parameters(create_model(name)) == expected


@pytest.mark.parametrize("mixer", list_mixers())
def test_resnet_swaps_every_3x3_conv_for_any_mixer(mixer):
    model = create_model("resnet_tiny", mixer=mixer)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    if mixer == "conv":
        assert len(convs) == 9  # stem + 2 per block
    elif mixer not in ("dwconv", "dynamic_dwconv", "local_mlp"):
        assert convs == []  # the stem of width-keeping mixers stays a conv (3 input channels)
    y = model(torch.randn(2, 3, 12, 12))
    assert y.shape == (2, 10)
    y.sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_num_classes_changes_the_head():
    model = create_model("cnn_tiny", num_classes=3)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: create_model("resnet18_cifr"), ValueError, "did you mean 'resnet18_cifar"),
        (lambda: create_model("cnn_tiny", num_classes=0), ValueError, "num_classes=0"),
        (lambda: create_model("cnn_tiny", num_classes=2.5), ValueError, "num_classes=2.5"),
        (lambda: create_model("attention_net_tiny", image_size=7), ValueError, "multiple of 2"),
        (lambda: create_model("resnet_tiny", mixer="convv"), ValueError, "unknown mixer 'convv'"),
        (lambda: create_model(3), TypeError, "must be a string"),
    ],
)
def test_bad_requests_are_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_list_models_filters_with_patterns_and_the_table_counts():
    assert list_models("resnet18_cifar*")[0] == "resnet18_cifar"
    assert all(n.startswith("attention_net") for n in list_models("attention_net*"))
    rows = model_table("cnn_tiny", details=True)
    assert rows[0]["params"] == count_parameters(create_model("cnn_tiny"))
    # 3 convs on 8x8 / 8x8 / 4x4 maps (4, 8, 8 channels) and the head: multiply-adds by hand
    assert rows[0]["macs"] == 64 * 1 * 4 * 9 + 64 * 4 * 8 * 9 + 16 * 8 * 8 * 9 + 8 * 10
