"""The model registry swept whole, then what the sweep cannot see family by family.

Every preset builds on the meta device (no memory, no init cost) with the head its entry names, and
the full-size ones are held to their published parameter counts; every tiny preset trains (forward +
backward, every parameter gets a finite gradient) and every other small one runs at its size.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from convattn.analysis.summary import count_parameters, model_table
from convattn.layers.blocks import DropPath, PatchMerging, StridedPointwiseConv
from convattn.layers.mixers import SASA, DynamicDWConv, WindowAttention, list_mixers
from convattn.models.attention_net import AttentionNet
from convattn.models.dwnet import DWNet
from convattn.models.registry import create_model, list_models, model_info
from convattn.models.resnet import KEEPS_WIDTH
from convattn.models.sasa_resnet import DEPTHS, Bottleneck, SASAResNet
from convattn.models.swin import SwinBlock, SwinTransformer, stage_windows
from convattn.models.vit import Attention, VisionTransformer
from convattn.utils.checks import check_multiple_of, check_odd

MODELS = list_models(task="classification")
TINY = [n for n in MODELS if n.endswith(("_tiny", "_digits"))]
SMALL = [n for n in MODELS if model_info(n).image_size <= 32 and n not in TINY]
FULL = [n for n in MODELS if model_info(n).image_size > 32]


def meta_params(name: str, **overrides: object) -> int:
    """Parameters of a registered model, built on the meta device (shapes only)."""
    with torch.device("meta"):
        return count_parameters(create_model(name, **overrides))


def image(name: str, batch: int = 2) -> torch.Tensor:
    info = model_info(name)
    return torch.randn(batch, info.in_chans, info.image_size, info.image_size)


# --- the sweep ---------------------------------------------------------------------------------------


def test_every_family_has_a_tiny_preset() -> None:
    families = Counter(model_info(n).family for n in MODELS)
    for family, presets in families.items():
        names = [n for n in MODELS if model_info(n).family == family]
        assert any(n.endswith("_tiny") for n in names), (family, names)
        assert family == "digits" or presets >= 3, (family, names)


@pytest.mark.parametrize("name", MODELS)
def test_every_preset_builds_with_the_head_its_entry_names(name: str) -> None:
    for classes in (None, 7):
        with torch.device("meta"):
            model = create_model(name) if classes is None else create_model(name, num_classes=classes)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert head.out_features == (classes or model_info(name).num_classes)


# Exact counts: torchvision (ResNet-50), the official Swin code (Swin-T, without the relative position
# index buffer), the official DWNet code, timm's ViT-B/16, Cordonnier et al.'s code, the common CIFAR
# ResNet-18 (3x3 stem, no max-pool); ours for ResNet-26/38 and SASA (see sasa_resnet's docstring).
PUBLISHED = {
    "resnet18_cifar": 11_173_962,
    "attention_net_quadratic": 12_086_844,
    "attention_net_relative": 12_278_682,
    "attention_net_relative_content": 29_601_882,
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


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_published_parameter_counts_are_exact(name: str, count: int) -> None:
    assert meta_params(name) == count


def test_every_full_size_preset_is_at_224_with_1000_classes_and_a_published_count() -> None:
    assert FULL and not [n for n in FULL if n not in PUBLISHED]
    assert {(model_info(n).image_size, model_info(n).num_classes) for n in FULL} == {(224, 1000)}


TRAIN_CASES = [(name, {}) for name in TINY] + [
    ("sasa_resnet_tiny", {"stem": "conv"}),
    ("sasa_resnet_tiny", {"stem": "cifar"}),
    ("sasa_resnet_tiny", {"mixer": "conv"}),
    ("dwnet_tiny", {"dynamic": True}),
]


@pytest.mark.parametrize(("name", "overrides"), TRAIN_CASES)
def test_every_tiny_preset_trains_and_every_parameter_gets_a_gradient(
    name: str, overrides: dict[str, object]
) -> None:
    model = create_model(name, **overrides)
    y = model(image(name))
    assert y.shape == (2, model_info(name).num_classes) and torch.isfinite(y).all()
    y.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", SMALL)
def test_every_other_small_preset_runs_at_its_size(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(image(name))
    assert y.shape == (2, model_info(name).num_classes) and torch.isfinite(y).all()


def test_list_models_filters_with_patterns_and_the_table_counts() -> None:
    assert list_models("resnet18_cifar*")[0] == "resnet18_cifar"
    assert all(n.startswith("attention_net") for n in list_models("attention_net*"))
    rows = model_table("cnn_tiny", details=True)
    assert rows[0]["params"] == count_parameters(create_model("cnn_tiny"))
    # 3 convs on 8x8 / 8x8 / 4x4 maps (4, 8, 8 channels) and the head: multiply-adds by hand
    assert rows[0]["macs"] == 64 * 1 * 4 * 9 + 64 * 4 * 8 * 9 + 16 * 8 * 8 * 9 + 8 * 10


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: create_model("resnet18_cifr"), ValueError, "did you mean 'resnet18_cifar"),
        (lambda: create_model("cnn_tiny", num_classes=0), ValueError, "num_classes=0"),
        (lambda: create_model("cnn_tiny", num_classes=2.5), ValueError, "num_classes=2.5"),
        (lambda: create_model("attention_net_tiny", image_size=7), ValueError, "multiple of 2"),
        (lambda: create_model("vit_cifar_small", image_size=30), ValueError, "multiple of 4"),
        (lambda: create_model("swin_t", image_size=225), ValueError, "image_size=225"),
        (lambda: create_model("dwnet_tiny", image_size=33), ValueError, "image_size=33"),
        (lambda: create_model("vit_digits", image_size=7), ValueError, "image_size=7"),
        (lambda: create_model("resnet_tiny", mixer="convv"), ValueError, "unknown mixer 'convv'"),
        (lambda: create_model(3), TypeError, "must be a string"),
    ],
)
def test_bad_requests_are_named(call, error, words) -> None:
    with pytest.raises(error, match=words):
        call()


VIT = {"image_size": 32, "patch_size": 4, "dim": 32, "depth": 1, "num_heads": 2}


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (VisionTransformer, {**VIT, "image_size": 30}, r"image_size must be a multiple of patch_size, got "
         r"image_size=30, patch_size=4"),
        (VisionTransformer, {**VIT, "dim": 30, "num_heads": 4}, "num_heads must divide"),
        (VisionTransformer, {**VIT, "patch_size": 0}, "patch_size=0"),
        (VisionTransformer, {**VIT, "mlp_ratio": 0.0}, "mlp_ratio must be positive, got mlp_ratio=0.0"),
        (VisionTransformer, {**VIT, "drop_path_rate": 1.5}, "drop_path_rate=1.5"),
        (SwinTransformer, {"num_heads": (3, 6)}, "one entry per stage"),
        (SwinTransformer, {"embed_dim": 10}, "num_heads must divide"),
        (SwinTransformer, {"image_size": 30}, r"multiple of patch_size, got image_size=30, patch_size=4"),
        (SwinTransformer, {"patch_size": 0}, "patch_size=0"),
        (DWNet, {"depths": ()}, "at least one stage"),
        (DWNet, {"kernel_size": 4}, r"kernel_size must be odd .*kernel_size=4"),
        (DWNet, {"image_size": (224, 30)}, r"got image_size=\(224, 30\), patch_size=4"),
        (AttentionNet, {"image_size": 7}, "image_size must be a multiple of downsample, got image_size=7, "
         "downsample=2"),
        (SASAResNet, {"stem": "patch"}, "stem must be one of"),
        (SASAResNet, {"mixer": "window"}, "mixer must be one of"),
        (SASAResNet, {"layers": (1, 0)}, "blocks per stage"),
    ],
)  # fmt: skip
def test_constructors_name_the_bad_values(
    cls: type[nn.Module], kwargs: dict[str, object], match: str
) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_models_refuse_inputs_that_are_not_multiples_of_the_patch() -> None:
    with pytest.raises(ValueError, match=r"image size=\(30, 32\), patch_size=4"):
        create_model("vit_tiny")(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"image size=\(8, 9\), patch_size=2"):
        create_model("swin_tiny")(torch.randn(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"image size=\(7, 8\), downsample=2"):
        create_model("attention_net_tiny")(torch.randn(1, 3, 7, 8))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: check_multiple_of("image_size", 30, "patch_size", 4), ValueError,
         "image_size must be a multiple of patch_size, got image_size=30, patch_size=4"),
        (lambda: check_multiple_of("image_size", (32, 30), "window", 8), ValueError,
         r"got image_size=\(32, 30\), window=8"),
        (lambda: check_multiple_of("image_size", 32, "patch_size", 0), ValueError, "patch_size=0"),
        (lambda: check_multiple_of("image_size", 3.0, "patch_size", 1), ValueError, "image_size=3.0"),
        (lambda: check_odd("kernel_size", 4), ValueError, "kernel_size must be odd .*got kernel_size=4"),
        (lambda: check_odd("kernel_size", (3, 6)), ValueError, r"got kernel_size=\(3, 6\)"),
        (lambda: check_odd("kernel_size", 0), ValueError, "kernel_size=0"),
        (lambda: check_odd("window", True), ValueError, "window=True"),
    ],
)  # fmt: skip
def test_the_shared_checks_name_the_values(call, error, words) -> None:
    with pytest.raises(error, match=words):
        call()


def test_the_shared_checks_pass_good_values_through() -> None:
    assert check_multiple_of("image_size", 32, "patch_size", 4) == (32, 32)
    assert check_multiple_of("image_size", (8, 12), "patch_size", 4) == (8, 12)
    assert check_odd("kernel_size", 7) == 7 and check_odd("kernel_size", (3, 5)) == (3, 5)


# --- ResNet with any mixer -------------------------------------------------------------------------------


@pytest.mark.parametrize("mixer", list_mixers())
def test_resnet_swaps_every_3x3_conv_for_any_mixer(mixer: str) -> None:
    model = create_model("resnet_tiny", mixer=mixer)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs[0] is model.stem[0] and model.stem[0].in_channels == 3  # a conv stem for every mixer
    assert len(convs) == (9 if mixer == "conv" else 1)  # stem + 2 per block, or the stem alone
    y = model(torch.randn(2, 3, 12, 12))
    assert y.shape == (2, 10)
    y.sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def _stem_rank(model: nn.Module, x: torch.Tensor) -> int:
    """Rank of the stem's output as a (C, B·H·W) matrix: how many independent maps it gives."""
    with torch.no_grad():
        y = model.double().eval().stem(x)  # (B, C, H, W)
    return int(torch.linalg.matrix_rank(y.transpose(0, 1).flatten(1)))


