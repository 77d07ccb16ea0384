"""The data-efficiency section: the crossing point, the equal-steps rule, and the run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from convattn.study.sections import data_efficiency as de
from convattn.train import TrainConfig
from convattn.utils.records import read_csv

# -------------------------------------------------------------------------------------------- crossing


@pytest.mark.parametrize(
    ("cnn", "att", "expected"),
    [
        ([0.9, 0.9, 0.9], [0.7, 0.8, 1.0], 0.5 + 0.5 * 0.1 / 0.2),  # crosses between 0.5 and 1.0
        ([0.9, 0.9, 0.9], [0.7, 0.9, 0.95], 0.5),  # reaches exactly at a measured point
        ([0.9, 0.9, 0.9], [0.5, 0.8, 0.85], None),  # never
        ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], 0.1),  # ahead everywhere: the smallest fraction
        ([0.5, 0.9, 0.9], [0.5, 0.7, 0.95], 0.1),  # level at the smallest fraction counts as reached
        ([0.9, 0.9, 0.9], [0.7, 0.95, 0.8], 0.1 + 0.4 * 0.2 / 0.25),  # the first crossing of two
    ],
)
def test_crossing_interpolates_the_difference_linearly(cnn, att, expected):
    got = de.crossing((0.1, 0.5, 1.0), cnn, att)
    assert got == (None if expected is None else pytest.approx(expected))


def test_crossing_of_a_single_point_and_bad_inputs():
    assert de.crossing([1.0], [0.9], [0.95]) == 1.0 and de.crossing([1.0], [0.9], [0.8]) is None
    with pytest.raises(ValueError, match="one accuracy per fraction"):
        de.crossing([0.1, 1.0], [0.9], [0.8, 0.9])
    with pytest.raises(ValueError, match="increase strictly"):
        de.crossing([0.5, 0.1], [0.9, 0.9], [0.8, 0.9])
    with pytest.raises(ValueError, match="increase strictly"):
        de.crossing([0.0, 0.5], [0.9, 0.9], [0.8, 0.9])
    with pytest.raises(ValueError, match="finite"):
        de.crossing([0.5, 1.0], [0.9, float("nan")], [0.8, 0.9])


def test_equal_steps_rule():
    # 1,438 digits make 22 batches of 64: 4 epochs are 88 steps, whatever the subset.
    for n, epochs in ((1438, 4), (575, 11), (288, 22), (144, 44), (72, 80)):  # 72: capped at 20 x 4
        assert de.epochs_for(n, 1438, 4) == epochs
    assert de.epochs_for(200, 1438, 4) == 30  # ceil(88 / 3): at least the budget
    with pytest.raises(ValueError, match="n_train=63"):
        de.epochs_for(63, 1438, 4)


# ------------------------------------------------------------------------------------------------ run

QUICK = {"fractions": (0.05, 0.1), "epochs": 1, "seeds": (0,), "quick": True}  # 2 steps per run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("data_efficiency")
    start = time.perf_counter()
    metrics = de.run(folder, **QUICK)
    return folder, metrics, time.perf_counter() - start


def test_run_writes_the_curve_and_the_figure(quick_run):
    folder, m, _ = quick_run
    rows = read_csv(folder / "curve.csv")
    assert list(rows[0])[:8] == [
        "model", "kind", "fraction", "n_train", "seeds", "test_acc_mean", "test_acc_std", "epochs"
    ]  # fmt: skip
    assert [(r["kind"], r["n_train"]) for r in rows] == [
        ("CNN", "72"),
        ("CNN", "144"),
        ("attention", "72"),
        ("attention", "144"),
    ]
    assert (folder / "data_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert m["n_train"] == [72, 144] and m["steps_budget"] == 2 and m["n_test"] == 359
    assert [(r["n_train"], r["epochs"], r["steps"]) for r in m["rows"]] == [(72, 2, 2), (144, 1, 2)] * 2
    assert {p.name for p in (folder / "runs").iterdir()} == {
        f"{model}-n{n}-s0" for model in ("cnn_digits", "attention_digits") for n in (72, 144)
    }
    saved = TrainConfig.load(folder / "runs" / "cnn_digits-n72-s0" / "config.json")
    assert (saved.n_train, saved.data_seed, saved.epochs) == (72, 0, 2)
    json.dumps(m)  # serialisable
    cnn = [r["test_acc_mean"] for r in m["rows"] if r["kind"] == "CNN"]
    att = [r["test_acc_mean"] for r in m["rows"] if r["kind"] == "attention"]
    assert m["crossing_fraction"] == de.crossing(QUICK["fractions"], cnn, att)


def test_plot_is_redrawn_byte_identical_from_the_csv(quick_run):
    folder = quick_run[0]
    png = folder / "data_efficiency.png"
    before = png.read_bytes()
    png.unlink()
    de.plot(folder)
    assert png.read_bytes() == before


def test_a_second_run_reuses_the_finished_runs(quick_run):
    folder, first, seconds = quick_run
    start = time.perf_counter()
    again = de.run(folder, **QUICK)
    assert again == first and time.perf_counter() - start < max(0.5, seconds / 4)
    with pytest.raises(ValueError, match="holds a different run"):  # a changed budget is not reused
        de.run(folder, **{**QUICK, "epochs": 2})


def test_describe_quotes_the_measured_numbers(quick_run):
    m = quick_run[1]
    d = de.describe(m)
    claim, text, figures, tables = d.claim, d.text, d.figures, d.tables
    assert "Cordonnier" in claim and figures[0][0] == "data_efficiency.png" and tables[0][0] == "curve.csv"
    for row in m["rows"]:
        assert f"{row['test_acc_mean']:.1%}" in text
    assert "72 images" in text and "144 images" in text and "Quick mode" in text
    crossed = {**m, "crossing_fraction": 0.075, "crossing_n_train": 108}
    crossed["rows"] = [
        {**r, "test_acc_mean": acc} for r, acc in zip(m["rows"], (0.8, 0.9, 0.6, 0.95), strict=True)
    ]
    text = de.describe(crossed).text
    assert "CNN leads by 20.0 points" in text and "attention net leads by 5.0 points" in text
    assert "about 108 training images" in text and "Caveat" in text  # the quick run's nets fit nothing
    fitted = [{**r, "train_acc_mean": 1.0} for r in crossed["rows"]]
    assert "Caveat" not in de.describe({**crossed, "rows": fitted}).text
    never = {**crossed, "crossing_fraction": None, "crossing_n_train": None}
    never["rows"] = [{**r, "test_acc_mean": a} for r, a in zip(m["rows"], (0.8, 0.9, 0.6, 0.8), strict=True)]
    assert (
        "does not reach the CNN at this scale: the gap narrows, as the claim predicts, from 20.0 to 10.0"
        in de.describe(never).text
    )
    noisy = {
        **never,
        "rows": [{**r, "test_acc_std": 0.1} for r in never["rows"]],
    }  # a 10-point change is noise
    assert "the gap stays within the spread over seeds, from 20.0 to 10.0" in de.describe(noisy).text


@pytest.mark.parametrize(("options", "words"), [
    ({"fractions": ()}, "non-empty"),
    ({"fractions": (0.5, 0.1)}, "increase strictly"),
    ({"fractions": (0.01, 1.0)}, "one batch of 64"),
    ({"epochs": 0}, "epochs"),
    ({"seeds": (0, 0)}, "distinct"),
])  # fmt: skip
def test_bad_run_arguments_are_named(tmp_path, options, words):
    with pytest.raises(ValueError, match=words):
        de.run(tmp_path, **{**QUICK, **options})
    assert not any(tmp_path.iterdir())
