"""The data-efficiency section: the crossing point, the steps rule, and the run."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from convattn.study.contest import Recipe
from convattn.study.sections import data_efficiency as de
from convattn.train import TrainConfig
from convattn.utils.records import read_csv

# -------------------------------------------------------------------------------------------- crossing


def _log_between(a: float, b: float, t: float) -> float:
    return math.exp(math.log(a) + t * (math.log(b) - math.log(a)))


@pytest.mark.parametrize(
    ("cnn", "att", "expected"),
    [
        ([0.9, 0.9, 0.9], [0.7, 0.8, 1.0], _log_between(0.5, 1.0, 0.5)),  # crosses between 0.5 and 1.0
        ([0.9, 0.9, 0.9], [0.7, 0.9, 0.95], 0.5),  # reaches exactly at a measured point
        ([0.9, 0.9, 0.9], [0.5, 0.8, 0.85], None),  # never
        ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], 0.1),  # ahead everywhere: the smallest fraction
        ([0.5, 0.9, 0.9], [0.5, 0.7, 0.95], 0.1),  # level at the smallest fraction counts as reached
        ([0.9, 0.9, 0.9], [0.7, 0.95, 0.8], _log_between(0.1, 0.5, 0.2 / 0.25)),  # the first of two
    ],
)
def test_crossing_interpolates_the_difference_in_log_n(cnn, att, expected):
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


def test_every_run_takes_the_fewest_steps_and_the_fewest_epochs():
    # 400 steps at least, 8 epochs at least: 64 images (1 batch) 400 epochs, 6,400 (100 batches) 8.
    for n, epochs in ((64, 400), (100, 400), (640, 40), (3200, 8), (6400, 8)):
        assert de.epochs_for(n, 8, 400) == epochs
    assert de.epochs_for(200, 8, 400) == 134  # ceil(400 / 3): at least the fewest steps
    with pytest.raises(ValueError, match="n_train=63"):
        de.epochs_for(63, 8, 400)
    with pytest.raises(ValueError, match="min_steps"):
        de.epochs_for(64, 8, 0)


def test_the_study_budget_spans_two_orders_of_magnitude_with_three_seeds():
    from convattn.study.budget import BUDGETS

    full = BUDGETS["full"]
    assert full.sizes[-1] / full.sizes[0] >= 100 and full.seeds >= 3
    assert full.data_efficiency.data in ("shapes", "long_range")  # generated: no limit to its size


# ------------------------------------------------------------------------------------------------ run

RECIPE = Recipe(data="shapes", epochs=1, lrs=(1e-3, 4e-3), holdout=32, batch_size=32, crop_pad=-1)
QUICK = {"recipe": RECIPE, "sizes": (32, 64, 128), "min_steps": 2, "seeds": (0,), "quick": True}


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
    assert list(rows[0])[:9] == [
        "model", "kind", "fraction", "n_train", "seeds", "lr", "test_acc_mean", "test_acc_std", "epochs"
    ]  # fmt: skip
    assert [(r["kind"], r["n_train"]) for r in rows] == [
        (kind, str(n)) for kind in ("CNN", "attention") for n in (32, 64, 128)
    ]
    assert (folder / "data_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert m["n_train"] == [32, 64, 128] and m["n_test"] == 500 and m["data"] == "shapes"
    rule = [(r["n_train"], r["epochs"], r["steps"]) for r in m["rows"]]
    assert rule == [(32, 2, 2), (64, 1, 2), (128, 1, 4)] * 2  # >= 2 steps and >= 1 epoch
    # The search: both rates for both models at the middle size, on the 32 held-out images.
    search = read_csv(folder / "search.csv")
    assert [(r["model"], float(r["lr"])) for r in search] == [
        (c.label, lr) for c in de.MODELS for lr in RECIPE.lrs
    ]
    assert m["search_n_train"] == 64 and m["holdout"] == 32
    for c in de.MODELS:
        mine = [r for r in search if r["model"] == c.label]
        best = max(mine, key=lambda r: (float(r["val_acc"]), -float(r["lr"])))
        assert m["chosen_lr"][c.label] == float(best["lr"])
        assert all(r["lr"] == m["chosen_lr"][c.label] for r in m["rows"] if r["model"] == c.label)
    finals = {p.name for p in (folder / "runs").iterdir() if "-val-" not in p.name}
    assert finals == {
        f"{c.model}-n{n}-lr{m['chosen_lr'][c.label]:g}-s0" for c in de.MODELS for n in (32, 64, 128)
    }
    saved = TrainConfig.load(
        folder / "runs" / f"cnn_digits-n32-lr{m['chosen_lr'][de.MODELS[0].label]:g}-s0" / "config.json"
    )
    assert (saved.n_train, saved.data_seed, saved.epochs, saved.data, saved.holdout) == (
        32,
        0,
        2,
        "shapes",
        0,
    )
    json.dumps(m)  # serialisable
    for r in m["rows"]:  # two steps fit nothing, and the table says so
        assert (
            r["fitted"] == int(r["train_acc_min"] >= m["fitted_threshold"]) and 0 <= r["train_acc_min"] <= 1
        )
    cnn = [r["test_acc_mean"] for r in m["rows"] if r["kind"] == "CNN"]
    att = [r["test_acc_mean"] for r in m["rows"] if r["kind"] == "attention"]
    cross = de.crossing((0.25, 0.5, 1.0), cnn, att)
    assert m["crossing_fraction"] == (None if cross is None else round(cross, 4))


def test_generated_sizes_are_new_images_and_the_test_split_is_shared():
    """A seed's test split is the same for every size; its training images depend on the size."""
    from convattn.data import load

    a, b = (load("shapes", "test", seed=3, n_train=n) for n in (64, 640))
    assert torch.equal(a.images, b.images)
    assert len(load("shapes", "train", seed=3, n_train=640)) == 640


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
        de.run(folder, **{**QUICK, "min_steps": 5})


