"""The locality section: the data-efficiency pair on shapes (its own runs, reused) and on long_range."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from convattn.study.contest import Recipe
from convattn.study.runs import progress_to, shared_runs
from convattn.study.sections import data_efficiency as de
from convattn.study.sections import locality
from convattn.utils.records import read_csv

RECIPE = Recipe(data="shapes", epochs=1, lrs=(1e-3, 4e-3), holdout=32, batch_size=32, crop_pad=0)
CURVE = {"recipe": RECIPE, "sizes": (32, 64), "min_steps": 2}


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    """The curve, then the locality section in the same shared runs; the progress lines of each."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("locality")
    lines: dict[str, list[str]] = {"curve": [], "locality": []}
    with shared_runs(root / "runs"):
        with progress_to(lines["curve"].append):
            de.run(root / "curve", **CURVE, seeds=(0, 1), quick=True)
        with progress_to(lines["locality"].append):
            m = locality.run(
                root / "locality", **CURVE, seeds={"shapes": (0, 1), "long_range": (0,)}, quick=True
            )
    return root / "locality", m, lines


def test_the_shapes_runs_and_the_search_are_the_curves_own(section):
    _, _, lines = section
    trained = [line for line in lines["locality"] if line.startswith("trained")]
    assert len(trained) == 2 and all(" on long_range, " in line for line in trained)  # one seed, two models
    kept = [line for line in lines["locality"] if line.startswith("kept")]
    # The search (2 models x 2 rates) and the shapes runs (2 models x 2 seeds at the largest size).
    assert len(kept) == 8 and sum(" on shapes, 64 images" in line for line in kept) == 8


def test_the_table_floors_and_figure(section, tmp_path):
    folder, m, _ = section
    rows = read_csv(folder / "locality.csv")
    assert [(r["task"], r["kind"], r["seeds"]) for r in rows] == [
        ("shapes", "CNN", "2"), ("shapes", "attention", "2"), ("long_range", "CNN", "1"),
        ("long_range", "attention", "1"),
    ]  # fmt: skip
    assert all(r["n_train"] == "64" and r["steps"] == "2" for r in rows)  # the curve's largest point
    assert {(r["task"], r["floor"]) for r in read_csv(folder / "floors.csv")} == {
        (t, f) for t in locality.TASKS for f in ("linear", "mlp")
    }
    assert m["chance"] == {"shapes": 0.25, "long_range": 0.5}
    assert all(0 <= r["train_acc_min"] <= r["train_acc_mean"] <= 1 for r in m["rows"])
    json.dumps(m)
    png = (folder / "locality_accuracy.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    copy_dir = tmp_path / "again"
    copy_dir.mkdir()
    for name in ("locality.csv", "floors.csv"):
        (copy_dir / name).write_bytes((folder / name).read_bytes())
    locality.plot(copy_dir)
    assert (copy_dir / "locality_accuracy.png").read_bytes() == png  # from the CSV files alone
    assert "Quick mode" in locality.describe(m).text


def _metrics(shapes: tuple[float, float], far: tuple[float, float], cnn_fit: float = 1.0) -> dict:
    models = (("CNN", "CNN", cnn_fit), ("ViT", "attention", 1.0))
    rows = [
        {"task": task, "model": name, "kind": kind, "seeds": 3, "test_acc_mean": acc, "test_acc_std": 0.01,
         "train_acc_mean": fit, "train_acc_min": fit}
        for task, accs in (("shapes", shapes), ("long_range", far))
        for (name, kind, fit), acc in zip(models, accs, strict=True)
    ]  # fmt: skip
    floors = [{"task": t, "floor": f, "test_acc": v} for t in locality.TASKS for f, v in (("linear", 0.4),
              ("mlp", 0.7))]  # fmt: skip
    return {"rows": rows, "floors": floors, "chance": {"shapes": 0.25, "long_range": 0.5}, "n_train": 3200,
            "chosen_lr": {"CNN": 2e-3, "ViT": 2e-3}, "batch_size": 32, "fitted_threshold": 0.99,
            "quick": False, "threads": 1}  # fmt: skip


def test_the_paragraph_follows_the_numbers():
    text = locality.describe(_metrics((1.0, 0.96), (0.53, 0.98))).text
    assert "supports the claim" in text and "the ViT leads by 45.0 points" in text
    assert "the CNN leads by 4.0 points" in text
    assert "CNN fits its training images but tests at chance" in text
    text = locality.describe(_metrics((1.0, 0.96), (0.53, 0.54), cnn_fit=0.9)).text
    assert "cannot judge the claim" in text and "level within the spread" in text  # both at chance
    assert "does not support the claim" in locality.describe(_metrics((1.0, 0.96), (0.8, 0.62))).text
    assert "CNN reaches 90.0% on its training images but tests at chance" in text
    m = _metrics((0.9, 0.97), (0.6, 0.9))
    assert "no advantage of locality" in locality.describe(m).text
    both = locality.describe(_metrics((1.0, 0.94), (0.49, 0.51))).text
    assert "cannot judge the claim" in both and "supports the claim" not in both
    shrug = copy.deepcopy(_metrics((1.0, 0.94), (0.49, 0.51)))
    shrug["rows"][3]["train_acc_mean"] = shrug["rows"][3]["train_acc_min"] = 0.5  # the ViT learned nothing
    text = locality.describe(shrug).text
    assert "ViT is at chance on its training images too (50.0%)" in text and "ViT reaches" not in text
    short = copy.deepcopy(m)
    short["rows"][1]["train_acc_min"] = 0.8  # the ViT did not fit shapes
    assert "ViT did not fit its training images (80.0% on its worst seed" in locality.describe(short).text


def test_seeds_that_split_are_named_and_a_lead_within_their_spread_only_leans_toward_the_claim():
    m = _metrics((1.0, 0.96), (0.5, 0.7))
    cnn, vit = m["rows"][2], m["rows"][3]
    cnn.update(test_acc_std=0.02, test_acc_min=0.48, test_acc_max=0.52, seeds_above_chance=0)
    vit.update(test_acc_std=0.26, test_acc_min=0.5, test_acc_max=1.0, seeds_above_chance=2)
    text = locality.describe(m).text
    assert "ViT left chance on 2 of its 3 seeds (test 50.0% to 100.0%)" in text
    assert "CNN left chance" not in text  # none of its seeds did: no split to name
    assert "leans toward the claim without settling it" in text and "supports the claim" not in text
    assert "within the spread over seeds (52.2)" in text  # 2·sqrt(0.02² + 0.26²)
    cnn["seeds_above_chance"] = 1  # the CNN, too, left chance once: no lean
    assert "does not support the claim" in locality.describe(m).text
    vit.update(test_acc_std=0.01, seeds_above_chance=3)  # every seed learned, a lead beyond the spread
    assert "supports the claim" in locality.describe(m).text


def test_every_task_needs_seeds(tmp_path):
    with pytest.raises(ValueError, match="at least one seed for each"):
        locality.run(tmp_path, **CURVE, seeds={"shapes": (0,)}, quick=True)
    with pytest.raises(ValueError, match="at least one seed for each"):
        locality.run(tmp_path, **CURVE, seeds={"shapes": (0,), "long_range": ()}, quick=True)
