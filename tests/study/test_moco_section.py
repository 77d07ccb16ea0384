"""The MoCo section: the quick run's files and text, and a paragraph that follows the numbers."""

from __future__ import annotations

import json

from convattn.study.sections import moco


def _metrics(cnn: tuple[float, float, float], att: tuple[float, float, float]) -> dict:
    rows = []
    for (label, kind, _), probes in zip(moco.ENCODERS, (cnn, att), strict=True):
        for init, acc in zip(moco.INITS, probes, strict=True):
            rows.append({"encoder": label, "kind": kind, "init": init, "probe_acc": acc,
                         "knn_acc": acc - 0.05, "params": 1000, "train_images_per_s": 100.0,
                         "epochs": 6})  # fmt: skip
    return {"rows": rows, "data": "shapes", "n_train": 2000, "n_test": 500, "chance": 0.25, "epochs": 6,
            "supervised_epochs": 3, "margin": 0.1, "seed": 0, "quick": False,
            "threads": 1}  # fmt: skip


def test_the_paragraph_follows_the_numbers_either_way():
    text = moco.describe(_metrics(cnn=(0.34, 0.54, 1.0), att=(0.41, 0.43, 1.0))).text
    assert "The pre-training beats the random-encoder floor by 20.0 points" in text
    assert "The pre-training is +2.0 points from the random-encoder floor, less than the 10" in text
    assert "The CNN encoder learned more without labels: 18.0 points more" in text
    text = moco.describe(_metrics(cnn=(0.34, 0.36, 1.0), att=(0.30, 0.62, 1.0))).text
    assert "The attention encoder learned more without labels: 30.0 points more" in text
    text = moco.describe(_metrics(cnn=(0.30, 0.45, 1.0), att=(0.30, 0.455, 1.0))).text
    assert "Both encoders gained alike" in text


def test_the_quick_study_section_writes_its_tables_figures_and_text(quick_study):
    folder = quick_study / "moco"
    part = json.loads((folder / "part.json").read_text())
    m = part["metrics"]
    assert m["quick"] and m["epochs"] == 1 and m["n_train"] == 128
    assert [(r["kind"], r["init"]) for r in m["rows"]] == [
        (k, i) for _, k, _ in moco.ENCODERS for i in moco.INITS
    ]
    assert all(0 <= r["probe_acc"] <= 1 and 0 <= r["knn_acc"] <= 1 for r in m["rows"])
    assert part["text"] == moco.describe(m).text and "Quick mode" in part["text"]
    for name in ("moco_knn.png", "moco.csv", "knn_curve.csv"):
        assert (folder / name).stat().st_size > 0
