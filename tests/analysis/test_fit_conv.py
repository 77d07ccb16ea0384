"""Learning a conv: the offset count on hand-made centres, determinism, the fit's progress, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from convattn.analysis.centres import grid_offsets
from convattn.analysis.fit_conv import (
    TARGET_ERROR,
    FitConvRecipe,
    distinct_offsets,
    fit_conv,
    fit_conv_rows,
    fit_conv_summary,
)


def test_distinct_offsets_counts_the_nearest_grid_points():
    grid = grid_offsets(3)
    assert distinct_offsets(grid) == 9
    assert distinct_offsets(grid + 0.3) == 9  # within half a pixel: the same taps
    assert distinct_offsets(np.zeros((9, 2))) == 1  # every head on the query
    assert distinct_offsets(grid * 5) == 9  # far out: clamped onto the border taps, still distinct
    two_on_one = grid.copy()
    two_on_one[8] = two_on_one[7] + 0.1
    assert distinct_offsets(two_on_one) == 8
    for bad in (np.zeros((9, 3)), np.full((9, 2), np.nan)):
        with pytest.raises(ValueError, match="centres must be finite"):
            distinct_offsets(bad)


SHORT = replace(FitConvRecipe(), steps=300, max_attempts=1)


def test_a_short_fit_is_deterministic_and_cuts_the_error_by_orders_of_magnitude():
    a, b = fit_conv(seed=0, recipe=SHORT), fit_conv(seed=0, recipe=SHORT)
    assert a.test_error == b.test_error and np.array_equal(a.final_centres, b.final_centres)
    assert a.test_error < a.init_test_error / 100  # from ~1 at the random start
    assert a.init_distinct_offsets == distinct_offsets(a.init_centres)
    assert a.distinct_offsets == distinct_offsets(a.final_centres)
    curve, heads = fit_conv_rows(a)
    assert len(heads) == 18 and {h["stage"] for h in heads} == {"init", "final"}
    assert curve[0]["step"] == 0 and curve[-1]["train_error"] < curve[0]["train_error"]
    row = fit_conv_summary(a)
    assert row["success"] == int(a.test_error <= TARGET_ERROR and a.distinct_offsets >= 8)


@pytest.mark.slow
def test_the_full_recipe_learns_the_conv_on_the_first_seeds():
    for seed in range(3):
        r = fit_conv(seed=seed)
        assert r.test_error <= TARGET_ERROR and r.distinct_offsets >= 8, (seed, r.test_error)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"seed": -1}, "seed"),
    ({"size": 2}, "size"),
    ({"in_channels": 0}, "in_channels"),
    ({"recipe": "fast"}, "recipe must be a FitConvRecipe"),
])  # fmt: skip
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises((TypeError, ValueError), match=words):
        fit_conv(**kwargs)
