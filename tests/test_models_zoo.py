"""The model zoo of the literature: SASA ResNets, ViT, Swin and DWNet.

Tiny presets train (forward + backward, every parameter gets a gradient); full-size presets are
built on the meta device (no memory, no init cost) and held to their exact parameter counts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convattn.layers.mixers import SASA, DynamicDWConv, WindowAttention
from convattn.models.dwnet import DWNet
from convattn.models.registry import create_model, list_models, model_info
from convattn.models.sasa_resnet import DEPTHS, Bottleneck, SASAResNet
from convattn.models.swin import PatchMerging, SwinBlock, SwinTransformer, stage_windows
from convattn.models.vit import Attention, DropPath, VisionTransformer

FAMILIES = ("sasa_resnet", "vit", "swin", "dwnet")
ZOO = [name for name in list_models() if model_info(name).family in FAMILIES]
SMALL = [name for name in ZOO if model_info(name).image_size <= 32]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_params(name: str, **overrides: object) -> int:
    """Parameters of a registered model, built on the meta device (shapes only)."""
    with torch.device("meta"):
        return n_params(create_model(name, **overrides))


def image(name: str, batch: int = 2, size: int | None = None) -> torch.Tensor:
    info = model_info(name)
    side = size or info.image_size
    return torch.randn(batch, info.in_chans, side, side)


def test_every_family_has_a_tiny_preset() -> None:
    for family in FAMILIES:
        names = [n for n in ZOO if model_info(n).family == family]
        assert 3 <= len(names) and any(n.endswith("_tiny") for n in names), (family, names)


TRAIN_CASES = [
    ("sasa_resnet_tiny", {}),
    ("sasa_resnet_tiny", {"stem": "conv"}),
    ("sasa_resnet_tiny", {"stem": "cifar"}),
    ("sasa_resnet_tiny", {"mixer": "conv"}),
    ("vit_tiny", {}),
    ("vit_digits", {}),
    ("swin_tiny", {}),
    ("dwnet_tiny", {}),
    ("dwnet_tiny", {"dynamic": True}),
]


@pytest.mark.parametrize(("name", "overrides"), TRAIN_CASES)
def test_tiny_models_train(name: str, overrides: dict[str, object]) -> None:
    model = create_model(name, **overrides)
    y = model(image(name))
    assert y.shape == (2, model_info(name).num_classes) and torch.isfinite(y).all()
    y.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_run_at_their_size(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(image(name))
    assert y.shape == (2, model_info(name).num_classes) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n in ZOO if n.endswith("_tiny")])
def test_num_classes_override_changes_the_head(name: str) -> None:
    model = create_model(name, num_classes=7)
    head = model.fc if isinstance(model, SASAResNet) else model.head
    assert head.out_features == 7
    assert model(image(name)).shape == (2, 7)


# Exact counts: torchvision (ResNet-50), the official Swin code (Swin-T/S/B, without the relative
# position index buffer), the official DWNet code, timm's ViT-B/16; ours for ResNet-26/38 and SASA.
EXACT = {
    "resnet26": 13_696_552,
    "resnet38": 19_626_792,
    "resnet50": 25_557_032,
    "sasa_resnet26": 10_335_144,
    "sasa_resnet38": 14_183_144,
    "sasa_resnet50": 18_031_144,
    "sasa_resnet50_convstem": 18_038_632,
    "swin_t": 28_288_354,
    "dwnet_t": 24_172_744,
    "dwnet_t_dynamic": 51_131_752,
    "dwnet_b": 74_347_112,
    "vit_b16": 86_567_656,
}


@pytest.mark.parametrize(("name", "count"), EXACT.items())
def test_full_size_parameter_counts_are_exact(name: str, count: int) -> None:
    info = model_info(name)
    assert (info.image_size, info.num_classes) == (224, 1000)
    assert meta_params(name) == count


def test_swin_s_and_b_counts_match_the_official_code() -> None:
    assert meta_params("swin_t", depths=(2, 2, 18, 2)) == 49_606_258
    assert meta_params("swin_t", depths=(2, 2, 18, 2), embed_dim=128, num_heads=(4, 8, 16, 32)) == 87_768_224


# Ramachandran et al. 2019, Table 1 (millions): conv baseline, conv stem + attention, full attention.
PUBLISHED = {26: (13.7, 10.3, 10.3), 38: (19.6, 14.1, 14.1), 50: (25.6, 18.0, 18.0)}
VARIANTS = (
    {"mixer": "conv", "stem": "conv"},
    {"mixer": "sasa", "stem": "conv"},
    {"mixer": "sasa", "stem": "attention"},
)


@pytest.mark.parametrize("depth", sorted(PUBLISHED))
def test_sasa_resnets_match_the_published_sizes(depth: int) -> None:
    for variant, published in zip(VARIANTS, PUBLISHED[depth], strict=True):
        count = meta_params("resnet50", layers=DEPTHS[depth], **variant)
        assert abs(count / 1e6 - published) <= 0.01 * published, (depth, variant, count)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_sasa_layer_saves_six_w_squared_minus_seven_w(depth: int) -> None:
    """SASA of width w: q, k, v (3w²) and row/column embeddings (7·w) where the 3×3 conv held 9w²."""
    widths = [64 * 2**i for i, n in enumerate(DEPTHS[depth]) for _ in range(n)]
    saved = meta_params(f"resnet{depth}") - meta_params(f"resnet{depth}", mixer="sasa")
    assert saved == sum(6 * w * w - 7 * w for w in widths)


def test_sasa_resnet_uses_attention_everywhere_it_should() -> None:
    model = create_model("sasa_resnet_tiny")
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(isinstance(b.conv2, SASA) and b.conv2.k == 7 for b in blocks)
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    strided = [b.conv2.stride for b in blocks]
    assert strided == [1, 2, 2, 2]


@pytest.mark.parametrize(("stem", "side"), [("conv", 8), ("attention", 8), ("cifar", 32)])
def test_sasa_resnet_stems(stem: str, side: int) -> None:
    model = create_model("sasa_resnet_tiny", stem=stem)
    assert model.stem(torch.randn(1, 3, 32, 32)).shape == (1, 8, side, side)


def test_vit_refuses_sizes_that_are_not_multiples_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        create_model("vit_cifar_small", image_size=30)
    model = create_model("vit_tiny")
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiples of the patch"):
        VisionTransformer(image_size=30, patch_size=4, dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize(("name", "size"), [("swin_t", 225), ("dwnet_tiny", 33), ("vit_digits", 7)])
def test_registry_refuses_unsuitable_sizes(name: str, size: int) -> None:
    with pytest.raises(ValueError, match="image_size"):
        create_model(name, image_size=size)


def test_vit_resizes_its_position_grid_for_other_inputs() -> None:
    model = create_model("vit_tiny").eval()
    assert model.positions((8, 8)) is model.pos_embed
    pos = model.positions((12, 10))
    assert pos.shape == (1, 1 + 12 * 10, 32)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])
    assert model(torch.randn(2, 3, 48, 40)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 30, "num_heads": 4}, "num_heads must divide"),
        ({"patch_size": 0}, "patch_size"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
    ],
)
def test_vit_validates_its_arguments(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"image_size": 32, "patch_size": 4, "dim": 32, "depth": 1, "num_heads": 2}
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SwinTransformer, {"num_heads": (3, 6)}, "one entry per stage"),
        (SwinTransformer, {"embed_dim": 10}, "num_heads must divide"),
        (SwinTransformer, {"image_size": 30}, "multiples of the patch"),
        (SwinTransformer, {"patch_size": 0}, "patch_size"),
        (DWNet, {"depths": ()}, "at least one stage"),
        (DWNet, {"kernel_size": 4}, "odd"),
        (SASAResNet, {"stem": "patch"}, "stem must be one of"),
        (SASAResNet, {"mixer": "window"}, "mixer must be one of"),
        (SASAResNet, {"layers": (1, 0)}, "blocks per stage"),
    ],
)
def test_constructors_name_the_bad_values(
    cls: type[nn.Module], kwargs: dict[str, object], match: str
) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_patch_merging_matches_the_official_slicing() -> None:
    merge = PatchMerging(3).double()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    expected = merge.reduction(merge.norm(torch.cat(parts, dim=-1)))
    torch.testing.assert_close(merge(x), expected, rtol=0, atol=1e-12)
    assert merge(torch.randn(1, 5, 7, 3, dtype=torch.float64)).shape == (1, 3, 4, 6)


def test_swin_windows_and_shifts_follow_the_official_rule() -> None:
    # Swin-T at 224: maps 56, 28, 14, 7; the last stage is one 7×7 window, never shifted.
    assert stage_windows((56, 56), 4, 7) == [(7, True), (7, True), (7, True), (7, False)]
    assert stage_windows((16, 16), 3, 4) == [(4, True), (4, True), (4, False)]
    with torch.device("meta"):
        model = create_model("swin_t")
    shifts = [[b.attn.shift for b in stage.blocks] for stage in model.layers]
    assert shifts == [[0, 3], [0, 3], [0, 3, 0, 3, 0, 3], [0, 0]]
    attn = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert len(attn) == 12 and all(a.w == 7 and a.bias_table.shape[1:] == (13, 13) for a in attn)


def test_swin_runs_on_sizes_that_are_not_multiples_of_the_window() -> None:
    model = create_model("swin_tiny").eval()
    assert all(isinstance(b, SwinBlock) for b in model.layers[0].blocks)
    assert model(torch.randn(1, 3, 34, 22)).shape == (1, 10)


def test_dynamic_dwnet_predicts_a_kernel_per_image() -> None:
    model = create_model("dwnet_tiny", dynamic=True).eval()
    convs = [m for m in model.modules() if isinstance(m, DynamicDWConv)]
    assert len(convs) == 2 and all(c.mode == "homogeneous" for c in convs)
    x = torch.randn(2, 16, 8, 8)
    kernels = convs[0].kernels(x)
    assert kernels.shape == (2, 16, 3, 3) and not torch.allclose(kernels[0], kernels[1])
    static = create_model("dwnet_tiny")
    assert not [m for m in static.modules() if isinstance(m, DynamicDWConv)]


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    y = drop(x)
    kept = y.flatten(1).amax(1)
    assert set(kept.unique().tolist()) <= {0.0, 2.0} and 0 < int((kept == 0).sum()) < 64
    assert torch.equal(drop.eval()(x), x)


def test_vit_attention_matches_torch_multihead_attention() -> None:
    attn = Attention(24, num_heads=3).double().eval()
    ref = nn.MultiheadAttention(24, 3, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x), ref(x, x, x, need_weights=False)[0], rtol=0, atol=1e-12)
