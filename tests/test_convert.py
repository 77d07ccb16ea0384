"""Conv2d ⇄ attention: Theorem 1 as an exact conversion, and the way back."""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from convattn.convert import ConvAsAttention, attention_to_conv, conv_to_attention, one_hot_spread
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d

f64 = torch.float64


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.integers(0, 3),
            st.tuples(st.integers(0, 3), st.integers(0, 3)),
            st.just("valid"),
            st.just("same") if stride == (1, 1) else st.just("valid"),  # torch: 'same' needs stride 1
        )
    )
    return {
        "in_channels": groups * draw(st.integers(1, 3)),
        "out_channels": groups * draw(st.integers(1, 3)),
        "kernel_size": (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        "stride": stride,
        "padding": padding,
        "dilation": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
    }


def _check_conversion(cfg, size, dtype, atol):
    torch.manual_seed(0)
    conv = nn.Conv2d(**cfg).to(dtype)
    x = torch.randn(2, cfg["in_channels"], *size, dtype=dtype)
    attn = conv_to_attention(conv)
    try:
        with torch.no_grad():
            expected = conv(x)
    except RuntimeError:  # the conv itself refuses (input smaller than kernel, padding too large)
        event("refused")
        with pytest.raises(ValueError, match=r"input|pad"):
            attn(x)
        return
    event("compared")
    with torch.no_grad():
        got = attn(x)
    assert got.shape == expected.shape and got.dtype == dtype
    assert float((got - expected).abs().max()) <= atol


@settings(max_examples=300, deadline=None)
@given(conv_configs(), st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_conv_to_attention_is_exact_in_float64(cfg, size):
    _check_conversion(cfg, size, f64, 1e-10)


@settings(max_examples=150, deadline=None)
@given(conv_configs(), st.tuples(st.integers(1, 12), st.integers(1, 12)))
def test_conv_to_attention_is_exact_in_float32(cfg, size):
    _check_conversion(cfg, size, torch.float32, 1e-5)


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_round_trip_returns_the_same_conv(cfg):
    torch.manual_seed(1)
    conv = nn.Conv2d(**cfg).double()
    back = attention_to_conv(conv_to_attention(conv))
    assert back.exact and back.kept_mass == 1.0
    c = back.conv
    assert torch.equal(c.weight, conv.weight)
    assert (c.bias is None) == (conv.bias is None) and (c.bias is None or torch.equal(c.bias, conv.bias))
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(c, attr) == getattr(conv, attr), attr


def test_converted_heads_are_one_hot_to_machine_precision():
    for dtype in (torch.float32, f64):
        attn = conv_to_attention(nn.Conv2d(3, 4, 3, padding=1).to(dtype)).attention
        probs = attn.attention_probs(torch.zeros(1, 3, 7, 7, dtype=dtype), (3, 3))[0].flatten(1)  # (9, 49)
        eps = torch.finfo(dtype).eps
        assert float(probs.max(1).values.min()) >= 1 - eps
        assert float(probs.sort(1).values[:, :-1].sum(1).max()) <= eps
        assert one_hot_spread(dtype) > 5


def test_converted_layer_has_one_head_per_shift_centred_on_the_kernel():
    conv = nn.Conv2d(2, 2, (3, 4), dilation=(2, 1))
    attn = conv_to_attention(conv).attention
    assert attn.num_heads == 12 and attn.encoding == "quadratic"
    rows = sorted({int(r) for r in attn.centres[:, 0]})
    cols = sorted({int(c) for c in attn.centres[:, 1]})
    assert rows == [-2, 0, 2] and cols == [-1, 0, 1, 2]


def test_one_hot_bare_layer_is_a_replicate_padded_conv_everywhere():
    layer = MultiHeadSelfAttention2d(4, 5, num_heads=3, encoding="quadratic").double()
    with torch.no_grad():
        layer.centres.copy_(torch.tensor([[0.0, 0.0], [1.0, -2.0], [-1.0, 1.0]]))
        layer.spreads.fill_(12.0)
    x = torch.randn(2, 4, 9, 8, dtype=f64)
    result = attention_to_conv(layer, x=x)
    assert result.exact and result.conv.kernel_size == (3, 5) and result.conv.padding_mode == "replicate"
    assert result.max_error is not None and result.max_error < 1e-12


def test_soft_attention_gives_a_truncated_conv_with_measured_error():
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention2d(4, 5, num_heads=3, encoding="quadratic").double()
    x = torch.randn(2, 4, 40, 40, dtype=f64)
    coarse = attention_to_conv(layer, tol=1e-2, x=x)
    fine = attention_to_conv(layer, tol=1e-9, x=x)
    assert not coarse.exact and not fine.exact
    assert coarse.conv.kernel_size[0] < fine.conv.kernel_size[0]
    assert coarse.kept_mass < fine.kept_mass <= 1.0 and fine.kept_mass > 1 - 1e-6
    assert fine.interior_max_error is not None and coarse.interior_max_error is not None
    assert fine.interior_max_error < 1e-6 < coarse.interior_max_error
    # By hand: the interior output is Σ over offsets of the truncated weights times the head taps.
    assert fine.max_error is not None and fine.max_error >= fine.interior_max_error


def test_relative_position_only_layer_is_a_conv_at_the_centre():
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention2d(4, 5, num_heads=2, encoding="relative", max_size=4).double()
    result = attention_to_conv(layer, tol=1e-12, x=torch.randn(1, 4, 7, 7, dtype=f64))
    assert result.conv.kernel_size == (7, 7)
    assert result.interior_max_error is not None and result.interior_max_error < 1e-12


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: conv_to_attention(nn.ConvTranspose2d(2, 2, 3)), TypeError, "transposed"),
        (lambda: conv_to_attention(nn.Conv1d(2, 2, 3)), TypeError, "Conv1d"),
        (
            lambda: conv_to_attention(nn.Conv2d(2, 2, 3), num_heads=12),
            ValueError,
            "num_heads must be 9, got num_heads=12",
        ),
        (lambda: conv_to_attention(nn.Conv2d(2, 2, 3), num_heads=4), ValueError, "num_heads=4"),
        (lambda: conv_to_attention(nn.LazyConv2d(2, 3)), ValueError, "lazy"),
        (lambda: attention_to_conv(MultiHeadSelfAttention2d(4, num_heads=2)), ValueError, "encoding='none'"),
        (
            lambda: attention_to_conv(
                MultiHeadSelfAttention2d(4, num_heads=2, encoding="quadratic"), tol=0.0
            ),
            ValueError,
            "tol=0.0",
        ),
        (lambda: attention_to_conv(nn.Conv2d(2, 2, 3)), TypeError, "Conv2d"),
    ],
)
def test_bad_input_is_named(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_moved_heads_of_a_converted_layer_are_refused():
    converted = conv_to_attention(nn.Conv2d(2, 2, 3).double())
    with torch.no_grad():
        converted.attention.spreads.fill_(0.5)  # no longer one-hot
    with pytest.raises(ValueError, match="no longer one-hot"):
        attention_to_conv(converted)
    assert isinstance(converted, ConvAsAttention)
    approx = attention_to_conv(converted.attention, tol=1e-4)
    assert not approx.exact


def test_too_small_inputs_are_refused_like_the_conv_does():
    converted = conv_to_attention(nn.Conv2d(2, 2, 5))
    with pytest.raises(ValueError, match="smaller than the"):
        converted(torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="reflect-pad"):
        conv_to_attention(nn.Conv2d(2, 2, 3, padding=3, padding_mode="reflect"))(torch.randn(1, 2, 2, 2))


def test_check_conversion_covers_the_table():
    from convattn.analysis.conversion import CONV_TABLE, check_conversion

    options = {k for cfg in CONV_TABLE for k in cfg}
    assert {"stride", "dilation", "padding", "padding_mode", "groups", "bias"} <= options
    modes = {cfg.get("padding_mode", "zeros") for cfg in CONV_TABLE}
    assert modes == {"zeros", "reflect", "replicate", "circular"}
    for cfg in CONV_TABLE:
        row = check_conversion(cfg, size=(9, 10))
        assert row["max_error_float32"] <= 1e-5 and row["max_error_float64"] <= 1e-10 and row["round_trip"]


def test_pictures(tmp_path):
    import matplotlib.image as mpimg

    from convattn.analysis.viz import mass_levels, plot_attention_heads, plot_quadratic_centres

    layer = conv_to_attention(nn.Conv2d(3, 4, 3, padding=1)).attention
    for path in (
        plot_attention_heads(layer, tmp_path / "heads.png", size=(11, 11)),
        plot_quadratic_centres(layer, tmp_path / "centres.png"),
        plot_attention_heads(
            MultiHeadSelfAttention2d(8, num_heads=2), tmp_path / "c.png", x=torch.randn(1, 8, 6, 6)
        ),
    ):
        assert min(mpimg.imread(path).shape[:2]) > 100
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert mass_levels(probs) == pytest.approx([0.2, 0.3])  # {.4, .3} holds 70% >= 50%; {.., .2} 90%
    with pytest.raises(ValueError, match="content"):
        plot_attention_heads(MultiHeadSelfAttention2d(8, num_heads=2), tmp_path / "x.png", size=(4, 4))
    with pytest.raises(ValueError, match="quadratic"):
        plot_quadratic_centres(MultiHeadSelfAttention2d(8, num_heads=2), tmp_path / "y.png")


def test_check_conversion_leaves_the_callers_warning_filters_alone():
    import warnings

    from convattn.analysis.conversion import check_conversion

    even_same = {"in_channels": 2, "out_channels": 2, "kernel_size": 2, "padding": "same"}  # torch warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped the call would raise here
        before = list(warnings.filters)
        row = check_conversion(even_same, size=(6, 7))
        assert warnings.filters == before
    assert row["round_trip"] and row["max_error_float64"] <= 1e-10


def test_conversion_table_marks_an_inexact_row():
    from convattn.analysis.conversion import CONV_TABLE, check_conversion, conversion_table

    rows = [check_conversion(cfg, size=(9, 10)) for cfg in CONV_TABLE[:2]]
    lines, exact = conversion_table(rows)
    assert exact and len(lines) == 2 + len(rows) and all(line.endswith("identical") for line in lines[2:])
    lines, exact = conversion_table([*rows, {**rows[0], "max_error_float64": 1e-3}])
    assert not exact
    lines, exact = conversion_table([{**rows[0], "round_trip": False}])
    assert not exact and lines[-1].endswith("DIFFERENT")
