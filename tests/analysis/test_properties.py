"""The measured property table reproduces the pattern of Han et al. (2022, Table 1); MAC counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convattn.analysis.flops import count_macs
from convattn.analysis.properties import measure_properties
from convattn.layers.mixers import create_mixer

# support, channel mixing, shared across positions, shared across channels, dynamic
EXPECTED = {
    "conv": ("local 3x3", True, True, False, False),
    "dwconv": ("local 3x3", False, True, False, False),
    "dynamic_dwconv": ("local 3x3", False, True, False, True),
    "dynamic_dwconv_pixel": ("local 3x3", False, False, True, True),
    "local_mlp": ("local 3x3", False, True, True, False),
    "sasa": ("local 3x3", False, False, True, True),
    "sasa_stem": ("window 3x3", False, False, True, True),
    "window": ("window 3x3", False, False, True, True),
    "mhsa": ("global", False, False, True, True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_property_pattern(name):
    p = measure_properties(name)
    assert (
        p.support,
        p.channel_mixing,
        p.shared_across_positions,
        p.shared_across_channels,
        p.dynamic,
    ) == EXPECTED[name]
    assert p.macs[32] > p.macs[16] > 0
    if name == "mhsa":  # global attention: quadratic in the number of pixels
        assert p.macs[32] > 8 * p.macs[16]
        assert len(set(p.params.values())) == 1
    else:  # local operators: linear in pixels, parameters grow with the window
        assert p.macs[32] == pytest.approx(4 * p.macs[16], rel=0.1)
        assert p.params[3] < p.params[7]


def test_count_macs_matches_the_formulas():
    x = torch.randn(2, 8, 12, 10)
    assert count_macs(create_mixer("dwconv", 8, kernel_size=5), x) == 2 * 12 * 10 * 8 * 25
    sasa = create_mixer("sasa", 8, kernel_size=5, num_heads=2)
    projections = 3 * 2 * 12 * 10 * 8 * 8
    # per pixel and head of 4: q·k and the weighted sum over 25 keys; the relative logits are decomposed
    # (SASA's row and column halves), so q·rel costs 5 + 5 dot products, not 25
    attention = 2 * 12 * 10 * 2 * (25 * (4 + 4) + (5 + 5) * 4)
    assert count_macs(sasa, x) == projections + attention
    q = torch.randn(2, 3, 50, 16)
    v = torch.randn(2, 3, 40, 8)
    assert count_macs(F.scaled_dot_product_attention, q, torch.randn(2, 3, 40, 16), v) == 2 * 3 * 50 * 40 * (
        16 + 8
    )


def test_unknown_mixer_is_named():
    with pytest.raises(ValueError, match="unknown mixer 'nope'"):
        measure_properties("nope")
