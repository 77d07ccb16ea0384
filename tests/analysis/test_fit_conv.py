"""Learning a 3×3 conv with quadratic attention (`convattn.analysis.fit_conv`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convattn.analysis.centres import grid_offsets
from convattn.analysis.fit_conv import (
    TARGET_DISTINCT,
    TARGET_ERROR,
    FitConvRecipe,
    distinct_offsets,
    fit_conv,
    fit_conv_rows,
    plot_fit_conv,
)
from convattn.utils.records import read_csv, write_csv

SHORT = FitConvRecipe(steps=300, max_attempts=1)  # ~0.4 s: the error falls ~1e4x by step 300


@pytest.fixture(scope="module")
def short_fit():
    return fit_conv(seed=0, log_every=50, recipe=SHORT)


@pytest.fixture(scope="module")
def full_fit():
    return fit_conv(seed=0)


# -- counting offsets on hand-made centres ---------------------------------------------------------


def test_the_grid_has_nine_distinct_offsets():
    assert distinct_offsets(grid_offsets(3)) == 9
    assert distinct_offsets(grid_offsets(3) + 0.55) == 4  # rows and columns round to {0, 1}


def test_collisions_and_far_heads_count_once():
    centres = grid_offsets(3).copy()
    centres[0] = [0.2, -0.3]  # head 0 leaves (-1, -1) for the centre tap, already taken
    centres[8] = [4.0, 7.5]  # far away: its nearest 3×3 offset is (1, 1), which it keeps
    assert distinct_offsets(centres) == 8
    assert distinct_offsets(np.zeros((9, 2))) == 1
    assert distinct_offsets([[0.49, -0.51]]) == 1


def test_distinct_offsets_rejects_bad_centres():
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        distinct_offsets(np.zeros(9))
    with pytest.raises(ValueError, match="finite"):
        distinct_offsets([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="kernel=4"):
        distinct_offsets(np.zeros((9, 2)), kernel=4)


# -- the fit ---------------------------------------------------------------------------------------


def test_a_fit_is_deterministic_for_its_seed(short_fit):
    again = fit_conv(seed=0, log_every=50, recipe=SHORT)
    for field in dataclasses.fields(short_fit):
        if field.name != "seconds":
            np.testing.assert_array_equal(getattr(again, field.name), getattr(short_fit, field.name))
    other = fit_conv(seed=1, log_every=50, recipe=SHORT)
    assert not np.array_equal(other.init_centres, short_fit.init_centres)


def test_a_short_fit_cuts_the_error_by_orders_of_magnitude(short_fit):
    assert short_fit.steps == (0, 50, 100, 150, 200, 250, 300)
    assert short_fit.init_test_error > 0.5  # a random layer explains almost nothing of the conv
    assert short_fit.train_error[-1] < short_fit.train_error[0] / 1000
    assert short_fit.test_error < short_fit.init_test_error / 1000  # held-out images agree
    assert short_fit.mean_distance < short_fit.init_mean_distance


def test_the_random_initialisation_is_not_on_the_grid(short_fit):
    # Centres ~ N(0, 2²): spread over several pixels, the spreads at 1 ± 0.01.
    assert np.abs(short_fit.init_centres).max() > 1.5
    assert short_fit.init_mean_distance > 0.5
    np.testing.assert_allclose(short_fit.init_spreads, 1.0, atol=0.05)
    assert short_fit.attempts == 1


def test_the_recipe_learns_the_conv_on_seed_0(full_fit):
    assert full_fit.test_error <= TARGET_ERROR
    assert full_fit.distinct_offsets >= TARGET_DISTINCT
    assert full_fit.success
    assert full_fit.mean_distance < 0.3 and full_fit.fraction_within >= 8 / 9
    assert np.abs(full_fit.final_spreads).min() > 2.0  # heads sharpened from s = 1: nearly one-hot
    assert full_fit.test_max_error < 0.1 * full_fit.test_rms


def test_rows_round_trip_through_csv_and_plot(full_fit, tmp_path):
    curve, heads = fit_conv_rows(full_fit)
    write_csv(tmp_path / "curve.csv", curve)
    write_csv(tmp_path / "heads.csv", heads)
    curve_back, heads_back = read_csv(tmp_path / "curve.csv"), read_csv(tmp_path / "heads.csv")
    assert [float(r["train_error"]) for r in curve_back] == list(full_fit.train_error)
    final = [[float(r["centre_row"]), float(r["centre_col"])] for r in heads_back if r["stage"] == "final"]
    np.testing.assert_array_equal(final, full_fit.final_centres)
    path = plot_fit_conv(curve_back, heads_back, tmp_path / "fit.png")
    assert path.stat().st_size > 10_000


# -- arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels=0"),
        ({"size": 2}, ValueError, "size=2"),
        ({"size": 12.0}, TypeError, "size=12.0"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"log_every": 0}, ValueError, "log_every=0"),
        ({"recipe": {"steps": 10}}, TypeError, "dict"),
    ],
)
def test_fit_conv_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_conv(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps=0"),
        ({"lr": 0.0}, ValueError, "lr=0.0"),
        ({"position_lr": "fast"}, TypeError, "position_lr='fast'"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay=-1.0"),
        ({"max_attempts": True}, TypeError, "max_attempts=True"),
    ],
)
def test_the_recipe_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        FitConvRecipe(**kwargs)


def test_plot_needs_both_stages(full_fit, tmp_path):
    curve, heads = fit_conv_rows(full_fit)
    with pytest.raises(ValueError, match="init"):
        plot_fit_conv(curve, [r for r in heads if r["stage"] == "final"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="learning-curve"):
        plot_fit_conv([], heads, tmp_path / "x.png")