def test_describe_quotes_the_measured_numbers(quick_run):
    m = quick_run[1]
    d = de.describe(m)
    claim, text, figures, tables = d.claim, d.text, d.figures, d.tables
    assert "Cordonnier" in claim and figures[0][0] == "data_efficiency.png" and tables[0][0] == "curve.csv"
    for i in (0, 2, 3, 5):  # the ends of both curves
        assert f"{m['rows'][i]['test_acc_mean']:.1%}" in text
    assert "32 images" in text and "128 images" in text and "Quick mode" in text
    assert "Not fitted" in text  # two steps fit nothing
    assert "chosen among 0.001, 0.004 by accuracy on 32 held-out validation images" in text
    crossed = {**m, "crossing_fraction": 0.75, "crossing_n_train": 96}
    crossed["rows"] = [
        {**r, "test_acc_mean": acc}
        for r, acc in zip(m["rows"], (0.8, 0.85, 0.9, 0.6, 0.8, 0.95), strict=True)
    ]
    text = de.describe(crossed).text
    assert "CNN leads by 20.0 points" in text and "ViT leads by 5.0 points" in text
    assert "about 96 training images" in text
    fitted = [{**r, "train_acc_min": 1.0, "fitted": 1} for r in crossed["rows"]]
    text = de.describe({**crossed, "rows": fitted}).text
    assert "Not fitted" not in text and "Every point fitted" in text
    never = {**crossed, "crossing_fraction": None, "crossing_n_train": None}
    never["rows"] = [
        {**r, "test_acc_mean": a} for r, a in zip(m["rows"], (0.8, 0.85, 0.9, 0.6, 0.7, 0.8), strict=True)
    ]
    assert (
        "does not reach the CNN at this scale: the gap narrows, as the claim predicts, from 20.0 to 10.0"
        in de.describe(never).text
    )
    noisy = {
        **never,
        "rows": [{**r, "test_acc_std": 0.1} for r in never["rows"]],
    }  # a 10-point change is noise
    assert "the gap stays within the spread over seeds, from 20.0 to 10.0" in de.describe(noisy).text


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"sizes": ()}, ValueError, "non-empty"),
    ({"sizes": (128, 64)}, ValueError, "increase strictly"),
    ({"sizes": (16, 64)}, ValueError, "one batch of 32"),
    ({"recipe": Recipe(data="shapes", lrs=(1e-3, 2e-3), holdout=0)}, ValueError, "needs a holdout"),
    ({"min_steps": 0}, ValueError, "min_steps"),
    ({"seeds": (0, 0)}, ValueError, "distinct"),
    ({"recipe": "fast"}, TypeError, "recipe must be a Recipe"),
])  # fmt: skip
def test_bad_run_arguments_are_named(tmp_path, options, error, words):
    with pytest.raises(error, match=words):
        de.run(tmp_path, **{**QUICK, **options})
    assert not any(tmp_path.iterdir())
