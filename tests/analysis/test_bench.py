import math
import random

import pytest

from convattn.analysis.bench import paired_ratios


def test_paired_ratios_cancel_what_the_repeats_share():
    # a machine whose speed drifts 3x between repeats: both operators see the same drift
    random.seed(0)
    drift = [random.uniform(1.0, 3.0) for _ in range(9)]
    base = [1e-3 * f for f in drift]
    times = [2.5e-3 * f for f in drift]
    ratio, noise = paired_ratios(times, base)
    assert ratio == pytest.approx(2.5, rel=1e-12) and noise == pytest.approx(0.0, abs=1e-12)


def test_paired_ratios_report_their_spread():
    # per-repeat ratios 1, 2, 3, 4: median 2.5, quartiles 1.25 and 3.75 (exclusive method)
    ratio, noise = paired_ratios([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert ratio == 2.5 and noise == pytest.approx(2.5 / 2.5)


def test_paired_ratios_of_a_forward_only_operator_are_nan():
    ratio, noise = paired_ratios([math.nan, math.nan], [1.0, 2.0])
    assert math.isnan(ratio) and math.isnan(noise)


@pytest.mark.parametrize(
    ("times", "base", "match"),
    [([1.0], [1.0, 2.0], "one baseline time per time"), ([], [], "one baseline"), ([1.0], [0.0], "positive")],
)
def test_paired_ratios_refuse_bad_input(times, base, match):
    with pytest.raises(ValueError, match=match):
        paired_ratios(times, base)