@pytest.mark.parametrize("mixer", list_mixers())
def test_resnet_stem_gives_independent_channels_for_every_mixer(mixer: str) -> None:
    """Attention on a 1-channel image is degenerate (q, k, v multiples of one pixel value): the stem
    must not be the mixer, as SASA's never is."""
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert _stem_rank(create_model("resnet_digits", mixer=mixer), x) == 16  # min(C, B·H·W)
    if mixer != "conv" and mixer not in KEEPS_WIDTH:  # the old stem, kept as an opt-in, is rank-poor
        assert _stem_rank(create_model("resnet_digits", mixer=mixer, stem="mixer"), x) < 16


# Ours, with the conv stem (3x3, 3 -> 64: 1,728 weights) for every mixer.
RESNET_MIXERS = {
    "resnet18_cifar_sasa": 3_877_194,
    "resnet18_cifar_dwconv": 530_122,
    "resnet18_cifar_dynamic": 14_714_218,
    "resnet18_cifar_window": 4_833_162,
}


@pytest.mark.parametrize(("name", "count"), RESNET_MIXERS.items())
def test_resnet_mixer_presets_have_their_counts(name: str, count: int) -> None:
    assert meta_params(name) == count


def _activation_stds(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Std of every spatial layer's output (what its BN then sees) and of every block's, in training."""
    stds: list[float] = []
    layers = [m for b in model.blocks for m in (b.conv1, b.conv2, b)]
    hooks = [m.register_forward_hook(lambda m, i, o: stds.append(float(o.std()))) for m in layers]
    with torch.no_grad():
        model.train()(x)
    for h in hooks:
        h.remove()
    return stds


def test_dynamic_dwconv_resnet_starts_at_the_scale_of_the_conv_resnet() -> None:
    x = torch.randn(32, 1, 8, 8)
    conv = _activation_stds(create_model("resnet_digits"), x)
    model = create_model("resnet_digits", mixer="dynamic_dwconv")
    ratios = [d / c for c, d in zip(conv, _activation_stds(model, x), strict=True)]
    assert max(ratios) <= 2, ratios
    for m in model.modules():  # torch's default predictor init, as before: 5-17x at some layer
        if isinstance(m, DynamicDWConv):
            m.expand.reset_parameters()
    assert max(d / c for c, d in zip(conv, _activation_stds(model, x), strict=True)) > 4


# --- SASA ResNets ---------------------------------------------------------------------------------------

# Ramachandran et al. 2019, Table 1 (millions): conv baseline, conv stem + attention, full attention.
SASA_TABLE = {26: (13.7, 10.3, 10.3), 38: (19.6, 14.1, 14.1), 50: (25.6, 18.0, 18.0)}
VARIANTS = (
    {"mixer": "conv", "stem": "conv"},
    {"mixer": "sasa", "stem": "conv"},
    {"mixer": "sasa", "stem": "attention"},
)


@pytest.mark.parametrize("depth", sorted(SASA_TABLE))
def test_sasa_resnets_match_the_published_sizes(depth: int) -> None:
    for variant, published in zip(VARIANTS, SASA_TABLE[depth], strict=True):
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


# --- ViT ------------------------------------------------------------------------------------------------


def test_vit_resizes_its_position_grid_for_other_inputs() -> None:
    model = create_model("vit_tiny").eval()
    assert model.positions((8, 8)) is model.pos_embed
    pos = model.positions((12, 10))
    assert pos.shape == (1, 1 + 12 * 10, 32)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])
    assert model(torch.randn(2, 3, 48, 40)).shape == (2, 10)


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


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    y = drop(x)
    kept = y.flatten(1).amax(1)
    assert set(kept.unique().tolist()) <= {0.0, 2.0} and 0 < int((kept == 0).sum()) < 64
    assert torch.equal(drop.eval()(x), x)


# --- Swin and DWNet -------------------------------------------------------------------------------------


def test_swin_s_and_b_counts_match_the_official_code() -> None:
    assert meta_params("swin_t", depths=(2, 2, 18, 2)) == 49_606_258
    assert meta_params("swin_t", depths=(2, 2, 18, 2), embed_dim=128, num_heads=(4, 8, 16, 32)) == 87_768_224


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


def test_the_strided_shortcut_is_the_strided_1x1_conv_and_survives_channels_last() -> None:
    """torch's CPU backward of a strided 1×1 conv corrupts the heap for channels-last inputs of <= 8
    channels at 64×64 (the process aborts); the shortcut computes the same conv without that path."""
    torch.manual_seed(0)
    ours = StridedPointwiseConv(8, 16, 2).double()
    conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).double()
    conv.load_state_dict(ours.state_dict())
    for size in (7, 8):  # odd sides keep the last pixel, as the strided conv does
        x = torch.randn(2, 8, size, size, dtype=torch.float64)
        torch.testing.assert_close(ours(x), conv(x), rtol=1e-12, atol=1e-12)
    ours = ours.float().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 64, 64).to(memory_format=torch.channels_last).requires_grad_()
    y = ours(x)
    y.backward(torch.randn(y.shape).to(memory_format=torch.channels_last))
    assert x.grad is not None and x.grad.shape == x.shape and ours.weight.grad is not None
